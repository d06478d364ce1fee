"""Decoding cost: PointInTimeLM (frontier + two surrogates) vs the frontier alone, same code, same run.

    python bench/decode.py                     # demo presets, ~2 minutes on 2 cores
    python bench/decode.py --frontier medium --surrogate surrogate-small

Models are the demo presets (frontier `small`, surrogates `surrogate-small`) over a byte-level BPE trained
on the synthetic-market `small` world, freshly initialised: throughput does not depend on weight values.
The frontier alone is PointInTimeLM at alpha = 0, which skips the surrogates: the same batching,
tokenisation and combination code, so the ratio isolates the surrogates' cost. The goal is a time ratio
of at most 1 + (surrogate FLOPs / frontier FLOPs); FLOPs per token counted from the weights (2 x matmul
parameters, LM head included).
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


def timed_pair(a, b, repeats: int) -> tuple[float, float]:
    """Median times of `a` and `b`, run alternately so that drift in the machine hits both alike."""
    a(), b()  # warm-up
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(times_a), statistics.median(times_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontier", default="small")
    parser.add_argument("--surrogate", default="surrogate-small")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

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
    pit = PointInTimeLM(frontier, full, vintage, tokenizer, alpha=0.5, plausibility=0.1, batch_size=256)
    alone = pit.with_alpha(0.0)

    queries = world.queries.filter(__import__("pyarrow.compute").compute.equal(world.queries["kind"], "forecast"))
    prompts = queries["prompt"].to_pylist()
    choices = queries["choices"].to_pylist()
    params = sum(p.numel() for p in frontier.parameters()), sum(p.numel() for p in full.parameters())
    print(f"frontier `{args.frontier}` {params[0]:,} parameters, {f_flops / 1e6:.2f} MFLOPs/token; surrogates "
          f"`{args.surrogate}` {params[1]:,} parameters each; vocabulary {vocab}; {args.threads} thread(s), "
          f"{args.device}; FLOP ratio (both surrogates / frontier) {flop_ratio:.3f}, bound {1 + flop_ratio:.2f}\n")

    print("| workload | batch | frontier alone | point-in-time | time ratio | bound 1+FLOP ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        p, c = prompts[:batch], choices[:batch]
        t_alone, t_pit = timed_pair(lambda: alone.score(p, c), lambda: pit.score(p, c), args.repeats)
        print(f"| scoring (queries/s) | {batch} | {batch / t_alone:,.1f} | {batch / t_pit:,.1f} | "
              f"{t_pit / t_alone:.2f} | {1 + flop_ratio:.2f} |", flush=True)
    for batch in args.batches:
        p = prompts[:batch]

        def gen(lm):
            return lambda: lm.generate(p, max_new_tokens=args.new_tokens, stop_at_eos=False)

        t_alone, t_pit = timed_pair(gen(alone), gen(pit), args.repeats)
        tokens = batch * args.new_tokens
        print(f"| generation (tokens/s) | {batch} | {tokens / t_alone:,.1f} | {tokens / t_pit:,.1f} | "
              f"{t_pit / t_alone:.2f} | {1 + flop_ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
