"""Split benchmark: leak precision/recall, Ray Data at 1 and 2 CPUs vs single-process polars, crossover.

    python bench/split.py                          # small + bench presets (about 25 minutes on 2 cores)
    python bench/split.py --preset small --sizes 2000 20000

Every engine runs the same filter code on the same files in the same run; each Ray measurement runs in a
fresh process with `ray.init(num_cpus=N)` and includes Ray's start-up, because a user pays it too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from corpora.leak_scores import score_split  # noqa: E402
from corpora.worlds import generate_world  # noqa: E402


def write_corpus(documents, directory: Path, rows_per_file: int = 65_536) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for i, start in enumerate(range(0, documents.num_rows, rows_per_file)):
        pq.write_table(documents.slice(start, rows_per_file), directory / f"part-{i:04d}.parquet",
                       row_group_size=16_384)
    return directory


def run_engine(corpus: Path, output: Path, engine: str, cpus: int, cutoffs: list[str]) -> dict:
    """One split in a fresh process (so Ray starts and stops inside the measurement)."""
    shutil.rmtree(output, ignore_errors=True)
    code = f"""
import json, time, datetime as dt
started = time.perf_counter()
if {engine!r} == "ray":
    import ray
    ray.init(num_cpus={cpus}, include_dashboard=False)
from corpora.split import SplitConfig, run_split
from corpora.validation import CorpusConfig
cutoffs = [dt.datetime.fromisoformat(c).replace(tzinfo=dt.timezone.utc) for c in {cutoffs!r}]
config = SplitConfig(corpus=CorpusConfig(path={str(corpus)!r}), output={str(output)!r}, cutoffs=cutoffs,
                     engine={engine!r})
result = run_split(config)
print("RESULT" + json.dumps({{"seconds": time.perf_counter() - started, "documents": result.manifest["documents"],
                             "rows_read": result.manifest["rows_read"]}}))
"""
    # One thread per process: polars would otherwise use every core inside a "1 CPU" Ray worker.
    env = dict(os.environ, OMP_NUM_THREADS="1", POLARS_MAX_THREADS="1", RAY_DATA_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{engine}/{cpus} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT"):])
    out["docs_per_s"] = out["rows_read"] / out["seconds"]
    return out


def print_scores(world, output: Path) -> None:
    scores = score_split(output, world.leaks)
    print(f"\n### Leak detection, synthetic-market `{world.preset}` ({world.documents.num_rows:,} documents)\n")
    print("| leak kind | expected | planted | handled | recall |\n|---|---|---:|---:|---:|")
    for r in scores["by_kind"].to_dicts():
        print(f"| {r['kind']} | {r['expected']} | {r['planted']:,} | {r['handled']:,} | {r['recall']:.4f} |")
    print("\n| filter | action | acted on | true positives | precision | kinds hit |\n|---|---|---:|---:|---:|---|")
    for r in scores["by_filter"].to_dicts():
        print(f"| {r['filter']} | {r['action']} | {r['acted_on']:,} | {r['true_positives']:,} | "
              f"{r['precision']:.4f} | {', '.join(r['kinds_hit'])} |")
    sys.stdout.flush()


def yearly_cutoffs(world) -> list[str]:
    return world.info["quarter_ends"][3::4] + [world.info["corpus_end"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench", help="world preset for the throughput runs")
    parser.add_argument("--sizes", type=int, nargs="*", default=[20_000, 200_000],
                        help="corpus sizes (documents) for the Ray-vs-polars crossover; the full preset is added")
    parser.add_argument("--workdir", default=str(ROOT / "out" / "bench-split"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    small = generate_world("synthetic-market", "small", seed=0)
    corpus = write_corpus(small.documents, workdir / "small-corpus")
    run = run_engine(corpus, workdir / "small-out", "ray", 2, yearly_cutoffs(small))
    print(f"split of `small` with Ray Data on 2 CPUs: {run['seconds']:.1f} s including Ray start-up")
    print_scores(small, workdir / "small-out")

    started = time.perf_counter()
    world = generate_world("synthetic-market", args.preset, seed=0)
    print(f"\ngenerated {args.preset}: {world.documents.num_rows:,} documents in {time.perf_counter() - started:.1f} s")
    full = world.documents.num_rows
    sizes = sorted({s for s in args.sizes if s < full} | {full})
    print("\n### Throughput (documents/s, wall time including start-up), same files, same run\n")
    print("| documents | polars 1 process | Ray 1 CPU | Ray 2 CPUs | Ray 2/1 CPU | Ray 2 CPUs / polars |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        # a prefix in publication order keeps the corpus realistic (leaks and their originals together)
        corpus = write_corpus(world.documents.slice(0, size), workdir / f"corpus-{size}")
        runs = {name: run_engine(corpus, workdir / f"out-{name}-{size}", engine, cpus, yearly_cutoffs(world))
                for name, engine, cpus in (("polars", "polars", 1), ("ray1", "ray", 1), ("ray2", "ray", 2))}
        p, r1, r2 = (runs[k] for k in ("polars", "ray1", "ray2"))
        print(f"| {size:,} | {p['docs_per_s']:,.0f} ({p['seconds']:.1f} s) | {r1['docs_per_s']:,.0f} "
              f"({r1['seconds']:.1f} s) | {r2['docs_per_s']:,.0f} ({r2['seconds']:.1f} s) | "
              f"{r1['seconds'] / r2['seconds']:.2f} | {p['seconds'] / r2['seconds']:.2f} |", flush=True)
    print(f"\n(leak scores of the full `{args.preset}` corpus: its 2-CPU Ray split above)")
    print_scores(world, workdir / f"out-ray2-{full}")


if __name__ == "__main__":
    main()
