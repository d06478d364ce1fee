"""The polars engine of the split: one process, every stage in memory (the baseline of bench/split.py)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from corpora.audit import Audit
from corpora.dating import SLICE_SCHEMA, apply_filters, count_values, quarantine_from_dated, read_and_validate, \
    read_units, resolve_duplicate_ids
from corpora.split_config import SplitConfig, SplitError
from corpora.split_report import Stages, acted_on, counts_of, summarise, write_outputs


def polars_engine(config: SplitConfig, filters, cutoffs, staging: Path) -> tuple[dict, Audit]:
    stages = Stages("polars", 3 + sum(f.key is not None for f in filters))
    checked = pa.concat_tables([read_and_validate(u, config.corpus) for u in read_units(config.corpus)])
    valid, quarantine = resolve_duplicate_ids(checked)
    if valid.num_rows == 0:
        raise SplitError(f"{config.corpus.path}: no valid document after validation: "
                         f"{dict(sorted(count_values(quarantine['reason']).items()))}")
    stages.done("read + validate", checked.num_rows, f"{valid.num_rows:,} valid documents")
    batches = [valid.slice(i, config.batch_size) for i in range(0, valid.num_rows, config.batch_size)]
    contexts = {}
    for f in filters:
        if f.key is None:
            continue
        observations = pa.concat_tables([f.observe(b) for b in batches])
        reduced = f.reduce(observations)
        contexts[f.name] = f.finalize(reduced)
        stages.done(f"{f.name}: corpus pass", valid.num_rows)
    dated = pa.concat_tables([apply_filters(b, filters, contexts, cutoffs) for b in batches])
    stages.done("apply filters", valid.num_rows)
    kept_mask = pc.and_(pc.is_null(dated["__drop"]), pc.is_valid(dated["slice"]))
    kept = dated.filter(kept_mask)
    quarantine = pa.concat_tables([quarantine, quarantine_from_dated(dated.filter(pc.invert(kept_mask)))])
    slices = kept.select(SLICE_SCHEMA.names).cast(SLICE_SCHEMA)
    pads.write_dataset(slices, staging / "slices", format="parquet", partitioning=["slice"],
                       partitioning_flavor="hive", basename_template="part-{i}.parquet")
    audit = write_outputs(staging, quarantine, acted_on(dated), filters, config, valid.num_rows)
    stages.done("write slices + report", valid.num_rows)
    return {**summarise(quarantine, *counts_of(slices), filters, checked.num_rows, cutoffs), "nodes": 1,
            "stage_seconds": stages.times}, audit
