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



def packed_batch(windows: Sequence[Sequence[int]], pad: int, eos: int):
    """Windows as model inputs that keep their documents apart: positions restart after every EOS (a
    document starts at position 0, as a prompt does at inference), and no target crosses from one document
    to the next. Hugging Face causal LMs read restarting `position_ids` with no attention mask as packed
    sequences and attend within each only, so a window trains exactly as its documents would one by one.
    Returns (input_ids, position_ids, labels), [windows, longest]; padding is its own sequence, no target."""
    import torch

    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    positions = torch.arange(width).repeat(len(windows), 1)
    for i, window in enumerate(windows):
        tokens = torch.tensor(window, dtype=torch.long)
        n = len(window)
        ids[i, :n] = tokens
        starts = torch.zeros(n, dtype=torch.bool)
        starts[0] = True
        starts[1:] = tokens[:-1] == eos  # a document begins after each EOS
        index = torch.arange(n)
        first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), 0).values
        positions[i, :n] = index - first
        positions[i, n:] = torch.arange(width - n)
        labels[i, :n] = tokens.masked_fill(starts, -100)  # a document's first token has no context to predict it
    return ids, positions, labels


def window_targets(window: Sequence[int], eos: int | None) -> int:
    """Tokens of `window` that `packed_batch` makes targets: all but the first and each document's first."""
    if eos is None:
        return max(0, len(window) - 1)
    return sum(1 for previous in window[:-1] if previous != eos)
