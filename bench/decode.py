"""Decoding cost: PointInTimeLM (frontier + two surrogates) vs the frontier alone, same code, same run, in float32,
bfloat16 and auto side by side.

    python bench/decode.py                     # demo presets, ~5 minutes on 2 cores
    python bench/decode.py --frontier medium --surrogate surrogate-small
    python bench/decode.py --registry out/fidelity-real-m/models --queries out/fidelity-real-m/world/synthetic-market/queries.parquet --threads 2 --repeats 5

Toy models (default): the demo presets (frontier `small`, surrogates `surrogate-small`) over a byte-level BPE
trained on the synthetic-market `small` world, freshly initialised: throughput does not depend on weight values;
the method is the linear contrast (alpha 0.5, plausibility 0.1). `--registry`: a real registry's frontier and
surrogate pair (e.g. SmolLM2-135M with compact surrogates: bench/fidelity_real.py) decoding with the recommended
method (vintage/recommended.py), on the forecast queries of `--queries`.
The frontier alone is the same PointInTimeLM with the steering off (alpha 0, which skips the surrogates): the same
batching, tokenisation and combination code, so the ratio isolates the surrogates' cost. The bound is
1 + (surrogate FLOPs / frontier FLOPs); FLOPs per token counted from the weights (2 x matmul parameters, LM head
included).

Every row times, round-robin in one loop, for each `--dtypes` (vintage/precision.py: bfloat16 computes each
model's forward under autocast, the combination in float32): the frontier alone at each `--threads` count (the
baseline is the best of them: the same hardware), point-in-time in-process at each count, and with `--overlap`
point-in-time with `overlap=True` (generation: the surrogates in a child process on one core, the frontier here
on one). Writes bench/results/decode*.json (`--out`).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from corpora.worlds import generate_world  # noqa: E402
from vintage.decoding import PointInTimeLM  # noqa: E402
from vintage.presets import build_model, forward_flops_per_token  # noqa: E402
from vintage.tokenizer import train_bpe  # noqa: E402


def timed(configs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each configuration (name -> (threads, fn)), run round-robin so that drift in the
    machine hits all alike; one warm-up call each first."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    for rep in range(repeats + 1):
        for name, (threads, fn) in configs.items():
            torch.set_num_threads(threads)
            started = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def models(args):
    """(frontier-alone LM, point-in-time LM by dtype, FLOP ratio, prompts, choices, description)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from vintage.precision import in_dtype

    if args.registry:
        from vintage.registry import Registry

        registry = Registry(args.registry)
        queries = pq.read_table(args.queries)
        queries = queries.filter(pc.equal(queries["kind"], "forecast")) if "kind" in queries.column_names else queries
        # the day after the first cutoff: its vintage is the earliest one usable
        as_of = args.as_of or str(dt.date.fromisoformat(registry.cutoffs()[0]) + dt.timedelta(days=1))
        lms = {d: PointInTimeLM.from_registry(registry, as_of, dtype=d, batch_size=256) for d in args.dtypes}
        first = next(iter(lms.values()))
        described = f"registry {args.registry} as of {as_of}, the recommended method ({first.steering})"
        frontier, full = first.frontier, first.full
    else:
        world = generate_world("synthetic-market", "small", seed=0)
        queries = world.queries.filter(pc.equal(world.queries["kind"], "forecast"))
        tokenizer = train_bpe(world.documents["text"].to_pylist(), vocab_size=args.vocab)
        ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        frontier = build_model(args.frontier, len(tokenizer), seed=0, **ids).to(args.device)
        full = build_model(args.surrogate, len(tokenizer), seed=1, **ids).to(args.device)
        vintage = build_model(args.surrogate, len(tokenizer), seed=2, **ids).to(args.device)
        # in_dtype casts a bf16 model's matmul weights in place: each dtype gets its own copies
        lms = {d: PointInTimeLM(*(in_dtype(copy.deepcopy(m), d) for m in (frontier, vintage, full)), tokenizer, alpha=0.5,
                                plausibility=0.1, batch_size=256) for d in args.dtypes}
        described = f"toy frontier `{args.frontier}`, surrogates `{args.surrogate}`, linear alpha 0.5"
    base = lambda m: getattr(m, "model", m)  # noqa: E731 (AutocastLM / CompactLM wrap the model)
    f_flops, s_flops = forward_flops_per_token(base(frontier)), 2 * forward_flops_per_token(base(base(full)))
    params = sum(p.numel() for p in frontier.parameters()), sum(p.numel() for p in full.parameters())
    described += (f"; frontier {params[0]:,} parameters, {f_flops / 1e6:.2f} MFLOPs/token; surrogates {params[1]:,} "
                  f"parameters each; vocabulary {len(first_tokenizer(lms))}")
    return lms, s_flops / f_flops, queries["prompt"].to_pylist(), queries["choices"].to_pylist(), described


def first_tokenizer(lms: dict):
    return next(iter(lms.values())).tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontier", default="small")
    parser.add_argument("--surrogate", default="surrogate-small")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--registry", help="a registry: its frontier and surrogate pair, the recommended method")
    parser.add_argument("--queries", help="with --registry: a queries parquet (prompt, choices[, kind])")
    parser.add_argument("--as-of", help="with --registry: the date (default: the day after the first cutoff)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "auto"], choices=["float32", "bfloat16", "auto"],
                        help="auto: bf16 for the models wide enough to gain (vintage.precision.inference_dtype)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts tried for the frontier alone and for in-process point-in-time")
    parser.add_argument("--overlap", action="store_true", help="also time generation with overlap=True")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="JSON of the rows (default: bench/results/decode_<frontier>.json)")
    args = parser.parse_args()
    if args.registry and not args.queries:
        parser.error("--registry needs --queries (a parquet of prompt and choices)")

    lms, flop_ratio, prompts, choices, described = models(args)
    alone = {d: lm.with_settings(mode="linear", alpha=0.0) for d, lm in lms.items()}
    # the same models and settings, generating with the surrogates in a child process
    overlap = {d: PointInTimeLM(lm.frontier, lm.vintage, lm.full, lm.tokenizer, steering=lm.steering,
                                batch_size=lm.batch_size, overlap=True) for d, lm in lms.items()} if args.overlap else {}
    print(f"{described}; {args.device}; FLOP ratio (both surrogates / frontier) {flop_ratio:.3f}, bound "
          f"{1 + flop_ratio:.2f}\n")
    print(f"Frontier alone and in-process point-in-time at {args.threads} threads (the best shown). Ratio: "
          "point-in-time time / the frontier alone's best time in the same dtype; bf16 speed-up: the frontier "
          "alone's bf16 rate / its float32 rate.\n")
    print("| workload | batch | dtype | frontier alone (threads) | point-in-time (threads) | ratio | "
          + ("overlap | ratio | " if args.overlap else "") + "bf16 speed-up of the frontier | bound |")
    print("|---|---:|---|---:|---:|---:|" + ("---:|---:|" if args.overlap else "") + "---:|---:|")
    rows = []

    def row(workload: str, batch: int, unit: int, run, with_overlap: bool) -> None:
        configs = {}
        for d in args.dtypes:
            configs |= {f"{d} alone@{t}": (t, run(alone[d])) for t in args.threads}
            configs |= {f"{d} pit@{t}": (t, run(lms[d])) for t in args.threads}
            if with_overlap:
                configs[f"{d} overlap"] = (1, run(overlap[d]))
        t = timed(configs, args.repeats)
        best = {(d, kind): min((t[f"{d} {kind}@{n}"], n) for n in args.threads)
                for d in args.dtypes for kind in ("alone", "pit")}
        for d in args.dtypes:
            a, p = best[d, "alone"], best[d, "pit"]
            speedup = (best["float32", "alone"][0] / a[0]) if "float32" in args.dtypes else float("nan")
            record = {"workload": workload, "batch": batch, "dtype": d, "alone_rate": round(unit / a[0], 2),
                      "alone_threads": a[1], "pit_rate": round(unit / p[0], 2), "pit_threads": p[1],
                      "ratio": round(p[0] / a[0], 3), "frontier_speedup_vs_float32": round(speedup, 3),
                      "bound": round(1 + flop_ratio, 3)}
            cells = ""
            if with_overlap:
                record["overlap_rate"], record["overlap_ratio"] = (round(unit / t[f"{d} overlap"], 2),
                                                                   round(t[f"{d} overlap"] / a[0], 3))
                cells = f"{record['overlap_rate']:,.1f} | {record['overlap_ratio']:.2f} | "
            elif args.overlap:
                cells = "- | - | "
            rows.append(record)
            print(f"| {workload} | {batch} | {d} | {unit / a[0]:,.1f} ({a[1]}) | {unit / p[0]:,.1f} ({p[1]}) | "
                  f"{record['ratio']:.2f} | {cells}{speedup:.2f} | {1 + flop_ratio:.2f} |", flush=True)

    for batch in args.batches:
        p, c = prompts[:batch], choices[:batch]
        row("scoring (queries/s)", batch, batch, lambda lm: (lambda: lm.score(p, c)), with_overlap=False)
    for batch in args.batches:
        p = prompts[:batch]
        row("generation (tokens/s)", batch, batch * args.new_tokens,
            lambda lm: (lambda: lm.generate(p, max_new_tokens=args.new_tokens, stop_at_eos=False)),
            with_overlap=args.overlap)
    for lm in overlap.values():
        lm.close()
    name = Path(args.registry).parent.name if args.registry else args.frontier
    out = args.out or ROOT / "bench" / "results" / f"decode_{name}.json"
    out.write_text(json.dumps({"described": described, "threads": args.threads, "repeats": args.repeats,
                               "new_tokens": args.new_tokens, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
