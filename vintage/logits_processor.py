"""Point-in-time steering inside `frontier.generate(..., logits_processor=[...])`: the transformers
LogitsProcessor form of the linear mode, for users who keep their own generation loop."""
from __future__ import annotations

import torch
from transformers import LogitsProcessor

from vintage.model_calls import model_logits
from vintage.modes import Temperatures, combine_logprobs


class PointInTimeLogitsProcessor(LogitsProcessor):
    """For `frontier.generate(..., logits_processor=[this])`: replaces the frontier's next-token scores by
    the combined log-probs. The surrogates keep their own KV caches across steps.

    The models in one order everywhere: (vintage, full), as in `combine_logprobs(frontier, vintage, full)`.
    Pass the prompt's `attention_mask` when the batch is left-padded.
    """

    def __init__(self, vintage, full, alpha: float, temperatures: Temperatures = Temperatures(),
                 plausibility: float | None = None, attention_mask: torch.Tensor | None = None):
        self.vintage, self.full, self.alpha = vintage, full, float(alpha)
        self.temperatures, self.plausibility = temperatures, plausibility
        self.prompt_mask = attention_mask
        self._past = None
        self._seen = 0

    def _mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.prompt_mask is None:
            return torch.ones_like(input_ids)
        extra = input_ids.shape[1] - self.prompt_mask.shape[1]
        return torch.cat([self.prompt_mask.to(input_ids.device), torch.ones_like(input_ids[:, :extra])], dim=1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = self._mask(input_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        vocab = scores.shape[-1]
        incremental = self._past is not None and input_ids.shape[1] == self._seen + 1
        logits, pasts = [], []
        for k, model in enumerate((self.vintage, self.full)):
            ids, pos = (input_ids[:, -1:], positions[:, -1:]) if incremental else (input_ids, positions)
            with torch.inference_mode():
                last, cache = model_logits(model, ids, mask, pos, self._past[k] if incremental else None, 1, vocab)
            logits.append(last[:, -1].to(scores.device, torch.float32))
            pasts.append(cache)
        self._past, self._seen = pasts, input_ids.shape[1]
        return combine_logprobs(scores, logits[0], logits[1], self.alpha, self.temperatures, self.plausibility)
