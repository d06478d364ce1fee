"""What a split reports: the leakage report (per filter and slice, documents re-dated and dropped), the
rows a filter acted on (all that the report and the audit need), the manifest's counts, and one progress line
per stage."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpora.audit import Audit, build_audit, write_audit
from corpora.filters import Filter
from corpora.schema import UTC_TIMESTAMP
from corpora.split_config import SplitConfig

def leakage_report(dated: pa.Table, filters: list[Filter], examples: int = 5) -> pa.Table:
    """Per filter and slice: documents re-dated and dropped, with example ids."""
    import polars as pl

    frame = pl.from_arrow(dated.select(["doc_id", "slice", "redated_by", "__dropped_by"]))
    rows = []
    for f in filters:
        redated = frame.filter(pl.col("redated_by").list.contains(f.name)).with_columns(pl.lit("redated").alias("action"))
        dropped = frame.filter(pl.col("__dropped_by") == f.name).with_columns(pl.lit("dropped").alias("action"))
        for part in (redated, dropped):
            if part.height == 0:
                continue
            part = part.with_columns(pl.col("slice").fill_null("after_last_cutoff"))
            grouped = part.sort("doc_id").group_by(["slice", "action"]).agg(
                pl.len().alias("documents"), pl.col("doc_id").head(examples).alias("example_ids"))
            for r in grouped.iter_rows(named=True):
                rows.append({"filter": f.name, **r})
    schema = pa.schema([("filter", pa.string()), ("slice", pa.string()), ("action", pa.string()),
                        ("documents", pa.int64()), ("example_ids", pa.list_(pa.string()))])
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.sort_by([("filter", "ascending"), ("slice", "ascending"), ("action", "ascending")])


def acted_on(batch: pa.Table) -> pa.Table:
    """Rows a filter re-dated or dropped (what the leakage report lists)."""
    mask = pc.or_(pc.greater(pc.list_value_length(batch["redated_by"]), 0), pc.is_valid(batch["__drop"]))
    return batch.filter(pc.fill_null(mask, False)).select(ACTED_COLUMNS)


ACTED_COLUMNS = ["doc_id", "published_at", "knowledge_date", "slice", "redated_by", "__drop", "__dropped_by",
                 "evidence"]


def empty_acted() -> pa.Table:
    return pa.table({"doc_id": pa.array([], pa.string()), "published_at": pa.array([], UTC_TIMESTAMP),
                     "knowledge_date": pa.array([], UTC_TIMESTAMP), "slice": pa.array([], pa.string()),
                     "redated_by": pa.array([], pa.list_(pa.string())), "__drop": pa.array([], pa.string()),
                     "__dropped_by": pa.array([], pa.string()), "evidence": pa.array([], pa.string())})


def summarise(quarantine: pa.Table, slice_counts: dict, redated: dict, filters, rows_read: int, cutoffs) -> dict:
    return {
        "rows_read": rows_read,
        "documents": int(sum(slice_counts.values())),
        "quarantined": dict(sorted(Counter(quarantine["reason"].to_pylist()).items())),
        "redated_by_filter": {f.name: int(redated.get(f.name, 0)) for f in filters},
        "slices": {c.isoformat(): int(slice_counts.get(c.isoformat(), 0)) for c in cutoffs},
    }


def counts_of(slices: pa.Table) -> tuple[dict, dict]:
    """Documents per slice, and re-dated documents per filter, of written slice rows."""
    per_slice = Counter(slices["slice"].to_pylist())
    redated = Counter(name for names in slices["redated_by"].to_pylist() for name in (names or []))
    return dict(per_slice), dict(redated)


def write_outputs(staging: Path, quarantine: pa.Table, acted: pa.Table, filters, config: SplitConfig,
                   documents: int) -> Audit:
    """quarantine.parquet, leakage_report.parquet and the audit (`acted`: rows a filter re-dated or dropped)."""
    pq.write_table(quarantine, staging / "quarantine.parquet")
    pq.write_table(leakage_report(acted, filters), staging / "leakage_report.parquet")
    audit = build_audit(acted, documents, config.warn_fraction, config.warn_shift_years)
    write_audit(audit, staging, plot=config.audit_plot)
    return audit


class Stages:
    """One progress line per stage of a split: its wall time, documents per second, and a rough ETA (the mean
    stage time so far times the stages left)."""

    def __init__(self, engine: str, total: int):
        self.engine, self.total, self.last, self.times = engine, total, time.perf_counter(), {}

    def done(self, name: str, documents: int, detail: str = "") -> None:
        now = time.perf_counter()
        took = now - self.last
        self.times[name] = round(took, 3)
        k = len(self.times)
        left = max(self.total - k, 0)
        eta = f"eta ~{sum(self.times.values()) / k * left:.0f} s" if left else "done"
        rate = f"{documents / took:,.0f} docs/s" if took > 0 else ""
        print(f"[split:{self.engine}] {k}/{self.total} {name:<26} {took:6.1f} s {rate:>14}  {eta:<12} {detail}",
              flush=True)
        self.last = now
