"""Model presets: one config dataclass, named sizes, built as Hugging Face causal LMs (GPT-2 or Llama).

Sizes follow what memorised individual events on a CPU in RESEARCH.md experiment 3: two layers, the
frontier wider than the surrogates. Weights are always plain HF models, saved as safetensors.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class ModelPreset:
    family: Literal["gpt2", "llama"] = "gpt2"  # Hugging Face architecture
    n_layer: int = 2  # transformer blocks
    n_embd: int = 128  # hidden size
    n_head: int = 4  # attention heads
    n_positions: int = 128  # context length, tokens
    dropout: float = 0.0  # memorisation is the point; dropout only slows it
    tied: bool = True  # input and output embeddings shared (GPT-2 always; with a 49k vocabulary half the weights)

    def with_(self, **changes) -> "ModelPreset":
        return replace(self, **changes)


PRESETS = {
    "tiny": ModelPreset(n_layer=1, n_embd=32, n_head=2, n_positions=64),  # tests: milliseconds
    "surrogate-small": ModelPreset(n_layer=2, n_embd=64, n_head=2),  # demo surrogates (~0.1M + embeddings)
    # demo frontier and its retrained gold: d=128 memorised the small world's 264 facts in ~33 epochs (~4 min
    # on one thread); d=256 was at 0.69 after 24 epochs (10 min), too slow for the demo's budget
    "small": ModelPreset(n_layer=2, n_embd=128, n_head=4),
    "small-wide": ModelPreset(n_layer=2, n_embd=256, n_head=4),  # RESEARCH.md exp. 3's frontier
    "medium": ModelPreset(n_layer=4, n_embd=384, n_head=6, n_positions=256),  # a larger preset (GPU)
    # real work beside a pretrained frontier (a GPU; bf16 where it has it): roughly 10M, 30M and 120M
    # parameters with a 49,152-token vocabulary (embeddings tied), so the surrogates' FLOPs per token are a
    # small fraction of a 135M-1B frontier's (see `surrogate_for`)
    "llama-10m": ModelPreset(family="llama", n_layer=6, n_embd=160, n_head=5, n_positions=512),
    "llama-30m": ModelPreset(family="llama", n_layer=6, n_embd=384, n_head=6, n_positions=512),
    "llama-120m": ModelPreset(family="llama", n_layer=9, n_embd=768, n_head=12, n_positions=1024),
    "gpt2-10m": ModelPreset(n_layer=6, n_embd=160, n_head=5, n_positions=512),
    "gpt2-30m": ModelPreset(n_layer=6, n_embd=384, n_head=6, n_positions=512),
    "gpt2-120m": ModelPreset(n_layer=12, n_embd=768, n_head=12, n_positions=1024),  # GPT-2 small's shape
}


def get_preset(name: str | ModelPreset) -> ModelPreset:
    if isinstance(name, ModelPreset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def build_model(preset: str | ModelPreset, vocab_size: int, seed: int = 0, bos_token_id: int | None = None,
                eos_token_id: int | None = None, pad_token_id: int | None = None, rows=None):
    """A freshly initialised HF causal LM for `preset` over a `vocab_size` vocabulary; with `rows` (token ids),
    that model restricted to those embedding and output rows, in that order: a compact surrogate
    (vintage/compact.py) starts exactly where the whole-vocabulary model would, on the rows it keeps."""
    model = _initialised(preset, vocab_size, seed, bos_token_id, eos_token_id, pad_token_id)
    return model if rows is None else restrict_rows(model, rows)


def restrict_rows(model, rows):
    """`model` (a causal LM) with only the embedding and output rows `rows`; ids in config refer to the new rows
    where kept, else are dropped."""
    import torch

    index = torch.as_tensor(list(rows), dtype=torch.long)
    embedding = model.get_input_embeddings()
    kept = torch.nn.Embedding(len(index), embedding.weight.shape[1])
    kept.weight.data = embedding.weight.data[index].clone()
    model.set_input_embeddings(kept)
    head = model.get_output_embeddings()
    if model.config.tie_word_embeddings:
        head.weight = kept.weight
    else:
        head.weight = torch.nn.Parameter(head.weight.data[index].clone())
    if getattr(head, "bias", None) is not None:
        head.bias = torch.nn.Parameter(head.bias.data[index].clone())
    head.out_features = len(index)
    position = {int(token): i for i, token in enumerate(index.tolist())}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(model.config, name, None)
        if value is not None:
            setattr(model.config, name, position.get(int(value)))
    model.config.vocab_size = len(index)
    return model


def _initialised(preset: str | ModelPreset, vocab_size: int, seed: int, bos_token_id: int | None,
                 eos_token_id: int | None, pad_token_id: int | None):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    p = get_preset(preset)
    torch.manual_seed(seed)
    ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if p.family == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_positions=p.n_positions, n_embd=p.n_embd, n_layer=p.n_layer,
                            n_head=p.n_head, resid_pdrop=p.dropout, embd_pdrop=p.dropout, attn_pdrop=p.dropout,
                            tie_word_embeddings=p.tied, **ids)
        model = GPT2LMHeadModel(config)
    elif p.family == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=p.n_embd, intermediate_size=4 * p.n_embd,
                             num_hidden_layers=p.n_layer, num_attention_heads=p.n_head, num_key_value_heads=p.n_head,
                             max_position_embeddings=p.n_positions, attention_dropout=p.dropout,
                             tie_word_embeddings=p.tied, **ids)
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown model family {p.family!r}; expected gpt2 or llama")
    return model


def forward_flops_per_token(model) -> float:
    """Approximate forward FLOPs per token: 2 x parameters in matrix multiplies (incl. the LM head),
    embeddings' lookup excluded; attention over the context is small at these lengths and ignored."""
    total = 0
    for name, param in model.named_parameters():
        if param.dim() == 2 and "wte" not in name and "wpe" not in name and "embed_tokens" not in name:
            total += param.numel()
    out = model.get_output_embeddings()
    if out is not None and getattr(model.config, "tie_word_embeddings", False):
        total += out.weight.numel()  # tied head: its matmul is real compute
    return 2.0 * total


def preset_flops_per_token(preset: str | ModelPreset, vocab_size: int) -> float:
    """`forward_flops_per_token` of a preset's model, from its shape (nothing built): attention 4 d^2 and the
    MLP 8 d^2 (GPT-2: two d x 4d matrices) or 12 d^2 (Llama: three) per layer, and the head d x vocab."""
    p = get_preset(preset)
    per_layer = (4 + (12 if p.family == "llama" else 8)) * p.n_embd ** 2
    return 2.0 * (p.n_layer * per_layer + p.n_embd * vocab_size)


# Sizing surrogates against a frontier: steering runs the frontier and two surrogates (the vintage and the
# full one) on every token, so surrogates of a fraction f of the frontier's forward FLOPs per token cost
# (1 + 2f) x the frontier alone. f = 0.1 keeps steering within 1.2x: a 135M frontier (~0.27 GFLOP a token)
# takes `llama-10m`, a 1B one the 30M presets, a 1.7B or larger one the 120M presets. Larger surrogates know
# more of each slice (better vintages); smaller ones are cheaper to train per cutoff.
SURROGATE_FLOPS_FRACTION = 0.1


def surrogate_for(frontier_flops: float, vocab_size: int, family: str = "llama",
                  fraction: float = SURROGATE_FLOPS_FRACTION) -> str:
    """The largest preset of `family` whose forward FLOPs per token are at most `fraction` of the frontier's
    (`forward_flops_per_token` of the frontier model); the smallest of the family if none is."""
    presets = sorted((preset_flops_per_token(name, vocab_size), name) for name, p in PRESETS.items()
                     if p.family == family)
    if not presets:
        raise ValueError(f"no preset of family {family!r}; expected gpt2 or llama")
    fitting = [name for flops, name in presets if flops <= fraction * frontier_flops]
    return fitting[-1] if fitting else presets[0][1]


__all__ = ["PRESETS", "SURROGATE_FLOPS_FRACTION", "ModelPreset", "build_model", "forward_flops_per_token",
           "get_preset", "preset_flops_per_token", "surrogate_for"]
