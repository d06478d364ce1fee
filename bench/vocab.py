"""Training throughput against the vocabulary: a frontier's 49k tokens vs our 2k BPE, same run, same batches.

    python bench/vocab.py            # ~3 minutes on 2 cores

Plain PyTorch steps (forward, backward, AdamW) of one preset (`--preset`, default surrogate-small) on
windows of its context, `--batch` windows a step, one thread, as a training worker runs them. For each
vocabulary: the Hugging Face loss (`labels=`, full logits) against `vintage.loss.causal_lm_loss` (the head
only on target positions, chunked, gradients fused: what train_func uses), and with `--profile` the
operators that dominate the Hugging Face step. Token ids are random: a step's cost does not depend on them.
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

from vintage.loss import causal_lm_loss  # noqa: E402
from vintage.presets import build_model, forward_flops_per_token, get_preset  # noqa: E402


def hf_loss(model, ids, mask, labels):
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


LOSSES = {"hf": hf_loss, "fused": causal_lm_loss}


def steps(preset: str, vocab: int, loss: str, batch: int, count: int, seed: int = 0) -> dict:
    """Median seconds of `count` training steps (after two warm-up steps) and the tokens/s it gives."""
    model = build_model(preset, vocab, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=True)
    length = get_preset(preset).n_positions
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    times = []
    for i in range(count + 2):
        started = time.perf_counter()
        value = LOSSES[loss](model, ids, mask, ids)
        optimizer.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"preset": preset, "vocab": vocab, "loss": loss, "step_s": seconds, "tokens_per_s": batch * length / seconds,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "head_share": head_share(model)}


def head_share(model) -> float:
    """The output layer's share of the forward FLOPs per token."""
    return model.get_output_embeddings().weight.numel() * 2.0 / forward_flops_per_token(model)


def profile(preset: str, vocab: int, batch: int) -> list[tuple[str, float]]:
    """The operators of one Hugging Face step by self CPU time (share of the step)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    model = build_model(preset, vocab)
    length = get_preset(preset).n_positions
    ids = torch.randint(0, vocab, (batch, length))
    hf_loss(model, ids, torch.ones_like(ids), ids).backward()  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        hf_loss(model, ids, torch.ones_like(ids), ids).backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return [(e.key, e.self_cpu_time_total / total) for e in top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="surrogate-small")
    parser.add_argument("--vocab", type=int, nargs="+", default=[2048, 49152])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [steps(args.preset, v, loss, args.batch, args.steps) for v in args.vocab for loss in LOSSES]
    print(f"{args.preset}, {args.batch} windows of {get_preset(args.preset).n_positions} tokens a step, "
          f"{args.threads} thread(s), median of {args.steps} steps")
    print(f"{'vocab':>7} {'loss':>6} {'params':>8} {'head':>5} {'step s':>7} {'tokens/s':>9} {'fused/hf':>8}")
    for row in rows:
        base = next(r for r in rows if r["vocab"] == row["vocab"] and r["loss"] == "hf")
        print(f"{row['vocab']:>7} {row['loss']:>6} {row['params_m']:>7.2f}M {row['head_share']:>5.0%} "
              f"{row['step_s']:>7.3f} {row['tokens_per_s']:>9,.0f} {row['tokens_per_s'] / base['tokens_per_s']:>8.2f}")
    if args.profile:
        for vocab in args.vocab:
            print(f"\nHugging Face loss, vocab {vocab}: operators by self CPU time")
            for name, share in profile(args.preset, vocab, args.batch):
                print(f"  {share:6.1%}  {name}")


if __name__ == "__main__":
    main()
