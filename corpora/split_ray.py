"""The Ray Data engine of the split (the default): the same per-batch functions as the polars engine, as Ray
Data tasks, so that one config runs on a laptop or a cluster. Corpus-wide filter passes are hash-partitioned
on the filter's key and reduced per partition."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from corpora.audit import Audit
from corpora.dating import CHECKED_SCHEMA, SLICE_SCHEMA, apply_filters, count_values, nullable, \
    quarantine_from_checked, quarantine_from_dated, read_and_validate, read_units, resolve_duplicate_ids
from corpora.filters import Filter
from corpora.schema import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA
from corpora.split_config import SplitConfig, SplitError
from corpora.quiet_ray_data import QuietRayData
from corpora.split_report import Stages, acted_on, empty_acted, summarise, write_outputs
from corpora.validation import CorpusConfig


def ray_engine(config: SplitConfig, filters, cutoffs, staging: Path) -> tuple[dict, Audit]:
    import ray

    if not ray.is_initialized():
        ray.init(runtime_env={"env_vars": {"POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1"}})
    # Ray Data reserves a share of the cluster per operator; on a 2-CPU node that left one map task running
    # at a time (measured: a pure map stage 7.6 s with 1 or 2 CPUs, 4.3 s at 2 CPUs without reservation).
    # Every stage here is materialised before the next starts, so nothing competes for the reservation.
    with QuietRayData(shuffle_strategy=config.shuffle, op_resource_reservation_enabled=False,
                       enable_progress_bars=False):
        return _ray_stages(config, filters, cutoffs, staging)


def _ray_stages(config: SplitConfig, filters, cutoffs, staging: Path) -> tuple[dict, Audit]:
    import ray
    import ray.data

    stages = Stages("ray", 3 + sum(f.key is not None for f in filters))
    units = read_units(config.corpus)
    corpus = config.corpus
    checked = ray.data.from_items(units, override_num_blocks=max(1, len(units))).map_batches(
        _read_validate, fn_kwargs={"corpus": corpus}, batch_size=1, batch_format="pyarrow",
    ).materialize()
    n_units = len(units)
    quarantine = _to_table(checked.map_batches(_where, fn_kwargs={"column": "__reason", "null": False},
                                               batch_format="pyarrow"), CHECKED_SCHEMA)
    quarantine = quarantine_from_checked(quarantine) if quarantine.num_rows else QUARANTINE_SCHEMA.empty_table()
    valid_ds = checked.map_batches(_where, fn_kwargs={"column": "__reason", "null": True}, batch_format="pyarrow")
    # A doc_id repeated across units: the id column is small enough to check in the driver.
    ids = _to_table(valid_ds.select_columns(["doc_id"]), None)
    if ids.num_rows == 0:
        raise SplitError(f"{corpus.path}: no valid document after validation: "
                         f"{dict(sorted(count_values(quarantine['reason']).items()))}")
    repeated_ids = _repeated(ids["doc_id"])
    repeated_rows: set = set()
    if repeated_ids:
        wanted = ray.put(pa.array(sorted(repeated_ids), pa.string()))
        repeated = _to_table(valid_ds.map_batches(_select_ids, fn_kwargs={"wanted": wanted}, batch_format="pyarrow"),
                             CHECKED_SCHEMA)
        kept, extra = resolve_duplicate_ids(repeated)
        keep = set(zip(kept["__file"].to_pylist(), kept["__row"].to_pylist()))
        repeated_rows = set(zip(repeated["__file"].to_pylist(), repeated["__row"].to_pylist())) - keep
        valid_ds = valid_ds.filter(lambda r: (r["__file"], r["__row"]) not in repeated_rows)
        quarantine = pa.concat_tables([quarantine, extra])
    valid_ds = valid_ds.repartition(target_num_rows_per_block=config.batch_size).materialize()
    rows_read = checked.count()  # every input row: valid or quarantined by validation
    valid_docs = ids.num_rows - len(repeated_rows)
    stages.done("read + validate + unique ids", rows_read, f"{n_units} units, {valid_docs:,} valid documents")

    # Corpus-wide passes: each filter's observations are hash-partitioned on its key, so that every
    # partition holds whole key groups, and reduced there by the filter (one Ray Data groupby per filter).
    partitions = config.partitions or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    contexts = {}

    for f in filters:
        if f.key is None:
            continue
        reduced = valid_ds.map_batches(_observe, fn_kwargs={"f": f, "partitions": partitions},
                                       batch_format="pyarrow") \
            .groupby("__part", num_partitions=partitions).map_groups(_reduce, fn_kwargs={"f": f},
                                                                      batch_format="pyarrow")
        parts = [t for t in ray.get(reduced.to_arrow_refs()) if t.num_rows]
        table = pa.concat_tables(parts) if parts else f.reduce(f.observe(_empty_batch()))
        contexts[f.name] = f.finalize(table)
        stages.done(f"{f.name}: corpus pass", valid_docs, f"{table.num_rows:,} reduced rows")
    contexts_ref = ray.put(contexts)
    dated_ds = valid_ds.map_batches(
        _apply_task, fn_kwargs={"filters": filters, "contexts_ref": contexts_ref, "cutoffs": cutoffs},
        batch_size=config.batch_size, batch_format="pyarrow",
    ).materialize()
    stages.done("apply filters", valid_docs)
    dated_ds.map_batches(_where_kept, fn_kwargs={"keep": True}, batch_format="pyarrow").write_parquet(
        str(staging / "slices"), partition_cols=["slice"])
    rest = _to_table(dated_ds.map_batches(_where_kept, fn_kwargs={"keep": False}, batch_format="pyarrow"), None)
    if rest.num_rows:
        quarantine = pa.concat_tables([quarantine, quarantine_from_dated(rest)])
    # Only what the report needs comes back to the driver: documents a filter acted on, and per-batch counts.
    acted = _to_table(dated_ds.map_batches(acted_on, batch_format="pyarrow"), None)
    tallies = _to_table(dated_ds.map_batches(_tally, batch_format="pyarrow"), None)
    audit = write_outputs(staging, quarantine, acted if acted.num_rows else empty_acted(), filters, config,
                           valid_docs)
    stages.done("write slices + report", valid_docs)
    slice_counts, redated, nodes = {}, {}, set()
    for kind, key, count in zip(tallies["kind"].to_pylist(), tallies["key"].to_pylist(), tallies["count"].to_pylist()):
        if kind == "node":
            nodes.add(key)
        else:
            target = slice_counts if kind == "slice" else redated
            target[key] = target.get(key, 0) + count
    nodes = sorted(nodes)
    return {**summarise(quarantine, slice_counts, redated, filters, rows_read, cutoffs),
            "nodes": len(nodes), "node_ids": nodes, "stage_seconds": stages.times}, audit


def _tally(batch: pa.Table) -> pa.Table:
    """Per batch: documents per slice and re-dated per filter among written rows, and the nodes involved."""
    kept = batch.filter(pc.and_(pc.is_null(batch["__drop"]), pc.is_valid(batch["slice"])))
    kinds, keys, counts = [], [], []
    for entry in pc.value_counts(kept["slice"]).to_pylist():
        kinds.append("slice"), keys.append(entry["values"]), counts.append(entry["counts"])
    flat = pc.list_flatten(kept["redated_by"])
    if len(flat):
        for entry in pc.value_counts(flat).to_pylist():
            kinds.append("redated"), keys.append(entry["values"]), counts.append(entry["counts"])
    for node in set(batch["__node"].unique().to_pylist()) | set(batch["__read_node"].unique().to_pylist()):
        kinds.append("node"), keys.append(node), counts.append(0)
    return pa.table({"kind": pa.array(kinds, pa.string()), "key": pa.array(keys, pa.string()),
                     "count": pa.array(counts, pa.int64())})


def _repeated(ids: pa.ChunkedArray) -> list[str]:
    counts = pc.value_counts(ids).flatten()  # hash-based, in C++: fast on a million ids
    return counts[0].filter(pc.greater(counts[1], 1)).to_pylist()


def _empty_batch() -> pa.Table:
    return pa.table({**{f.name: pa.array([], f.type) for f in DOCUMENT_SCHEMA}})


def _observe(batch: pa.Table, f: Filter, partitions: int) -> pa.Table:
    import polars as pl

    observations = f.observe(batch)
    if observations.num_rows == 0:
        return observations.append_column("__part", pa.array([], pa.int64()))
    parts = pl.from_arrow(observations[f.key]).hash(seed=0) % partitions
    return observations.append_column("__part", parts.to_arrow().cast(pa.int64()))


def _reduce(group: pa.Table, f: Filter) -> pa.Table:
    return f.reduce(group.drop_columns(["__part"]))


# A per-worker cache keyed by the contexts' object ref (so it never serves another split's contexts), not a
# callable class: Ray Data's actor pool made one split of the tiny world 5.6 s slower on 2 CPUs (11.2 -> 16.8 s,
# test_ray_engine_equals_polars_engine), and a plain task would deserialize the contexts once per batch.
_CONTEXTS: dict = {}


def _apply_task(batch: pa.Table, filters, contexts_ref, cutoffs) -> pa.Table:
    """Ray Data task: dates a batch; the filters' contexts are fetched once per worker process."""
    import ray

    key = contexts_ref.hex()
    if key not in _CONTEXTS:
        _CONTEXTS.clear()
        _CONTEXTS[key] = ray.get(contexts_ref)
    out = apply_filters(batch, filters, _CONTEXTS[key], cutoffs)
    return out.append_column("__node", pa.array([_node_id()] * out.num_rows, pa.string())) \
        .append_column("__read_node", batch["__node"])


def _where_kept(batch: pa.Table, keep: bool) -> pa.Table:
    mask = pc.and_(pc.is_null(batch["__drop"]), pc.is_valid(batch["slice"]))
    batch = batch.filter(mask if keep else pc.invert(mask))
    return batch.select(SLICE_SCHEMA.names).cast(SLICE_SCHEMA) if keep else batch


def _to_table(ds, schema: pa.Schema | None) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return nullable(schema).empty_table() if schema is not None else pa.table({})
    table = pa.concat_tables(tables, promote_options="permissive")
    return table


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _read_validate(units: pa.Table, corpus: CorpusConfig) -> pa.Table:
    """Ray Data task: units of files in, checked rows out (tagged with the node that did the work)."""
    table = pa.concat_tables([read_and_validate(unit, corpus) for unit in units.to_pylist()])
    return table.append_column("__node", pa.array([_node_id()] * table.num_rows, pa.string()))


def _where(batch: pa.Table, column: str, null: bool) -> pa.Table:
    return batch.filter(pc.is_null(batch[column]) if null else pc.is_valid(batch[column]))


def _select_ids(batch: pa.Table, wanted) -> pa.Table:
    import ray

    ids = ray.get(wanted) if isinstance(wanted, ray.ObjectRef) else wanted
    return batch.filter(pc.is_in(batch["doc_id"], ids)).drop_columns(
        [c for c in ("__node",) if c in batch.column_names])


