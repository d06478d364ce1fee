"""The serving engine: a frontier and a full surrogate shared by every request, vintage surrogates handed in
per request, and batches of requests decoded together, one steered step for the whole batch at a time.

A batch is static (its rows are fixed when it starts) and left-padded like PointInTimeLM.generate; each
model keeps a KV cache over the rows it serves: the frontier over all of them, the full surrogate over the
steered ones, each vintage over the rows that asked for it. The arithmetic per row is PointInTimeLM's, so a
greedy answer here equals `PointInTimeLM.generate` for the same vintage and method token for token.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from serving.methods import Method
from vintage.decoding import check_vocabularies, has_tokenizer, model_logits
from vintage.registry import Registry


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


@dataclass
class TokenEvent:
    """One generated token of one row: its text, the text this step releases, and why the row ended."""

    token_id: int
    token: str
    text: str  # released text (held back while it may be the start of a stop string)
    logprob: float
    top_logprobs: dict[str, float] | None = None
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", or None while going on


@dataclass
class _Row:
    job: DecodeJob
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    released: int = 0  # characters of the text already released
    finished: bool = False


class Engine:
    """The models one replica holds (frontier, full surrogate, tokenizer) and the registry for as-of lookup."""

    def __init__(self, registry: str | Path | Registry, frontier: str | Path | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per vintage load otherwise
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.frontier_dir = Path(frontier) if frontier else self.registry.frontier_path()
        tokenizer_dir = self.frontier_dir if has_tokenizer(self.frontier_dir) else self.registry.tokenizer_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        check_vocabularies(self.tokenizer, AutoTokenizer.from_pretrained(str(self.registry.tokenizer_path())),
                           str(tokenizer_dir), str(self.registry.tokenizer_path()))
        self.vocab = len(self.tokenizer)
        self.frontier = AutoModelForCausalLM.from_pretrained(str(self.frontier_dir), use_safetensors=True).eval()
        self.full = self.registry.load_surrogate("neural", self.registry.full_cutoff())
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (
            self.tokenizer.eos_token_id or 0)
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
        return self.registry.load_surrogate("neural", cutoff)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """The frontier's chat template applied to `messages` (with the assistant's turn opened); a frontier
        without one (a base model) gets the contents one per line, which it continues as text."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return "\n".join(m["content"] for m in messages)

    def start(self, jobs: Sequence[DecodeJob]) -> "Batch":
        return Batch(self, jobs)


class Batch:
    """Rows decoded together; `step()` advances every unfinished row by one token."""

    def __init__(self, engine: Engine, jobs: Sequence[DecodeJob]):
        if not jobs or any(not job.prompt_ids for job in jobs):
            raise ValueError("every job needs a non-empty prompt")
        self.engine = engine
        self.rows = [_Row(job, torch.Generator().manual_seed(job.seed) if job.seed is not None else None)
                     for job in jobs]
        width = max(len(job.prompt_ids) for job in jobs)
        self.ids = torch.full((len(jobs), width), engine.pad_id, dtype=torch.long)
        self.mask = torch.zeros_like(self.ids)
        for r, job in enumerate(jobs):
            self.ids[r, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids, dtype=torch.long)
            self.mask[r, width - len(job.prompt_ids):] = 1
        # which rows each model computes: the frontier all, the full surrogate the steered ones, each vintage its own
        steered = [r for r, job in enumerate(jobs) if job.method.steered]
        self.calls: list[list] = [[engine.frontier, None, None]]  # model, rows (None: all), cache
        if steered:
            self.calls.append([engine.full, torch.tensor(steered), None])
            by_vintage: dict[int, list[int]] = {}
            for r in steered:
                if jobs[r].vintage is None:
                    raise ValueError(f"job {r}: method {jobs[r].method.spec!r} needs a vintage model")
                by_vintage.setdefault(id(jobs[r].vintage), []).append(r)
            for rows in by_vintage.values():
                self.calls.append([jobs[rows[0]].vintage, torch.tensor(rows), None])
        self.by_method: dict[Method, torch.Tensor] = {}
        for r, job in enumerate(jobs):
            self.by_method.setdefault(job.method, [])
            self.by_method[job.method].append(r)
        self.by_method = {m: torch.tensor(rows) for m, rows in self.by_method.items()}
        self.steps = 0
        self.vintages = len(self.calls) - 2 if steered else 0

    @property
    def done(self) -> bool:
        return all(row.finished for row in self.rows)

    def _logprobs(self) -> torch.Tensor:
        """Combined next-token log-probs [B, V], each row under its own method."""
        engine = self.engine
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        first = self.steps == 0
        ids, pos = (self.ids, positions) if first else (self.ids[:, -1:], positions[:, -1:])
        batch = len(self.rows)
        frontier = vintage = full = None
        for k, call in enumerate(self.calls):
            model, rows, cache = call
            if rows is None:
                logits, call[2] = model_logits(model, ids, self.mask, pos, cache, 1, engine.vocab)
            else:
                logits, call[2] = model_logits(model, ids[rows], self.mask[rows], pos[rows], cache, 1, engine.vocab)
            logits = logits[:, -1].float()
            if k == 0:
                frontier = logits
            elif k == 1:
                full = torch.zeros((batch, logits.shape[-1]))
                full[rows] = logits
                vintage = torch.zeros_like(full)
            else:
                vintage[rows] = logits
        if len(self.by_method) == 1:
            method = next(iter(self.by_method))
            return method.logprobs(frontier, vintage, full)
        out = torch.empty_like(frontier)
        for method, rows in self.by_method.items():
            out[rows] = method.logprobs(frontier[rows], None if vintage is None else vintage[rows],
                                        None if full is None else full[rows])
        return out

    def _choose(self, row: _Row, lp: torch.Tensor) -> int:
        """The next token of one row from its log-probs [1, V]: greedy, or sampled as PointInTimeLM does."""
        job = row.job
        if job.temperature == 0:
            return int(lp.argmax(-1))
        scaled = lp / job.temperature
        if job.top_k is not None:
            kth = scaled.topk(min(job.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        return int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=row.generator)[:, 0])

    def _release(self, row: _Row, token: int) -> tuple[str, str | None]:
        """Text to release after `token`, and the finish reason if the row ends here."""
        tokenizer, job = self.engine.tokenizer, row.job
        eos = token == tokenizer.eos_token_id
        if not eos:
            row.tokens.append(token)
        text = tokenizer.decode(row.tokens)
        finish = "stop" if eos else None
        end = len(text)
        hits = [text.find(s, max(0, row.released - len(s) + 1)) for s in job.stop]
        hits = [h for h in hits if h >= 0]
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

    def step(self) -> list[TokenEvent | None]:
        """One decoding step for every row: an event per row, None for rows that had already finished."""
        tokenizer = self.engine.tokenizer
        with torch.inference_mode():
            lp = self._logprobs()
        events: list[TokenEvent | None] = []
        chosen = []
        for r, row in enumerate(self.rows):
            if row.finished:
                events.append(None)
                chosen.append(self.engine.pad_id)
                continue
            token = self._choose(row, lp[r:r + 1])
            chosen.append(token)
            text, finish = self._release(row, token)
            top = None
            if row.job.logprobs:
                best = lp[r].topk(min(row.job.logprobs, lp.shape[-1]))
                top = {tokenizer.decode([int(i)]): float(v) for v, i in zip(best.values, best.indices)}
            events.append(TokenEvent(token, tokenizer.decode([token]), text, float(lp[r, token]), top, finish))
            row.finished = finish is not None
        was_active = torch.tensor([e is not None for e in events], dtype=torch.long)
        self.ids = torch.cat([self.ids, torch.tensor(chosen, dtype=torch.long)[:, None]], dim=1)
        self.mask = torch.cat([self.mask, was_active[:, None]], dim=1)
        self.steps += 1
        return events
