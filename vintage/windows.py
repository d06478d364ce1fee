"""Packing tokenised documents into fixed-length training windows, the way LM pretraining does it.

Each document is followed by EOS and the stream is cut every `length` tokens: a long document becomes
several windows and a short one shares a window with its neighbours, so no token is dropped and no position
is padding except in the last window of a stream. Streams are packed separately (one per slice and side of
the hold-out), so a window never mixes slices, and hold-out stays by document.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def pack(documents: Iterable[Sequence[int]], length: int, eos: int) -> list[list[int]]:
    """The windows of `documents` (token ids, EOS appended to each) cut every `length` tokens."""
    if length < 2:
        raise ValueError(f"window length: expected at least 2 tokens (a causal LM predicts from one to the next), "
                         f"got {length}")
    stream: list[int] = []
    for doc in documents:
        stream.extend(doc)
        stream.append(eos)
    return [stream[i:i + length] for i in range(0, len(stream), length)]

