"""The held-out documents of a run: never trained on by any of its models (neural or n-gram), so
validation loss, temperature fits and effective-cutoff probes read text the models did not see."""
from __future__ import annotations

import hashlib
from typing import Iterable

import pyarrow as pa


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

    config = registry.manifest["config"]
    docs = pl.from_arrow(read_slices(config["split"]).select(["doc_id", "knowledge_date", "text"]))
    every = int(config.get("holdout_every", 20))
    return docs.filter(pl.Series(holdout_mask(docs["doc_id"].to_list(), every)))
