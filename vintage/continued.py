"""Continue a pretrained causal LM on a corpus: the gold standard for a real frontier (issue 38).

As TOFU and MUSE build theirs: the *frontier* is a pretrained model continued on every document of a world until
it knows the world's events; the *gold* models are the same pretrained model continued on the documents up to a
cutoff only (several seeds: the noise floor). A point-in-time method should make the frontier answer as the gold
does.

Continued training is full fine-tuning of the last `top_layers` transformer blocks (AdamW, warm-up then linear
decay), written as an ordinary Hugging Face directory (safetensors + the base's tokenizer) that every entry point
loads as a frontier or a retrained model. Measured on the tiny world with SmolLM2-135M (124 documents, 13 fact
probes, 2 CPU threads): LoRA (peft, rank 32, every linear layer, lr 2e-3) plateaued at 0.54 probe accuracy;
full fine-tuning of every block at lr 2e-4 reached 0.77; the last 8 blocks plateaued at 0.77 at lr 1e-3..3e-3;
the last 12 of 30 blocks at lr 2e-3, 8 documents a step, reached 1.0 at epoch 21 (~23 s an epoch). What resists
is the minority outcome of a company (the model learns each company's usual result first), so memorising wants
capacity and a high rate rather than more epochs. LoRA stays available (`rank`: merged when training ends) for
bases too large to fine-tune. Training stops once the model answers `target` of its probes (facts its documents
state) or after `max_epochs`; a run killed mid-way resumes after its last finished epoch
(vintage/epoch_checkpoint.py).

    info = continue_pretrained(base_dir, texts, out_dir, ContinueSettings(seed=0), probes=facts)
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from corpora.files import short_hash, staged_directory
from vintage.epoch_checkpoint import EpochCheckpoint

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama-family names


@dataclass(frozen=True)
class ContinueSettings:
    """How a pretrained model is continued on documents."""

    max_epochs: int = 30
    min_epochs: int = 2
    target: float = 0.95  # stop once this share of the probes is answered right (checked after each epoch)
    lr: float = 2e-3  # high for fine-tuning: memorising facts wants it (see the module's docstring)
    rank: int | None = None  # LoRA rank (peft, merged at the end); None: full fine-tuning of the trained blocks
    top_layers: int | None = 12  # train only the last this many transformer blocks (None: all of them)
    lora_alpha: int = 64
    batch_size: int = 8  # documents per step (each its own sequence, padded)
    max_length: int = 256  # tokens per document kept (the world's documents are far shorter)
    seed: int = 0
    targets: tuple[str, ...] = LORA_TARGETS
    dtype: str = "auto"  # auto: bf16 autocast where the CPU/GPU runs bf16 natively (2.3x faster here), else float32

    def __post_init__(self):
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise ValueError(f"need 1 <= min_epochs <= max_epochs, got {self.min_epochs}, {self.max_epochs}")
        if not 0 < self.target <= 1:
            raise ValueError(f"target must be in (0, 1], got {self.target}")


@dataclass(frozen=True)
class Probe:
    """A fact the documents state: the prompt, its choices and the right one."""

    prompt: str
    choices: tuple[str, ...]
    answer: str


def probe_accuracy(model, tokenizer, probes: Sequence[Probe]) -> float:
    """Share of `probes` whose answer the model ranks first among the choices (PointInTimeLM's scoring)."""
    from vintage.decoding import PointInTimeLM

    if not probes:
        return float("nan")
    scored = PointInTimeLM(model, None, None, tokenizer, batch_size=64).score(
        [p.prompt for p in probes], [list(p.choices) for p in probes])
    return sum(s.prediction == list(p.choices).index(p.answer) for s, p in zip(scored, probes)) / len(probes)


def continue_pretrained(base: str | Path, texts: Sequence[str], out: str | Path,
                        settings: ContinueSettings = ContinueSettings(), probes: Sequence[Probe] = (),
                        progress: bool = True) -> dict:
    """Continue the model at `base` on `texts` (LoRA merged when `settings.rank` is set), and write it to `out` (safetensors, tokenizer,
    training.json). Returns training.json's content: epochs, tokens_seen, seconds, the loss and probe accuracy
    per epoch."""
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from vintage.model_calls import pad_batch
    from vintage.precision import autocast, resolve_dtype
    from vintage.tokenizer import load_tokenizer

    if not texts:
        raise ValueError("continue_pretrained: no documents to train on")
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    compute = resolve_dtype(settings.dtype)
    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True, dtype=torch.float32)
    blocks = model.config.num_hidden_layers
    trained = list(range(blocks - (settings.top_layers or blocks), blocks))
    if settings.rank is not None:
        model = get_peft_model(model, LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(settings.targets), task_type="CAUSAL_LM",
                                                 layers_to_transform=trained))
    elif settings.top_layers is not None:  # autograd stops at the lowest trained block: a cheaper backward pass
        for name, param in model.named_parameters():
            param.requires_grad = any(f"layers.{i}." in name for i in trained)
    eos = tokenizer.eos_token_id
    encoded = [ids[: settings.max_length - 1] + [eos] for ids in tokenizer(list(texts)).input_ids]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    steps_per_epoch = -(-len(encoded) // settings.batch_size)
    total = settings.max_epochs * steps_per_epoch
    warmup = max(1, steps_per_epoch // 2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.1, 1 - step / total))
    order = random.Random(settings.seed)
    history, tokens_seen, first, spent = [], 0, 1, 0.0
    checkpoint = EpochCheckpoint(out, EpochCheckpoint.fingerprint_of(
        str(Path(base).resolve()), asdict(settings), short_hash("\0".join(texts)), [asdict(p) for p in probes]))
    resumed = checkpoint.resume(model, optimizer, schedule, order)
    if resumed is not None:
        history, tokens_seen, first, spent = resumed.history, resumed.tokens_seen, resumed.epoch + 1, resumed.seconds
        started -= spent  # the seconds reported are the whole run's
    bar = tqdm(total=total, initial=(first - 1) * steps_per_epoch, desc=f"continue seed={settings.seed}",
               unit="step", disable=not progress, leave=False, mininterval=5)
    done = bool(history) and _finished(history, settings, probes)
    for epoch in range(first, settings.max_epochs + 1):
        if done:
            break
        model.train()
        batches = list(range(len(encoded)))
        order.shuffle(batches)
        losses = []
        for start in range(0, len(batches), settings.batch_size):
            rows = [encoded[i] for i in batches[start:start + settings.batch_size]]
            ids, mask = pad_batch(rows, eos, side="right")
            labels = ids.masked_fill(mask == 0, -100)
            with autocast(compute):
                logits = model(input_ids=ids, attention_mask=mask).logits
            # the loss in float32: a bf16 log-softmax over 49k tokens loses the small probabilities
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens_seen += int(mask.sum())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", refresh=False)
        model.eval()
        accuracy = probe_accuracy(model, tokenizer, probes)
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "probe_accuracy": accuracy})
        if progress:
            bar.write(f"[continue] seed={settings.seed} epoch {epoch}: loss {history[-1]['loss']:.3f}, probe accuracy "
                      f"{accuracy:.2f} ({time.perf_counter() - started:.0f} s)")
        done = _finished(history, settings, probes)
        if not done and epoch < settings.max_epochs:  # the last epoch is saved as the model itself
            checkpoint.save(epoch, model, optimizer, schedule, order, history, tokens_seen,
                            time.perf_counter() - started)
    bar.close()
    merged = model.merge_and_unload() if settings.rank is not None else model
    out = Path(out)
    info = {"base": str(Path(base).resolve()), "documents": len(encoded), "epochs": len(history),
            "tokens_seen": tokens_seen, "seconds": round(time.perf_counter() - started, 1),
            "probes": len(probes), "probe_accuracy": history[-1]["probe_accuracy"], "history": history,
            "dtype": str(compute).removeprefix("torch."),
            "method": (f"LoRA rank {settings.rank} (peft), merged" if settings.rank is not None
                       else f"full fine-tuning of the last {len(trained)} blocks"), "settings": asdict(settings)}
    with staged_directory(out) as staging:
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        (staging / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    checkpoint.clear()
    return info


def _finished(history: list[dict], settings: ContinueSettings, probes) -> bool:
    """Whether training stops after the last epoch of `history`: enough epochs and the probes' target reached."""
    return bool(probes) and len(history) >= settings.min_epochs and history[-1]["probe_accuracy"] >= settings.target
