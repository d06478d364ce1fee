"""The serving engine: a frontier and a full surrogate shared by every request, vintage surrogates handed in
per request, and a running batch decoded one steered step at a time for all its rows.

The batch is continuous: new requests join between steps (prefilled on their own, then their KV caches are
left-padded and concatenated to the running ones) and finished rows leave at once. Each model keeps a cache over
the rows it serves: the frontier over all, the full surrogate over the steered ones, each vintage over the rows
that asked for it. Left padding is masked, positions come from the mask (as in PointInTimeLM.generate), and the
arithmetic per row is PointInTimeLM's, so a greedy answer equals `PointInTimeLM.generate` token for token.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from serving.methods import Method
from vintage.model_calls import model_logits, pad_batch, pad_id
from vintage.registry import Registry
from vintage.sampling import sample
from vintage.surrogates import load_surrogate
from vintage.vocabulary import frontier_and_tokenizer


@dataclass
class DecodeJob:
    """One request's generation: its prompt's token ids, the vintage model it is steered to, and sampling."""

    prompt_ids: list[int]
    method: Method
    vintage: Any = None  # the loaded vintage surrogate; None for an unsteered method
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: no log-probs; n >= 0: the chosen token's and the top n alternatives'
    seed: int | None = None
    cancelled: bool = False  # set when the client went away: the row leaves the batch at the next step


@dataclass
class TokenEvent:
    """One generated token of one row: its text, the text this step releases, and why the row ended."""

    token_id: int
    token: str
    text: str  # released text (held back while it may be the start of a stop string)
    logprob: float
    top_logprobs: dict[str, float] | None = None
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", or None while going on
    eos: bool = False  # the end-of-text token: ends the row, is no part of the answer (as in PointInTimeLM)


@dataclass
class _Row:
    job: DecodeJob
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    released: int = 0  # characters of the text already released
    finished: bool = False


class Engine:
    """The models one replica holds (frontier, full surrogate, tokenizer) and the registry for as-of lookup."""

    def __init__(self, registry: str | Path | Registry, frontier: str | Path | None = None, dtype: str = "float32"):
        from transformers.utils import logging as hf_logging

        from vintage.compact import load_causal_lm

        hf_logging.disable_progress_bar()  # one bar per vintage load otherwise
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.frontier_dir, self.tokenizer = frontier_and_tokenizer(self.registry, frontier)
        self.vocab = len(self.tokenizer)
        self.dtype = dtype  # what the models compute in (vintage/precision.py)
        self.frontier = load_causal_lm(self.frontier_dir, compute=dtype)
        self.full = load_surrogate(self.registry, "neural", self.registry.full_cutoff(), compute=dtype)
        self.pad_id = pad_id(self.tokenizer)
        config = self.frontier.config
        self.max_positions = min(p for p in (getattr(config, "n_positions", None),
                                             getattr(config, "max_position_embeddings", None),
                                             getattr(self.full.config, "n_positions", None),
                                             getattr(self.full.config, "max_position_embeddings", None),
                                             1 << 30) if p)

    def cutoffs(self) -> list[str]:
        return self.registry.cutoffs()

    def vintage_for(self, as_of: dt.datetime) -> str:
        """The cutoff of the vintage usable at `as_of` (RegistryError listing the cutoffs before the first)."""
        return self.registry.vintage_for(as_of)[0]

    def load_vintage(self, cutoff: str):
        """The neural vintage surrogate at `cutoff` (safetensors only, eval mode)."""
        return load_surrogate(self.registry, "neural", cutoff, compute=self.dtype)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """The frontier's chat template applied to `messages` (with the assistant's turn opened); a frontier
        without one (a base model) gets the contents one per line, which it continues as text."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return "\n".join(m["content"] for m in messages)

    def start(self, jobs: Sequence[DecodeJob] = ()) -> "Batch":
        return Batch(self, jobs)


class _Group:
    """One model and the rows it computes, in order, with its KV cache over them."""

    def __init__(self, model, rows: list[_Row]):
        self.model, self.rows, self.cache = model, rows, None


def _group_key(job: DecodeJob, role: str):
    return role if role != "vintage" else ("vintage", id(job.vintage))


def _pad_cache(cache, columns: int) -> None:
    """Left-pad every layer's keys and values by `columns` masked positions."""
    if columns:
        for layer in cache.layers:
            layer.keys = F.pad(layer.keys, (0, 0, columns, 0))
            layer.values = F.pad(layer.values, (0, 0, columns, 0))


def _concat_cache(cache, other) -> None:
    for layer, extra in zip(cache.layers, other.layers):
        layer.keys = torch.cat([layer.keys, extra.keys], dim=0)
        layer.values = torch.cat([layer.values, extra.values], dim=0)


def _joinable(cache) -> bool:
    """Caches this module knows how to pad, join and slice: transformers' DynamicCache of full-attention layers."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" and getattr(layer, "keys", None) is not None
                                and layer.keys.dim() == 4 for layer in layers)


class Batch:
    """The running batch: `admit(jobs)` queues rows to join at the next step, `step()` advances every row by one
    token and returns (job, event) pairs; a row leaves as soon as its event carries a finish reason.

    Invariant between steps: `mask` is [rows, W] (1 for real tokens, 0 for left padding), every cache holds W - 1
    positions, and `last` is the token each row feeds next (the mask's last column)."""

    def __init__(self, engine: Engine, jobs: Sequence[DecodeJob] = ()):
        self.engine = engine
        self.rows: list[_Row] = []
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.last = torch.zeros(0, dtype=torch.long)
        self.groups: dict = {}
        self.pending: list[DecodeJob] = []
        self.joinable = True  # False once a model's cache is not one `_joinable` accepts: rows then wait
        self.steps = 0
        self.admit(jobs)

    def admit(self, jobs: Sequence[DecodeJob]) -> None:
        for job in jobs:
            if not job.prompt_ids:
                raise ValueError("every job needs a non-empty prompt")
            if job.method.steered and job.vintage is None:
                raise ValueError(f"method {job.method.spec!r} needs a vintage model")
        self.pending.extend(jobs)

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.pending)

    @property
    def done(self) -> bool:
        return not self.rows and not self.pending

    @property
    def vintages(self) -> int:
        return sum(isinstance(key, tuple) for key in self.groups)

    # -- model calls ---------------------------------------------------------------------------------------

    def _groups_for(self, rows: list[_Row]) -> dict:
        groups: dict = {"frontier": _Group(self.engine.frontier, list(rows))}
        for row in rows:
            if row.job.method.steered:
                for role, model in (("full", self.engine.full), ("vintage", row.job.vintage)):
                    groups.setdefault(_group_key(row.job, role), _Group(model, [])).rows.append(row)
        return groups

    def _forward(self, rows, groups, ids, mask, positions):
        """Each group's model on its rows (caches updated in place); the last position's logits [B, V] of the
        frontier, the vintages and the full surrogate (zeros where a row has none)."""
        vocab, at = self.engine.vocab, {id(row): i for i, row in enumerate(rows)}
        frontier = vintage = full = None
        for key, group in groups.items():
            index = torch.tensor([at[id(row)] for row in group.rows])
            logits, group.cache = model_logits(group.model, ids[index], mask[index], positions[index], group.cache,
                                               1, vocab)
            logits = logits[:, -1].float()
            if key == "frontier":
                frontier = torch.empty((len(rows), logits.shape[-1]))
                frontier[index] = logits
                continue
            if full is None:
                full = torch.zeros((len(rows), logits.shape[-1]))
                vintage = torch.zeros_like(full)
            (full if key == "full" else vintage)[index] = logits
        return frontier, vintage, full

    def _combine(self, rows, frontier, vintage, full) -> torch.Tensor:
        """Combined next-token log-probs [B, V], each row under its own method."""
        methods: dict[Method, list[int]] = {}
        for i, row in enumerate(rows):
            methods.setdefault(row.job.method, []).append(i)
        if len(methods) == 1:
            return next(iter(methods)).logprobs(frontier, vintage, full)
        out = torch.empty_like(frontier)
        for method, index in methods.items():
            index = torch.tensor(index)
            out[index] = method.logprobs(frontier[index], None if vintage is None else vintage[index],
                                         None if full is None else full[index])
        return out

    def _prefill(self, jobs):
        """The new rows on their own: left-padded prompts through every model, fresh caches."""
        rows = [_Row(job, torch.Generator().manual_seed(job.seed) if job.seed is not None else None) for job in jobs]
        ids, mask = pad_batch([job.prompt_ids for job in jobs], self.engine.pad_id, side="left")
        groups = self._groups_for(rows)
        logits = self._forward(rows, groups, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
        return rows, groups, mask, self._combine(rows, *logits)

    def _join(self, rows, groups, mask) -> None:
        """Append prefilled rows (their mask already holds their first token's column) to the running batch."""
        if not self.rows:
            self.rows, self.groups, self.mask = rows, groups, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for group in self.groups.values():
            _pad_cache(group.cache, width - self.mask.shape[1])
        for key, group in groups.items():
            _pad_cache(group.cache, width - mask.shape[1])
            if key in self.groups:
                _concat_cache(self.groups[key].cache, group.cache)
                self.groups[key].rows += group.rows
            else:
                self.groups[key] = group
        self.mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)),
                               F.pad(mask, (width - mask.shape[1], 0))])
        self.rows = self.rows + rows

    def _retire(self) -> None:
        """Drop finished rows from the mask and every cache, and columns no remaining row attends to."""
        for row in self.rows:
            row.finished = row.finished or row.job.cancelled
        self.pending = [job for job in self.pending if not job.cancelled]
        keep = [i for i, row in enumerate(self.rows) if not row.finished]
        if len(keep) < len(self.rows):
            for key in list(self.groups):
                group = self.groups[key]
                local = [j for j, row in enumerate(group.rows) if not row.finished]
                if not local:
                    del self.groups[key]
                elif len(local) < len(group.rows):
                    group.cache.batch_select_indices(torch.tensor(local))
                    group.rows = [group.rows[j] for j in local]
            index = torch.tensor(keep, dtype=torch.long)
            self.rows, self.mask, self.last = [self.rows[i] for i in keep], self.mask[index], self.last[index]
        if self.rows:
            first = int(self.mask.any(0).long().argmax())
            if first:
                self.mask = self.mask[:, first:]
                for group in self.groups.values():
                    for layer in group.cache.layers:
                        layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]

    # -- one step ------------------------------------------------------------------------------------------

    def _choose(self, row: _Row, lp: torch.Tensor) -> int:
        """The next token of one row from its log-probs [1, V]: greedy, or sampled as PointInTimeLM does."""
        return int(sample(lp, row.job.temperature, row.job.top_k, row.generator)[0])

    def _release(self, row: _Row, token: int) -> tuple[str, str | None]:
        """Text to release after `token`, and the finish reason if the row ends here."""
        tokenizer, job = self.engine.tokenizer, row.job
        eos = token == tokenizer.eos_token_id
        if not eos:
            row.tokens.append(token)
        text = tokenizer.decode(row.tokens)
        finish = "stop" if eos else None
        end = len(text)
        hits = [h for h in (text.find(s) for s in job.stop) if h >= 0]
        if hits:
            end, finish = min(hits), "stop"
        elif finish is None and len(row.tokens) >= job.max_tokens:
            finish = "length"
        if finish is None:
            # hold back what may be the start of a stop string, or half of a multi-byte character
            hold = max((len(s) - 1 for s in job.stop), default=0)
            end = max(row.released, len(text) - hold)
            if text[row.released:end].endswith("\ufffd"):
                end = row.released
        released = text[row.released:end] if end > row.released else ""
        row.released = max(row.released, end)
        return released, finish

    def step(self) -> list[tuple[DecodeJob, TokenEvent]]:
        """One token for every row (the running ones and those admitted since the last step)."""
        tokenizer = self.engine.tokenizer
        with torch.inference_mode():
            parts = []
            if self.rows:
                positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
                logits = self._forward(self.rows, self.groups, self.last[:, None], self.mask, positions[:, -1:])
                parts.append((self.rows, self._combine(self.rows, *logits)))
            joining = None
            if self.pending and (self.joinable or not self.rows):
                jobs, self.pending = self.pending, []
                rows, groups, mask, lp = self._prefill(jobs)
                joining = (rows, groups, mask)
                parts.append((rows, lp))
        events, chosen = [], {}
        for rows, lp in parts:
            for r, row in enumerate(rows):
                token = self._choose(row, lp[r:r + 1])
                chosen[id(row)] = token
                text, finish = self._release(row, token)
                top = None
                if row.job.logprobs:
                    best = lp[r].topk(min(row.job.logprobs, lp.shape[-1]))
                    top = {tokenizer.decode([int(i)]): float(v) for v, i in zip(best.values, best.indices)}
                events.append((row.job, TokenEvent(token, tokenizer.decode([token]), text, float(lp[r, token]), top,
                                                   finish, token == tokenizer.eos_token_id)))
                row.finished = finish is not None
        if joining is not None:
            rows, groups, mask = joining
            self.joinable = self.joinable and all(_joinable(g.cache) for g in groups.values())
            self._join(rows, groups, mask)
        self.last = torch.tensor([chosen[id(row)] for row in self.rows], dtype=torch.long)
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        self._retire()
        self.steps += 1
        return events
