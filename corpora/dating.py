"""Per-batch work of a split, the same in both engines: read and validate a unit of input, resolve doc_ids
repeated across units, date every document from the filters' proposals, and turn rejected rows into
quarantine rows.

    knowledge_date = max(published_at, updated_at, every filter's proposed date)
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpora.filters import Filter
from corpora.readers import ROW_COLUMN, RawFile, corpus_files, read_file
from corpora.schema import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA, UTC_TIMESTAMP
from corpora.timeline import slices_of
from corpora.validation import CorpusConfig, _validate_file

SLICE_SCHEMA = pa.schema([
    *DOCUMENT_SCHEMA,
    pa.field("knowledge_date", UTC_TIMESTAMP, nullable=False),
    pa.field("redated_by", pa.list_(pa.string())),  # filters whose proposal set the knowledge date
    pa.field("evidence", pa.string()),
    pa.field("slice", pa.string(), nullable=False),
])


def read_units(corpus: CorpusConfig) -> list[dict]:
    """Units of reading work: one per file, or per parquet row group so that one big file parallelises."""
    units = []
    for path, fmt in corpus_files(corpus.path, corpus.format):
        if fmt == "parquet":
            meta = pq.ParquetFile(path).metadata
            offset = 0
            for group in range(meta.num_row_groups):
                units.append({"path": path, "format": fmt, "row_group": group, "offset": offset})
                offset += meta.row_group(group).num_rows
        else:
            units.append({"path": path, "format": fmt, "row_group": -1, "offset": 0})
    return units


CHECKED_SCHEMA = pa.schema([*DOCUMENT_SCHEMA, pa.field("__file", pa.string()), pa.field("__row", pa.int64()),
                            pa.field("__reason", pa.string()), pa.field("__detail", pa.string()),
                            pa.field("__original", pa.string())])


def read_and_validate(unit: dict, corpus: CorpusConfig) -> pa.Table:
    """One unit → valid documents and quarantined rows in one table (`__reason` null for valid rows)."""
    if unit["row_group"] >= 0:
        table = pq.ParquetFile(unit["path"]).read_row_group(unit["row_group"])
        start = unit["offset"]
        raw = RawFile(unit["path"], table.append_column(ROW_COLUMN, pa.array(range(start, start + table.num_rows),
                                                                              pa.int64())))
    else:
        raw = read_file(unit["path"], unit["format"])
    documents, quarantine = _validate_file(raw, corpus)
    n = documents.num_rows
    good = documents.drop_columns(["__row", "__file"]).cast(DOCUMENT_SCHEMA)
    good = pa.table({**{f.name: good[f.name] for f in DOCUMENT_SCHEMA},
                     "__file": documents["__file"], "__row": documents["__row"],
                     "__reason": pa.nulls(n, pa.string()), "__detail": pa.nulls(n, pa.string()),
                     "__original": pa.nulls(n, pa.string())}, schema=CHECKED_SCHEMA)
    m = quarantine.num_rows
    bad = pa.table({"doc_id": quarantine["doc_id"], "published_at": pa.nulls(m, UTC_TIMESTAMP),
                    "text": pa.nulls(m, pa.string()), "updated_at": pa.nulls(m, UTC_TIMESTAMP),
                    "source": pa.nulls(m, pa.string()), "entities": pa.nulls(m, pa.list_(pa.string())),
                    "__file": quarantine["source_file"], "__row": quarantine["row"], "__reason": quarantine["reason"],
                    "__detail": quarantine["detail"], "__original": quarantine["original"]})
    # published_at/text are non-nullable in DOCUMENT_SCHEMA; quarantined rows carry nulls there
    return pa.concat_tables([good.cast(nullable(CHECKED_SCHEMA)), bad.cast(nullable(CHECKED_SCHEMA))])


def nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


def apply_filters(batch: pa.Table, filters: list[Filter], contexts: dict[str, Any], cutoffs: list[dt.date]) -> pa.Table:
    """Knowledge date, drop reason and slice for every valid document of `batch`."""
    best = batch["published_at"].to_pylist()
    redated_by: list[list[str]] = [[] for _ in best]
    evidence: list[str | None] = [None] * len(best)
    drop: list[str | None] = [None] * len(best)
    drop_evidence: list[str | None] = [None] * len(best)
    dropped_by: list[str | None] = [None] * len(best)
    for f in filters:
        proposal = f.apply(batch, contexts.get(f.name))
        for i, (date, reason, why) in enumerate(zip(proposal["date"].to_pylist(), proposal["drop"].to_pylist(),
                                                    proposal["evidence"].to_pylist())):
            if reason is not None and drop[i] is None:
                drop[i], dropped_by[i] = reason, f.name
                drop_evidence[i] = evidence[i] = f"{f.name}: {why}" if why else f.name
            if date is not None and date > best[i]:  # only ever later
                best[i] = date
                redated_by[i].append(f.name)
                evidence[i] = f"{f.name}: {why}" if why else f.name
    # The contract's own rule, whether or not the revision filter is enabled: a revision is knowledge.
    for i, updated in enumerate(batch["updated_at"].to_pylist()):
        if updated is not None and updated > best[i]:
            best[i] = updated
            redated_by[i].append("updated_at")
    slices = slices_of(best, cutoffs)
    out = batch.select([f.name for f in DOCUMENT_SCHEMA])
    return out.append_column("knowledge_date", pa.array(best, UTC_TIMESTAMP)) \
        .append_column("redated_by", pa.array(redated_by, pa.list_(pa.string()))) \
        .append_column("evidence", pa.array(evidence, pa.string())) \
        .append_column("slice", pa.array(slices, pa.string())) \
        .append_column("__drop", pa.array(drop, pa.string())) \
        .append_column("__dropped_by", pa.array(dropped_by, pa.string())) \
        .append_column("__drop_evidence", pa.array(drop_evidence, pa.string())) \
        .append_column("__file", batch["__file"]).append_column("__row", batch["__row"])


def quarantine_from_checked(table: pa.Table) -> pa.Table:
    return pa.table({"source_file": table["__file"], "row": table["__row"], "doc_id": table["doc_id"],
                     "reason": table["__reason"], "detail": table["__detail"], "original": table["__original"]},
                    schema=QUARANTINE_SCHEMA)


def quarantine_from_dated(table: pa.Table) -> pa.Table:
    """Documents a filter dropped, or dated after the last cutoff: quarantined with the original fields."""
    reasons, details, originals = [], [], []
    for row in table.to_pylist():
        if row["__drop"] is not None:
            reasons.append(row["__drop"])
            details.append(row["__drop_evidence"])
        else:
            reasons.append("after_last_cutoff")
            details.append(f"knowledge_date {row['knowledge_date'].isoformat()} is after the last cutoff")
        originals.append(json.dumps({f.name: row[f.name] for f in DOCUMENT_SCHEMA}, default=str, ensure_ascii=False))
    return pa.table({"source_file": table["__file"], "row": table["__row"], "doc_id": table["doc_id"],
                     "reason": pa.array(reasons, pa.string()), "detail": pa.array(details, pa.string()),
                     "original": pa.array(originals, pa.string())}, schema=QUARANTINE_SCHEMA)


def count_values(column) -> dict:
    return Counter(column.to_pylist())


def resolve_duplicate_ids(checked: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Split checked rows into valid documents and quarantine; a doc_id repeated across units keeps its
    first occurrence (file order, then row)."""
    is_valid = pc.is_null(checked["__reason"])
    valid = checked.filter(is_valid).sort_by([("__file", "ascending"), ("__row", "ascending")])
    quarantine = quarantine_from_checked(checked.filter(pc.invert(is_valid)))
    ids = valid["doc_id"].to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    keep = np.zeros(len(ids), dtype=bool)
    keep[first] = True
    if keep.all():
        return valid, quarantine
    repeated = valid.filter(pa.array(~keep))
    extra = pa.table({"source_file": repeated["__file"], "row": repeated["__row"], "doc_id": repeated["doc_id"],
                      "reason": pa.array(["duplicate_doc_id"] * repeated.num_rows, pa.string()),
                      "detail": pa.array([f"doc_id: {d!r} appeared earlier" for d in repeated["doc_id"].to_pylist()],
                                         pa.string()),
                      "original": pa.array([json.dumps({k: v for k, v in r.items() if not k.startswith("__")},
                                                       default=str) for r in repeated.to_pylist()], pa.string())},
                     schema=QUARANTINE_SCHEMA)
    return valid.filter(pa.array(keep)), pa.concat_tables([quarantine, extra])
