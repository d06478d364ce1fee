"""The one tokenizer of a training run: the frontier's own, or a byte-level BPE trained on the corpus.

Every model of a run (frontier, retrained gold, surrogates) uses it; its hash goes into the registry so
that a mismatch is caught when models are combined.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from corpora.files import short_hash

SPECIAL_TOKENS = {"pad_token": "<|pad|>", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
                  "unk_token": "<|unk|>"}

WORD_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[\p{L}\p{N}]+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def train_bpe(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE over `texts` (deterministic for the same texts and settings)."""
    core = Tokenizer(models.BPE(unk_token=None))
    # GPT-2's split, except that letters and digits stay together: "2018q3" is one word, so one token when
    # frequent (RESEARCH.md exp. 2: a quarter written as several tokens memorised ~4x slower)
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    specials = sorted(set(SPECIAL_TOKENS.values()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Any Hugging Face tokenizer directory (the frontier's, or one saved by `train_bpe`)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_hash(tokenizer) -> str:
    """Hash of the vocabulary (token → id) and merges: equal hashes, interchangeable tokenizers."""
    payload = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        payload += json.dumps(model.get("merges", []), ensure_ascii=False)
    return short_hash(payload)
