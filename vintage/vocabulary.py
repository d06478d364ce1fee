"""Frontier and surrogates must share one vocabulary: the checks, and the error they raise."""
from __future__ import annotations

from pathlib import Path


class VocabularyMismatch(ValueError):
    """Frontier and surrogates do not share one vocabulary."""


def has_tokenizer(directory: str | Path) -> bool:
    directory = Path(directory)
    return any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def check_vocabularies(frontier_tokenizer, surrogate_tokenizer, frontier_name: str = "frontier",
                       surrogate_name: str = "surrogate") -> None:
    """Same size and the same token strings at the same ids, or a VocabularyMismatch naming both."""
    a, b = frontier_tokenizer.get_vocab(), surrogate_tokenizer.get_vocab()
    if len(a) != len(b):
        raise VocabularyMismatch(f"tokenizers differ in size: {frontier_name} has {len(a)} tokens, "
                                 f"{surrogate_name} has {len(b)}; surrogates must be trained with the frontier's tokenizer")
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])[:3]
        raise VocabularyMismatch(f"tokenizers {frontier_name} and {surrogate_name} map tokens to different ids "
                                 f"(e.g. {diff}); surrogates must be trained with the frontier's tokenizer")


def frontier_and_tokenizer(registry, frontier: str | Path | None = None):
    """(the frontier's directory, the tokenizer decoding uses): `frontier` or the registry's own, and the tokenizer
    saved beside it (else the registry's), checked to be the registry's vocabulary (VocabularyMismatch if not)."""
    from transformers import AutoTokenizer

    frontier_dir = Path(frontier) if frontier else registry.frontier_path()
    tokenizer_dir = frontier_dir if has_tokenizer(frontier_dir) else registry.tokenizer_path()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    check_vocabularies(tokenizer, AutoTokenizer.from_pretrained(str(registry.tokenizer_path())),
                       str(tokenizer_dir), str(registry.tokenizer_path()))
    return frontier_dir, tokenizer
