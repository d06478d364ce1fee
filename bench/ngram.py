"""N-gram vs neural vintage surrogates (issue #9), measured in one run on the same split.

    python bench/ngram.py --split out/demo/split/synthetic-market --world out/demo/world/synthetic-market \
        --frontier out/demo/models/frontier --out out/bench-ngram

1. Build time: the neural surrogates of every cutoff (the demo's chronological surrogate config, trained
   until the facts are memorised, as `make demo` does) vs the n-gram vintages of the same cutoffs (Ray Data
   counts per slice, then each vintage summed and smoothed).
2. Scoring throughput (queries/s) of the world's queries by the surrogate alone and by point-in-time
   (frontier + vintage - full) with each kind, one thread, the same batches.
3. Size of the n-gram counts on disk and of the full n-gram vintage in memory.
Writes OUT/ngram.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", required=True)
    parser.add_argument("--world", required=True)
    parser.add_argument("--frontier", required=True, help="frontier directory sharing the split's tokenizer "
                                                          "(the demo registry's frontier/)")
    parser.add_argument("--config", default="configs/demo.yaml", help="end-to-end config whose train section is used")
    parser.add_argument("--order", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import shutil

    import polars as pl
    import ray
    import torch
    from vintage.compact import load_causal_lm
    from transformers.utils import logging as hf_logging

    from corpora.config import load_yaml
    from pipelines.end_to_end import EndToEndConfig
    from vintage.decoding import PointInTimeLM
    from vintage.ngram import NgramLM, count_slices
    from vintage.registry import Registry
    from vintage.runs import train_registry
    from vintage.tokenizer import load_tokenizer

    hf_logging.disable_progress_bar()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    models = out / "models"
    models.mkdir()
    # the frontier's tokenizer: both kinds of surrogate must share it
    load_tokenizer(args.frontier).save_pretrained(models / "tokenizer")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    train = load_yaml(args.config, EndToEndConfig).train
    train = replace(train, split=args.split, output=str(models), frontier=None, retrained=None, retrained_cutoffs=[],
                    probes=str(Path(args.world) / "queries.parquet"), ngram=None, fit_temperatures=False)
    t0 = time.perf_counter()
    manifest = train_registry(train)
    neural_seconds = time.perf_counter() - t0
    cutoffs = manifest["cutoffs"]
    t0 = time.perf_counter()
    build = count_slices(models, args.split, args.order, train.holdout_every, engine="ray")
    count_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    vintages = {c: NgramLM.from_registry(models, c) for c in cutoffs}
    sum_seconds = time.perf_counter() - t1
    ngram_seconds = count_seconds + sum_seconds
    ray.shutdown()

    torch.set_num_threads(1)
    registry = Registry(models)
    tok = load_tokenizer(registry.tokenizer_path())
    load = load_causal_lm
    frontier = load(args.frontier)
    queries = pl.read_parquet(Path(args.world) / "queries.parquet")
    prompts, choices = queries["prompt"].to_list(), [list(c) for c in queries["choices"]]
    middle = cutoffs[len(cutoffs) // 2]
    pairs = {"neural": (load(registry.full_path()), load(registry.vintage_path(middle))),
             "ngram": (vintages[cutoffs[-1]], vintages[middle])}
    throughput = {}

    def rate(lm) -> float:
        lm.score(prompts[:64], choices[:64])  # warm-up
        t = time.perf_counter()
        lm.score(prompts, choices)
        return len(prompts) / (time.perf_counter() - t)

    throughput["frontier alone"] = rate(PointInTimeLM(frontier, None, None, tok, batch_size=64))
    for kind, (full, vintage) in pairs.items():
        throughput[f"surrogate alone ({kind})"] = rate(PointInTimeLM(vintage, None, None, tok, batch_size=64))
        throughput[f"point_in_time ({kind})"] = rate(PointInTimeLM(frontier, vintage, full, tok, alpha=1.0,
                                                                   batch_size=64))
    full_ngram = vintages[cutoffs[-1]]
    result = {
        "cutoffs": len(cutoffs), "order": args.order,
        "neural_train_seconds": round(neural_seconds, 1),
        "ngram_count_seconds": round(count_seconds, 2), "ngram_sum_and_smooth_seconds": round(sum_seconds, 2),
        "ngram_seconds": round(ngram_seconds, 2), "ngram_over_neural": round(ngram_seconds / neural_seconds, 4),
        "ngram_disk_bytes": sum(e["bytes"] for e in build.manifest["slices"].values()),
        "ngram_full_rows": full_ngram.rows, "ngram_full_memory_bytes": full_ngram.memory_bytes(),
        "neural_full_bytes": (registry.full_path() / "model.safetensors").stat().st_size,
        "queries": len(prompts), "queries_per_second": {k: round(v, 1) for k, v in throughput.items()},
    }
    (out / "ngram.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| build of {len(cutoffs)} vintages | seconds |\n|---|---:|\n"
          f"| neural surrogates (chronological, memorise 0.9) | {neural_seconds:.1f} |\n"
          f"| n-gram: count slices (Ray Data) | {count_seconds:.2f} |\n"
          f"| n-gram: sum + smooth every vintage | {sum_seconds:.2f} |\n"
          f"| ratio n-gram / neural | {ngram_seconds / neural_seconds:.4f} |\n")
    print("| scoring | queries/s |\n|---|---:|\n" + "\n".join(f"| {k} | {v:.1f} |" for k, v in throughput.items()))
    print(f"\nn-gram counts on disk {result['ngram_disk_bytes'] / 1e6:.2f} MB; full vintage {full_ngram.rows:,} n-grams, "
          f"~{full_ngram.memory_bytes() / 1e6:.1f} MB in memory (neural full surrogate: "
          f"{result['neural_full_bytes'] / 1e6:.2f} MB of weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
