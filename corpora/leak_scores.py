"""Precision and recall of the leakage filters against a world's planted leaks.

A planted leak that should be re-dated counts as caught when its final knowledge date is at least its
true knowledge date (or it was dropped); one that should be dropped, when it was dropped. A filter's
precision is the share of the documents it acted on that were planted leaks of an action it is meant
for. Forward-looking statements are planted non-leaks: any that was re-dated is a false positive.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from corpora.split import read_slices


def score_split(split_dir: str | Path, leaks) -> dict:
    """`leaks`: the world's leaks table. Returns {"by_kind": DataFrame, "by_filter": DataFrame}."""
    slices = pl.from_arrow(read_slices(split_dir).select(["doc_id", "knowledge_date", "redated_by"]))
    quarantine = pl.from_arrow(pq.read_table(Path(split_dir) / "quarantine.parquet").select(["doc_id", "reason",
                                                                                             "detail"]))
    labels = pl.from_arrow(leaks.select(["doc_id", "kind", "expected", "true_knowledge_date"]))
    dropped = quarantine.filter(pl.col("detail").str.starts_with("duplicates:")).select(
        "doc_id", pl.lit(True).alias("dropped"))
    joined = labels.join(slices, on="doc_id", how="left").join(dropped, on="doc_id", how="left").with_columns(
        pl.col("dropped").fill_null(False),
        pl.col("redated_by").list.len().fill_null(0).gt(0).alias("redated"),
    )
    caught = (
        pl.when(pl.col("expected") == "drop").then(pl.col("dropped"))
        .when(pl.col("expected") == "redate").then(
            pl.col("dropped") | (pl.col("knowledge_date") >= pl.col("true_knowledge_date")).fill_null(False))
        .otherwise(~pl.col("redated") & ~pl.col("dropped"))  # keep: left alone
    )
    by_kind = joined.with_columns(caught.alias("caught")).group_by(["kind", "expected"]).agg(
        pl.len().alias("planted"), pl.col("caught").sum().alias("handled"),
    ).with_columns((pl.col("handled") / pl.col("planted")).alias("recall")).sort("kind")

    acted = pl.concat([
        slices.explode("redated_by").drop_nulls("redated_by").select("doc_id", pl.col("redated_by").alias("filter"),
                                                                      pl.lit("redate").alias("action")),
        dropped.select("doc_id", pl.lit("duplicates").alias("filter"), pl.lit("drop").alias("action")),
    ]).unique()
    acted = acted.join(labels.select("doc_id", "kind", "expected"), on="doc_id", how="left")
    by_filter = acted.group_by(["filter", "action"]).agg(
        pl.len().alias("acted_on"),
        (pl.col("expected") == pl.col("action")).fill_null(False).sum().alias("true_positives"),
        pl.col("kind").drop_nulls().unique().sort().alias("kinds_hit"),
    ).with_columns((pl.col("true_positives") / pl.col("acted_on")).alias("precision")).sort("filter")
    return {"by_kind": by_kind, "by_filter": by_filter}
