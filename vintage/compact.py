"""Surrogates over the token ids their corpus uses (a compact vocabulary), mapped back to the frontier's ids.

A modern frontier's vocabulary (Llama 3: 128k, Qwen 2.5: 151k, Gemma 3: 262k) is mostly tokens a corpus never
uses; over all of it a small surrogate's output layer is nearly all its compute and memory. A compact surrogate
is trained over the ids its corpus uses (the specials and the fact probes' included) plus one input slot,
OTHER, that stands for any other id a prompt brings; `vocabulary.json` beside its weights lists the ids.

At decoding `CompactLM` maps the frontier's ids in and its logits back out over the frontier's vocabulary, with
-inf at every id outside the set: the surrogate gives no probability to a token its corpus lacks (its OTHER row
is never a target and is dropped). The modes read an id that a surrogate gives -inf as one it knows nothing
about: the contrast there is 0 and the frontier's log-prob stands (vintage/modes.py says how each mode treats it).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import torch

FILE = "vocabulary.json"
Setting = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class CompactVocabulary:
    """Compact id i is the frontier's id `ids[i]`; compact id len(ids) is OTHER (every id not in `ids`)."""

    ids: tuple[int, ...]  # ascending frontier ids
    size: int  # the frontier's vocabulary (its tokenizer's length)

    def __post_init__(self):
        ids = tuple(int(i) for i in self.ids)
        object.__setattr__(self, "ids", ids)
        if any(b <= a for a, b in zip(ids, ids[1:])):
            raise ValueError("compact vocabulary: ids must be strictly ascending")
        if ids and not 0 <= ids[0] <= ids[-1] < self.size:
            raise ValueError(f"compact vocabulary: ids must lie in [0, {self.size}), got {ids[0]}..{ids[-1]}")

    @property
    def rows(self) -> int:
        """The compact model's embedding and output rows: the ids and OTHER."""
        return len(self.ids) + 1

    @property
    def other(self) -> int:
        return len(self.ids)

    def source_rows(self) -> list[int]:
        """The whole-vocabulary rows a compact model starts from (presets.build_model's `rows`): the ids', and for
        OTHER the first id outside the set (a row no token of the corpus trains)."""
        taken = set(self.ids)
        return [*self.ids, next((i for i in range(self.size) if i not in taken), 0)]

    def table(self) -> np.ndarray:
        """Frontier id -> compact id (OTHER for an id outside the set), int64 [size]; built once per vocabulary
        (a 128k-262k array, and a run maps every probe through it). Read it, don't edit it."""
        return self._table

    @cached_property
    def _table(self) -> np.ndarray:
        table = np.full(self.size, self.other, dtype=np.int64)
        table[list(self.ids)] = np.arange(len(self.ids))
        return table

    def to_compact(self, sequences: Iterable[Sequence[int]]) -> list[list[int]]:
        table = self.table()
        return [table[np.asarray(s, dtype=np.int64)].tolist() for s in sequences]

    def save(self, directory: str | Path) -> None:
        payload = {"frontier_vocab_size": self.size, "ids": list(self.ids)}
        (Path(directory) / FILE).write_text(json.dumps(payload) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "CompactVocabulary | None":
        """The vocabulary saved beside a model's weights; None for a model over the whole vocabulary."""
        path = Path(directory) / FILE
        if not path.exists():
            return None
        payload = json.loads(path.read_text())
        try:
            return cls(tuple(payload["ids"]), int(payload["frontier_vocab_size"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: expected {{'frontier_vocab_size': int, 'ids': [ascending ints]}} ({err})") from err


def corpus_vocabulary(sequences: Iterable[Sequence[int]], size: int, always: Iterable[int | None] = ()) -> CompactVocabulary:
    """The ids `sequences` use, and `always` (the specials), as a compact vocabulary of a `size` one."""
    used = np.zeros(size, dtype=bool)
    for seq in sequences:
        used[np.asarray(seq, dtype=np.int64)] = True
    for token in always:
        if token is not None:
            used[int(token)] = True
    return CompactVocabulary(tuple(np.flatnonzero(used).tolist()), size)


LARGE = 32_000  # `auto` compacts vocabularies from this size: a frontier's (SmolLM2 49k, Llama 3 128k, Gemma 3 262k)


def worth_compacting(setting: Setting, vocabulary: CompactVocabulary) -> bool:
    """`auto`: compact a frontier-sized vocabulary (>= LARGE tokens) when that removes at least half the output
    rows. A small BPE trained on the corpus is left whole: its head is a small part of the model, and the
    registries trained over it keep their models."""
    if setting not in ("auto", "always", "never"):
        raise ValueError(f"compact_vocabulary: expected auto, always or never, got {setting!r}")
    if setting != "auto":
        return setting == "always"
    return vocabulary.size >= LARGE and 2 * vocabulary.rows <= vocabulary.size


def expand_logits(logits: torch.Tensor, ids: torch.Tensor, size: int) -> torch.Tensor:
    """Compact logits [..., >= len(ids)] -> logits [..., size] over the frontier's ids, -inf outside `ids`."""
    full = logits.new_full((*logits.shape[:-1], size), float("-inf"))
    return full.index_copy_(-1, ids.to(logits.device), logits[..., : ids.numel()])


class CompactLM(torch.nn.Module):
    """A compact surrogate that answers over the frontier's vocabulary: inputs are frontier ids, `.logits`
    are over all `vocabulary.size` ids (-inf outside the corpus's set). Everything else (caches,
    `logits_to_keep`, positions) passes through to the wrapped causal LM."""

    def __init__(self, model, vocabulary: CompactVocabulary):
        from vintage.model_calls import call_spec

        super().__init__()
        if getattr(model.config, "vocab_size", vocabulary.rows) < vocabulary.rows:
            raise ValueError(f"compact surrogate: {model.config.vocab_size} output rows, its vocabulary.json "
                             f"lists {vocabulary.rows - 1} ids and OTHER")
        self.model, self.vocabulary = model, vocabulary
        self.register_buffer("table", torch.from_numpy(vocabulary.table().copy()), persistent=False)
        self.register_buffer("ids", torch.tensor(vocabulary.ids, dtype=torch.long), persistent=False)
        self.config = copy.deepcopy(model.config)
        self.config.vocab_size = vocabulary.size
        self._vintage_call_spec = call_spec(model)  # the wrapped model's argument names (model_calls)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        out = self.model(input_ids=self.table[input_ids.to(self.table.device)], attention_mask=attention_mask,
                         position_ids=position_ids, **kwargs)
        out.logits = expand_logits(out.logits, self.ids, self.vocabulary.size)
        return out


def load_causal_lm(directory: str | Path, compute: str = "float32", **kwargs):
    """A Hugging Face causal LM directory (safetensors only), in eval mode; a compact surrogate (a
    `vocabulary.json` beside its weights) comes wrapped in `CompactLM`; `compute` (auto, float32, bfloat16): the
    dtype its forward pass runs in (vintage/precision.py; the weights stay as loaded)."""
    from transformers import AutoModelForCausalLM

    from vintage.precision import in_dtype

    model = AutoModelForCausalLM.from_pretrained(str(directory), use_safetensors=True, **kwargs).eval()
    vocabulary = CompactVocabulary.load(directory)
    return in_dtype(model if vocabulary is None else CompactLM(model, vocabulary).eval(), compute)
