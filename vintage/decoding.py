"""PointInTimeLM: a frontier steered to a vintage by a pair of surrogates (vintage, full) under one decoding
mode (vintage/modes.py): score choices, compute perplexity, generate. The models are always given in one
order, (frontier, vintage, full[, fallback]), as in the modes' functions."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.special import softmax

from vintage import recommended
from vintage.compact import load_causal_lm
from vintage.model_calls import device_of, model_logits, pad_batch, pad_id, vocab_size_of
from vintage.modes import FALLBACK_MODES, Steering, Temperatures, steer
from vintage.sampling import sample
from vintage.surrogate_worker import InWorker, SurrogateWorker
from vintage.surrogates import load_surrogate
from vintage.vocabulary import VocabularyMismatch, check_vocabularies, frontier_and_tokenizer, has_tokenizer

@dataclass
class ScoredChoices:
    """Scores of one query's choices under one method: totals and per-token log-probs."""

    choice_logprobs: list[float]
    token_logprobs: list[list[float]]
    choice_tokens: list[list[int]] = field(default_factory=list)

    @property
    def prediction(self) -> int:
        return max(range(len(self.choice_logprobs)), key=self.choice_logprobs.__getitem__)

    def probabilities(self) -> list[float]:
        """Choice probabilities renormalised over the choices."""
        return softmax(np.asarray(self.choice_logprobs, dtype=np.float64)).tolist()


@dataclass
class ChoiceComponents:
    logits: list  # frontier, vintage, full, fallback: [T, V] float32 (None where not computed)
    targets: torch.Tensor  # [T] the choice tokens
    spans: list[list[tuple[int, int]]]  # per query, per choice: its tokens' [start, end) in T
    tokens: list[list[list[int]]]

SLOTS = 4  # models behind one PointInTimeLM: frontier, vintage, full, fallback
SETTINGS = tuple(f.name for f in dataclasses.fields(Steering))


def _check_fallback(steering: Steering, fallback) -> None:
    if fallback is not None and steering.mode not in FALLBACK_MODES:
        raise ValueError(f"a fallback model applies to the {'/'.join(sorted(FALLBACK_MODES))} modes only, "
                         f"not {steering.mode}")


def _steering(steering: Steering | None, alpha: float, temperatures: Temperatures,
              plausibility: float | None) -> Steering:
    """`steering`, or the linear contrast's shorthand (alpha, temperatures, plausibility); not both."""
    if steering is None:
        return Steering("linear", alpha, plausibility, temperatures=temperatures)
    if (alpha, temperatures, plausibility) != (0.0, Temperatures(), None):
        raise TypeError("give steering= or the linear shorthand (alpha, temperatures, plausibility), not both")
    return steering


class PointInTimeLM:
    """A frontier steered to a vintage: `score`, `generate` and `perplexity` under the combined distribution.

    Each model may sit on its own device and dtype; combination happens in float32 on the frontier's device.
    """

    def __init__(self, frontier, vintage, full, tokenizer, alpha: float = 0.0,
                 temperatures: Temperatures = Temperatures(), plausibility: float | None = None,
                 batch_size: int = 32, vintage_cutoff: str | None = None, steering: Steering | None = None,
                 fallback=None, overlap: bool = False):
        """`steering`: the decoding mode and its settings (vintage/modes.py), e.g. `Steering("rank", k=1)` or
        `Steering("switch", margin=0.1, plausibility=0.3)` (where the gate fires, `fallback`'s distribution, a
        fourth model at the same vintage, or else the pair's vintage); without it, `alpha`, `temperatures` and
        `plausibility` are the linear contrast's (alpha 0: the frontier alone). `overlap`: `generate` runs the surrogates in a child process (`SurrogateWorker`,
        started at the first steered step, one thread) while the frontier runs here: for small batches,
        where a surrogate's step is Python dispatch rather than arithmetic (bench/decode.py: batch 1-8 on
        2 cores); give the frontier the other cores (`torch.set_num_threads`). Scoring and perplexity stay
        in-process (their logits are large and their batches are). `close()` ends the process (so does
        garbage collection)."""
        self.steering = _steering(steering, alpha, temperatures, plausibility)
        _check_fallback(self.steering, fallback)
        self.frontier, self.vintage, self.full, self.tokenizer = frontier, vintage, full, tokenizer
        self.fallback = fallback
        self.batch_size = batch_size
        self.vintage_cutoff = vintage_cutoff
        self.vocab = len(tokenizer)
        self.overlap = overlap
        self._worker = SurrogateWorker((vintage, full, fallback), self.vocab) if overlap else None
        named = (("frontier", frontier), ("vintage surrogate", vintage), ("full surrogate", full),
                 ("fallback", fallback))
        for name, model in named:
            size = vocab_size_of(model)
            if size is not None and size < self.vocab:
                raise VocabularyMismatch(f"{name} has {size} output logits, the tokenizer {self.vocab} tokens")
        for _, model in named:
            if hasattr(model, "eval"):
                model.eval()
        self.pad_id = pad_id(tokenizer)

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, frontier: str | Path, vintage: str | Path, full: str | Path,
                        tokenizer: str | Path | None = None, surrogate_tokenizer: str | Path | None = None,
                        alpha: float = 0.0, frontier_kwargs: dict | None = None,
                        surrogate_kwargs: dict | None = None, **kwargs) -> "PointInTimeLM":
        """Load three HF causal-LM directories (safetensors). The surrogates' tokenizer (default: the one
        saved beside the vintage) must equal the frontier's (default: the one saved beside the frontier)."""
        from transformers import AutoTokenizer

        tokenizer_dir = Path(tokenizer or frontier)
        if not has_tokenizer(tokenizer_dir):
            raise VocabularyMismatch(f"{tokenizer_dir}: no tokenizer files there; pass tokenizer= (the frontier's)")
        frontier_tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        surrogate_path = surrogate_tokenizer or (vintage if has_tokenizer(vintage) else None)
        if surrogate_path is not None:
            check_vocabularies(frontier_tok, AutoTokenizer.from_pretrained(str(surrogate_path)),
                               str(tokenizer or frontier), str(surrogate_path))
        models = [load_causal_lm(frontier, **(frontier_kwargs or {}))]
        models += [load_causal_lm(p, **(surrogate_kwargs or {})) for p in (vintage, full)]
        return cls(models[0], models[1], models[2], frontier_tok, alpha=alpha, **kwargs)

    @classmethod
    def from_registry(cls, registry, as_of, frontier: str | Path | None = None,
                      alpha: float | str | None = None, plausibility: float | None = None,
                      surrogate: str = "neural", fallback: str | None = None, steering: Steering | None = None,
                      frontier_kwargs: dict | None = None, surrogate_kwargs: dict | None = None,
                      dtype: str = "float32", **kwargs) -> "PointInTimeLM":
        """The vintage for `as_of` (latest whose cutoff day has fully passed), the registry's full surrogate, and
        its frontier (or `frontier`, any HF directory sharing the registry's tokenizer), decoding with the
        recommended method (vintage/recommended.py); `alpha` (and `plausibility`) ask for the linear contrast (alpha
        0.5 where only a mask is given; "calibrated": the vintage's from the registry), `steering` for any mode.
        `surrogate`: the trained pair (neural) or the n-gram counts (ngram); `fallback` (switch, blend): the kind
        whose vintage replaces the frontier where the gate fires (default: the pair's own). `dtype` (auto, float32,
        bfloat16): what the neural models compute in (vintage/precision.py).

            PointInTimeLM.from_registry("out/demo/models", "2018-01-15", surrogate="ngram", fallback="neural",
                                        steering=Steering("switch", margin=0.1, plausibility=0.3))
        """
        from vintage.registry import Registry

        registry = registry if isinstance(registry, Registry) else Registry(registry)
        cutoff, _ = registry.vintage_for(as_of)
        steering = recommended.resolve(alpha, plausibility, steering, lambda: registry.calibrated_alpha(cutoff))
        frontier_dir, tokenizer = frontier_and_tokenizer(registry, frontier)
        options = {"compute": dtype, **(surrogate_kwargs or {})}
        load = lambda kind, at: load_surrogate(registry, kind, at, **options)  # noqa: E731
        vintage, full = load(surrogate, cutoff), load(surrogate, registry.full_cutoff())
        fallback = load(fallback, cutoff) if fallback else None
        model = load_causal_lm(frontier_dir, **{"compute": dtype, **(frontier_kwargs or {})})
        return cls(model, vintage, full, tokenizer, steering=steering, vintage_cutoff=cutoff, fallback=fallback,
                   **kwargs)

    def with_settings(self, **changes) -> "PointInTimeLM":
        """The same loaded models with other combination settings (any field of `Steering`: mode, alpha,
        plausibility, k, margin, temperatures; and fallback: an already loaded model or None): a shallow copy,
        nothing is loaded again."""
        unknown = sorted(set(changes) - set(SETTINGS) - {"fallback"})
        if unknown:
            raise TypeError(f"with_settings: not a combination setting: {unknown}")
        fallback = changes.pop("fallback", self.fallback)
        other = copy.copy(self)
        other.steering = dataclasses.replace(self.steering, **changes)
        _check_fallback(other.steering, fallback)
        other.fallback = fallback
        if self.overlap and fallback is not None and fallback is not self.fallback:
            other._worker = SurrogateWorker((self.vintage, self.full, fallback), self.vocab)
        return other

    def with_alpha(self, alpha: float) -> "PointInTimeLM":
        """The same loaded models at another alpha (a shallow copy)."""
        return self.with_settings(alpha=alpha)

    # -- model calls ---------------------------------------------------------------------------------------

    # the settings, read-only: `with_settings` makes another
    mode = property(lambda self: self.steering.mode)
    alpha = property(lambda self: self.steering.alpha)
    temperatures = property(lambda self: self.steering.temperatures)
    plausibility = property(lambda self: self.steering.plausibility)

    def _forward(self, model, input_ids, attention_mask, position_ids, past=None, keep: int | None = None):
        return model_logits(model, input_ids, attention_mask, position_ids, past, keep, self.vocab)

    def _float(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        """Logits moved to the frontier's device in float32 (after gathering what is needed: cheaper)."""
        return None if logits is None else logits.to(device_of(self.frontier), torch.float32)

    def _all_logits(self, input_ids, attention_mask, position_ids, pasts=(None,) * SLOTS, everything=False,
                    keep: int | None = None, remote: bool = False):
        """Raw logits of frontier, vintage, full and fallback (in that order), each on its model's device and
        dtype. With the steering off (the frontier alone) the surrogates are skipped (their slots are None) unless `everything`; so is a
        fallback the combination does not have. `remote`: the surrogates run in the worker process."""
        steer = everything or self.steering.steered
        if steer and remote and self.vintage is not None:
            return self._overlapped_logits(input_ids, attention_mask, position_ids, pasts, keep)
        models = (self.frontier, self.vintage if steer else None, self.full if steer else None,
                  self.fallback if steer else None)
        results = [(None, None) if m is None else self._forward(m, input_ids, attention_mask, position_ids, p, keep)
                   for m, p in zip(models, pasts)]
        return [r[0] for r in results], [r[1] for r in results]

    def _overlapped_logits(self, input_ids, attention_mask, position_ids, pasts, keep):
        """`_all_logits` with the surrogates' passes in the worker process, concurrent with the frontier's."""
        worker = self._worker
        worker.submit((True, True, self.fallback is not None), input_ids, attention_mask, position_ids, pasts[1],
                      keep)
        try:
            frontier = self._forward(self.frontier, input_ids, attention_mask, position_ids, pasts[0], keep)
        finally:
            surrogates = worker.result()  # always collected: the pipe stays in step even if the frontier failed
        held = InWorker(worker.epoch)
        return [frontier[0], *surrogates], [frontier[1], held, held, held if self.fallback is not None else None]

    def close(self) -> None:
        """End the surrogate process of `overlap` (a later generation starts another); copies made by
        `with_settings` share it."""
        if self._worker is not None:
            self._worker.close()

    def _combine(self, logits: Sequence[torch.Tensor], alpha: float | None = None) -> torch.Tensor:
        frontier, vintage, full, fallback = (list(logits) + [None] * SLOTS)[:SLOTS]
        steering = self.steering if alpha is None else self.steering.at_alpha(alpha)
        uses_fallback = steering.mode in FALLBACK_MODES
        if steering.steered and uses_fallback and self.fallback is not None and fallback is None:
            raise ValueError("fallback logits were not computed")
        return steer(steering, frontier, vintage, full, fallback if uses_fallback else None)

    # -- scoring -------------------------------------------------------------------------------------------

    def encode_choices(self, prompts: Sequence[str], choices: Sequence[Sequence[str]]):
        """Token ids of each prompt and each of its choices (tokenised apart, as evaluation harnesses do)."""
        if len(prompts) != len(choices):
            raise ValueError(f"{len(prompts)} prompts but {len(choices)} choice lists")
        encoded = []
        for i, (prompt, options) in enumerate(zip(prompts, choices)):
            p = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            cs = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in options]
            if not options or any(len(c) == 0 for c in cs):
                raise ValueError(f"query {i}: a choice is empty after tokenisation ({list(options)!r})")
            if not p:
                raise ValueError(f"query {i}: the prompt is empty after tokenisation")
            encoded.append((p, cs))
        return encoded

    def choice_components(self, prompts: Sequence[str], choices: Sequence[Sequence[str]],
                          everything: bool = True) -> "ChoiceComponents":
        """The models' logits at every choice token's position (gathered, [T, V] each), the target
        tokens and where each (query, choice) sits among them; combining them for any alpha is then one
        vectorised call (calibration sweeps alpha on these). Sequences are left-padded, so every choice
        ends at the last column and the models compute logits for the last (longest choice + 1) positions
        only."""
        encoded = self.encode_choices(prompts, choices)
        flat = [(q, k, p + c, len(p), c) for q, (p, cs) in enumerate(encoded) for k, c in enumerate(cs)]
        parts: list[list[torch.Tensor]] = [[] for _ in range(SLOTS)]
        targets, spans = [], [[None] * len(cs) for _, cs in encoded]
        offset = 0
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start:start + self.batch_size]
            keep = max(len(c) for *_, c in chunk) + 1
            ids, mask = pad_batch([seq for _, _, seq, _, _ in chunk], self.pad_id, side="left")
            rows, cols = [], []
            for row, (q, k, seq, plen, c) in enumerate(chunk):
                rows += [row] * len(c)
                # logits at t predict token t+1: the choice's are the len(c) positions before the last one,
                # i.e. columns keep-1-len(c) .. keep-2 of the kept logits
                cols += range(keep - 1 - len(c), keep - 1)
                targets += c
                spans[q][k] = (offset, offset + len(c))
                offset += len(c)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits, _ = self._all_logits(ids, mask, positions, everything=everything, keep=keep)
                r, c_ = torch.tensor(rows), torch.tensor(cols)
                for m, lg in enumerate(logits):
                    if lg is not None:
                        parts[m].append(self._float(lg[r.to(lg.device), c_.to(lg.device)]))
        gathered = [torch.cat(p) if p else None for p in parts]
        return ChoiceComponents(gathered, torch.tensor(targets, dtype=torch.long), spans,
                                [[list(c) for c in cs] for _, cs in encoded])

    def score_components(self, components: "ChoiceComponents", alpha: float | None = None) -> list[ScoredChoices]:
        with torch.inference_mode():
            lp = self._combine(components.logits, alpha)
            token_lp = lp.gather(-1, components.targets.to(lp.device)[:, None])[:, 0].double().cpu().tolist()
        scored = []
        for spans, tokens in zip(components.spans, components.tokens):
            per_token = [token_lp[a:b] for a, b in spans]
            scored.append(ScoredChoices([float(sum(t)) for t in per_token], per_token, tokens))
        return scored

    def score(self, prompts: Sequence[str], choices: Sequence[Sequence[str]]) -> list[ScoredChoices]:
        """Log-prob of each choice continuing its prompt, per token and in total, under the combined model."""
        return self.score_components(self.choice_components(prompts, choices, everything=False))

    # -- perplexity ----------------------------------------------------------------------------------------

    def token_logprobs(self, texts: Sequence[str], alpha: float | None = None) -> list[torch.Tensor]:
        """Combined log-prob of every token after the first of each text."""
        return self.ids_logprobs([self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], alpha)

    def ids_logprobs(self, encoded: Sequence[Sequence[int]], alpha: float | None = None) -> list[torch.Tensor]:
        """Combined log-prob of every token after the first of each token-id sequence (e.g. packed windows)."""
        return self.ids_logprobs_at(encoded, [alpha])[0]

    def ids_logprobs_at(self, encoded: Sequence[Sequence[int]], alphas: Sequence[float | None]) -> list[list]:
        """`ids_logprobs` at each of `alphas` (per alpha, one tensor per sequence) from one forward pass of each
        model, in batches of `batch_size`, right-padded: what a sweep over the strength needs (vintage.strength)."""
        out: list[list[torch.Tensor]] = [[] for _ in alphas]
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            ids, mask = pad_batch(chunk, self.pad_id, side="right")
            with torch.inference_mode():
                logits, _ = self._all_logits(ids, mask, torch.arange(ids.shape[1]).expand(len(chunk), ids.shape[1]),
                                             everything=any(a is not None and a != 0 for a in alphas))
                logits = [self._float(lg) for lg in logits]
                for slot, alpha in enumerate(alphas):
                    lp = self._combine(logits, alpha)
                    for row, e in enumerate(chunk):
                        target = ids[row, 1:len(e)].to(lp.device)
                        out[slot].append(lp[row, : len(e) - 1].gather(-1, target[:, None])[:, 0].double().cpu())
        return out

    def perplexity(self, texts: Sequence[str], alpha: float | None = None) -> float:
        """exp(mean negative log-likelihood) over all predicted tokens of `texts`."""
        lps = [t for t in self.token_logprobs(texts, alpha) if len(t)]
        if not lps:
            raise ValueError("perplexity needs at least one text of two or more tokens")
        return float(torch.exp(-torch.cat(lps).mean()))

    # -- generation ----------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 20, greedy: bool = True,
                 temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
                 use_cache: bool = True, return_scores: bool = False, stop_at_eos: bool = True):
        """Continue each prompt under the combined distribution. Prompts are left-padded into one batch;
        with use_cache the three models keep KV caches and see one new token per step."""
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(len(e) == 0 for e in encoded):
            raise ValueError("a prompt is empty after tokenisation")
        batch = len(encoded)
        ids, mask = pad_batch(encoded, self.pad_id, side="left")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        eos = self.tokenizer.eos_token_id if stop_at_eos else None
        done = torch.zeros(batch, dtype=torch.bool)
        new_tokens, step_scores = [], []
        pasts = (None,) * SLOTS
        step_ids, step_mask = ids, mask
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                positions = (step_mask.cumsum(-1) - 1).clamp(min=0)
                if use_cache and pasts[0] is not None:
                    logits, pasts = self._all_logits(step_ids[:, -1:], step_mask, positions[:, -1:], pasts,
                                                     keep=1, remote=self.overlap)
                else:
                    logits, pasts = self._all_logits(step_ids, step_mask, positions, keep=1, remote=self.overlap)
                lp = self._combine([self._float(None if lg is None else lg[:, -1]) for lg in logits]).cpu()
                step_scores.append(lp)
                nxt = lp.argmax(-1) if greedy else sample(lp, temperature, top_k, generator)
                was_done = done.clone()
                nxt = torch.where(was_done, torch.full_like(nxt, self.pad_id), nxt)
                new_tokens.append(nxt)
                if eos is not None:
                    done |= nxt == eos
                step_ids = torch.cat([step_ids, nxt[:, None]], dim=1)
                step_mask = torch.cat([step_mask, (~was_done).long()[:, None]], dim=1)
                if done.all():
                    break
        generated = torch.stack(new_tokens, dim=1) if new_tokens else torch.zeros((batch, 0), dtype=torch.long)
        texts = []
        for row in range(batch):
            tokens = generated[row].tolist()
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            texts.append(self.tokenizer.decode(tokens))
        if return_scores:
            return texts, generated, torch.stack(step_scores, dim=1)
        return texts


