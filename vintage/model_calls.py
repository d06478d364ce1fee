"""Calls into a causal LM as decoding needs them: the forward pass with a KV cache (whatever transformers
names it), logits of the last positions only, the model's device and output size, and batch padding."""
from __future__ import annotations

import inspect
from typing import Sequence

import torch


def device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def vocab_size_of(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None)


def pad_id(tokenizer) -> int:
    """The id a batch is padded with: the tokenizer's pad token, else its EOS (SmolLM2 and Llama 3 have no pad
    token), else 0. Padded positions are masked (or never read), so any id is safe; one rule keeps them alike."""
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token is not None:
            return token
    return 0


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id sequences → ids [B, W] padded with `pad_id` on `side` ("left": every sequence ends at the last
    column, as generation and choice scoring want; "right": every one starts at column 0) and the attention
    mask [B, W]."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def call_spec(model) -> tuple[str, bool]:
    """(the name of `model`'s cache argument, whether it takes `logits_to_keep`), read once per model."""
    spec = getattr(model, "_vintage_call_spec", None)
    if spec is None:
        params = inspect.signature(model.forward).parameters
        spec = ("cache" if "cache" in params else "past_key_values", "logits_to_keep" in params)
        try:
            model._vintage_call_spec = spec
        except AttributeError:  # pragma: no cover - exotic modules without attribute assignment
            pass
    return spec


def call_with_cache(model, input_ids, attention_mask, position_ids, cache, logits_to_keep: int | None = None):
    """A forward pass that returns its KV cache; transformers 5 names the argument `cache` (older
    releases and custom models `past_key_values`). `logits_to_keep` where the model supports it."""
    spec = call_spec(model)
    extra = {spec[0]: cache}
    if logits_to_keep is not None and spec[1]:
        extra["logits_to_keep"] = logits_to_keep
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                 **extra)


def returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def model_logits(model, input_ids, attention_mask, position_ids, past, keep: int | None, vocab: int):
    """Logits of the last `keep` positions (None: all) over the first `vocab` entries, and the model's
    cache; inputs are moved to the model's device. Models that support it compute only those positions (HF
    `logits_to_keep`: the LM head is most of a small surrogate's FLOPs); others are sliced."""
    device = device_of(model)
    out = call_with_cache(model, input_ids.to(device), attention_mask.to(device), position_ids.to(device), past,
                          logits_to_keep=keep)
    logits = out.logits[..., :vocab]
    if keep is not None and logits.shape[1] > keep:
        logits = logits[:, -keep:]
    return logits, returned_cache(out)
