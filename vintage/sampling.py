"""How a next token is drawn from steered log-probs: greedy at temperature 0, else from softmax(log-probs /
temperature) over the `top_k` most likely tokens (capped at the vocabulary). PointInTimeLM.generate and the
serving engine both draw through `sample`."""
from __future__ import annotations

import torch


def sample(logprobs: torch.Tensor, temperature: float, top_k: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logprobs` [B, V] (a LongTensor [B])."""
    if temperature == 0:
        return logprobs.argmax(-1)
    scaled = logprobs / temperature
    if top_k is not None:
        kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator)[:, 0]
