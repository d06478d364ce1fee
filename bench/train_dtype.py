"""Training in bfloat16 on a CPU: throughput and what it costs in held-out loss, float32 and bf16 in one run.

    python bench/train_dtype.py                      # ~6 minutes on 2 cores
    python bench/train_dtype.py --presets small medium --steps 100

For each preset, the training step the pipeline runs (vintage.loss.causal_lm_loss, fused AdamW, one thread),
timed in float32 and under `torch.autocast(bfloat16)` (vintage.precision.autocast: weights, optimizer and the
loss's log-softmax stay float32), round-robin; then the same model trained from the same seed on the same
windows of the synthetic market's text for `--steps` steps in each dtype, and its held-out loss evaluated in
float32. Writes bench/results/train_dtype.json. The rule it sets: vintage.precision.CPU_BF16_MIN_WIDTH.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from corpora.worlds import generate_world  # noqa: E402
from vintage.loss import causal_lm_loss  # noqa: E402
from vintage.precision import autocast, bf16_native  # noqa: E402
from vintage.presets import build_model, get_preset  # noqa: E402
from vintage.tokenizer import train_bpe  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def windows(texts: list[str], tokenizer, length: int) -> torch.Tensor:
    """The texts' tokens, each followed by EOS, cut into rows of `length`."""
    stream = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    rows = len(stream) // length
    return torch.tensor(stream[: rows * length]).view(rows, length)


def trainer(preset: str, vocab: int, dtype: torch.dtype, seed: int = 0):
    model = build_model(preset, vocab, seed=seed, eos_token_id=0, pad_token_id=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step(batch: torch.Tensor) -> float:
        with autocast(dtype):
            loss = causal_lm_loss(model, batch, None, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())
    return model, step


@torch.no_grad()
def held_out_loss(model, rows: torch.Tensor) -> float:
    """Mean next-token loss over `rows`, in float32."""
    return statistics.fmean(float(causal_lm_loss(model, rows[i:i + 8], None, rows[i:i + 8]))
                            for i in range(0, len(rows), 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["surrogate-small", "small", "gpt2-10m", "small-wide",
                                                         "medium"])
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--timed-steps", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150, help="training steps of the held-out loss comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_dtype.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"bf16 native on this CPU: {bf16_native('cpu')}; 1 thread; batch {args.batch}", flush=True)

    world = generate_world("synthetic-market", "small", seed=0)
    texts = world.documents["text"].to_pylist()
    tokenizer = train_bpe(texts, vocab_size=args.vocab)
    vocab = len(tokenizer)
    rows = []
    print("| preset | n_embd | float32 tokens/s | bf16 tokens/s | ratio | held-out loss float32 | bf16 | "
          "difference |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets:
        length = min(get_preset(preset).n_positions, 256)
        data = windows(texts, tokenizer, length)
        train, held = data[len(data) // 10:], data[: len(data) // 10]
        steps = {name: trainer(preset, vocab, dtype)[1] for name, dtype in DTYPES.items()}
        times: dict[str, list[float]] = {name: [] for name in DTYPES}
        for rep in range(args.timed_steps + 1):  # round-robin, one warm-up step each
            batch = train[(rep * args.batch) % (len(train) - args.batch):][: args.batch]
            for name, step in steps.items():
                started = time.perf_counter()
                step(batch)
                if rep:
                    times[name].append(time.perf_counter() - started)
        rate = {name: args.batch * length / statistics.median(t) for name, t in times.items()}
        loss = {}
        for name, dtype in DTYPES.items():
            torch.manual_seed(0)
            model, step = trainer(preset, vocab, dtype)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
            for i in range(args.steps):
                step(train[order[(i * args.batch + torch.arange(args.batch)) % len(train)]])
            loss[name] = held_out_loss(model, held)
        row = {"preset": preset, "n_embd": get_preset(preset).n_embd, "window": length, "vocab": vocab,
               "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
               "ratio": round(rate["bfloat16"] / rate["float32"], 3), "steps": args.steps,
               "held_out_loss": {k: round(v, 4) for k, v in loss.items()},
               "loss_difference": round(loss["bfloat16"] - loss["float32"], 4)}
        rows.append(row)
        print(f"| {preset} | {row['n_embd']} | {rate['float32']:,.0f} | {rate['bfloat16']:,.0f} | {row['ratio']:.2f} "
              f"| {loss['float32']:.4f} | {loss['bfloat16']:.4f} | {row['loss_difference']:+.4f} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bf16_native": bf16_native("cpu"), "threads": 1, "batch": args.batch,
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
