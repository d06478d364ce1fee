"""Decoding cost: PointInTimeLM (frontier + two surrogates) vs the frontier alone, same code, same run.

    python bench/decode.py                     # demo presets, ~3 minutes on 2 cores
    python bench/decode.py --frontier medium --surrogate surrogate-small

Models are the demo presets (frontier `small`, surrogates `surrogate-small`) over a byte-level BPE trained
on the synthetic-market `small` world, freshly initialised: throughput does not depend on weight values.
The frontier alone is PointInTimeLM at alpha = 0, which skips the surrogates: the same batching,
tokenisation and combination code, so the ratio isolates the surrogates' cost. The goal is a time ratio
of at most 1 + (surrogate FLOPs / frontier FLOPs); FLOPs per token counted from the weights (2 x matmul
parameters, LM head included).

Every row times, round-robin in one loop: the frontier alone at each `--threads` count (the baseline is
the best of them: the same hardware), point-in-time in-process at each count, and point-in-time with
`overlap=True` (generation: the surrogates in a child process on one core, the frontier here on one).
Scoring ignores `overlap` (it stays in-process: large logits, large batches), so it has no overlap column.
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontier", default="small")
    parser.add_argument("--surrogate", default="surrogate-small")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts tried for the frontier alone and for in-process point-in-time")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    world = generate_world("synthetic-market", "small", seed=0)
    tokenizer = train_bpe(world.documents["text"].to_pylist(), vocab_size=args.vocab)
    vocab = len(tokenizer)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    frontier = build_model(args.frontier, vocab, seed=0, **ids).to(args.device)
    full = build_model(args.surrogate, vocab, seed=1, **ids).to(args.device)
    vintage = build_model(args.surrogate, vocab, seed=2, **ids).to(args.device)
    f_flops = forward_flops_per_token(frontier)
    s_flops = 2 * forward_flops_per_token(full)
    flop_ratio = s_flops / f_flops
    pit = PointInTimeLM(frontier, vintage, full, tokenizer, alpha=0.5, plausibility=0.1, batch_size=256)
    alone = pit.with_alpha(0.0)
    overlap = PointInTimeLM(frontier, vintage, full, tokenizer, alpha=0.5, plausibility=0.1, batch_size=256,
                            overlap=True)

    queries = world.queries.filter(__import__("pyarrow.compute").compute.equal(world.queries["kind"], "forecast"))
    prompts = queries["prompt"].to_pylist()
    choices = queries["choices"].to_pylist()
    params = sum(p.numel() for p in frontier.parameters()), sum(p.numel() for p in full.parameters())
    print(f"frontier `{args.frontier}` {params[0]:,} parameters, {f_flops / 1e6:.2f} MFLOPs/token; surrogates "
          f"`{args.surrogate}` {params[1]:,} parameters each; vocabulary {vocab}; {args.device}; "
          f"FLOP ratio (both surrogates / frontier) {flop_ratio:.3f}, bound {1 + flop_ratio:.2f}\n")

    print(f"Frontier alone and in-process point-in-time at {args.threads} threads (the best shown); overlap: "
          "surrogates in a child process (1 thread) while the frontier runs here (1 thread). Ratios are "
          "point-in-time time / the frontier alone's best time.\n")
    print("| workload | batch | frontier alone (best threads) | in-process: rate (threads) | ratio | overlap: "
          "rate | ratio | best ratio | bound 1+FLOP ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(workload: str, batch: int, unit: int, run, with_overlap: bool) -> None:
        configs = {f"alone@{t}": (t, run(alone)) for t in args.threads}
        configs |= {f"pit@{t}": (t, run(pit)) for t in args.threads}
        if with_overlap:
            configs["overlap"] = (1, run(overlap))
        t = timed(configs, args.repeats)
        best_alone = min((t[f"alone@{n}"], n) for n in args.threads)
        best_pit = min((t[f"pit@{n}"], n) for n in args.threads)
        ratios = [best_pit[0] / best_alone[0]]
        cells = "- | -"
        if with_overlap:
            ratios.append(t["overlap"] / best_alone[0])
            cells = f"{unit / t['overlap']:,.1f} | {ratios[1]:.2f}"
        print(f"| {workload} | {batch} | {unit / best_alone[0]:,.1f} ({best_alone[1]}) | {unit / best_pit[0]:,.1f} "
              f"({best_pit[1]}) | {ratios[0]:.2f} | {cells} | {min(ratios):.2f} | {1 + flop_ratio:.2f} |", flush=True)

    for batch in args.batches:
        p, c = prompts[:batch], choices[:batch]
        row("scoring (queries/s)", batch, batch, lambda lm: (lambda: lm.score(p, c)), with_overlap=False)
    for batch in args.batches:
        p = prompts[:batch]
        row("generation (tokens/s)", batch, batch * args.new_tokens,
            lambda lm: (lambda: lm.generate(p, max_new_tokens=args.new_tokens, stop_at_eos=False)), with_overlap=True)
    overlap.close()


if __name__ == "__main__":
    main()
