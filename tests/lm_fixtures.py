"""Tiny language-model fixtures: a word-level tokenizer, random HF models, and a mock with known logits."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vintage.presets import ModelPreset, build_model

WORDS = ["Acme", "Brio", "2019q1", "2019q2", "results", ":", "beat", "miss", ".", "Shares", "rose", "fell",
         "the", "market", "was", "calm", "preview", "points", "to", "a"]


def word_tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def tiny_model(tokenizer, family="gpt2", seed=0, n_embd=32, n_layer=1):
    model = build_model(ModelPreset(family=family, n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=64),
                        vocab_size=len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return model.eval()


class BigramMock(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: known logits whose combination can be computed by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.float(), requires_grad=False)
        self.config = SimpleNamespace(vocab_size=table.shape[1])

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=None, cache=None)
