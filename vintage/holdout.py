"""The held-out documents of a run: never trained on by any of its models (neural or n-gram), so
validation loss, temperature fits and effective-cutoff probes read text the models did not see."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import pyarrow as pa

HOLDOUT_EVERY = 20  # one document in this many is held out, unless a training config says otherwise


def is_holdout(doc_id: str, every: int) -> bool:
    """One document in `every` (by a hash of its id: stable across runs, splits and machines)."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % every == 0


def holdout_mask(doc_ids: Iterable[str], every: int) -> pa.BooleanArray:
    """`is_holdout` of each id, as an Arrow mask (for `Table.filter`, or `pl.Series`)."""
    return pa.array([is_holdout(d, every) for d in doc_ids], pa.bool_())


def heldout_documents(registry):
    """The held-out documents (doc_id, knowledge_date, text; polars) of the split `registry` was trained on."""
    import polars as pl

    from corpora.split import read_slices

    docs = pl.from_arrow(read_slices(registry.manifest["config"]["split"]).select(["doc_id", "knowledge_date", "text"]))
    return docs.filter(pl.Series(holdout_mask(docs["doc_id"].to_list(), registry.holdout_every or HOLDOUT_EVERY)))


def registry_holdout(registry_dir: str | Path, asked: int | None = None) -> int:
    """The hold-out a registry's models were trained with (its manifest's training config), for the work that
    reads the same split after training (n-gram counts, temperature fits): a different one would count or fit on
    documents the models were validated on. `asked` (a command-line value) must agree with it; without a trained
    manifest (counting into a registry that holds only a tokenizer) it is `asked`, else the default."""
    from vintage.registry import Registry

    path = Path(registry_dir) / "manifest.json"
    trained = Registry(registry_dir).holdout_every if path.exists() else None
    if trained is not None and asked is not None and int(asked) != trained:
        raise ValueError(f"{path}: the models were trained holding out one document in {trained}; --holdout-every "
                         f"{asked} would count or fit on documents they were validated on (leave it unset)")
    return trained if trained is not None else int(asked) if asked is not None else HOLDOUT_EVERY
