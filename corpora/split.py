"""Point-in-time split: validate a corpus, run the leakage filters, date every document, write slices.

    knowledge_date = max(published_at, updated_at, every filter's proposed date)

A document goes, once, into the slice `(c_{k-1}, c_k]` of its knowledge date (cutoffs are whole UTC
days: `2019-12-31` holds everything known by the end of that day). Everything else is written to
`quarantine.parquet` with a reason. Two engines share every per-batch function: `ray` (Ray Data, the
default, the same code on a laptop or a cluster) and `polars` (one process, the baseline of bench/split.py).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from corpora.audit import Audit, build_audit, format_audit, write_audit
from corpora.config import ConfigError, doc
from corpora.files import short_hash
from corpora.filters import Filter, build_filters
from corpora.readers import ROW_COLUMN, RawFile, corpus_files, read_file
from corpora.schema import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA, UTC_TIMESTAMP
from corpora.timeline import slices_of
from corpora.validation import CorpusConfig, _validate_file

DEFAULT_FILTERS = {"revision": {}, "retrospective": {}, "anachronism": {}, "duplicates": {}}
LARGEST_PRINTED = 20  # moves per filter that a dry run prints
SLICE_SCHEMA = pa.schema([
    *DOCUMENT_SCHEMA,
    pa.field("knowledge_date", UTC_TIMESTAMP, nullable=False),
    pa.field("redated_by", pa.list_(pa.string())),  # filters whose proposal set the knowledge date
    pa.field("evidence", pa.string()),
    pa.field("slice", pa.string(), nullable=False),
])


class SplitError(ValueError):
    """The split cannot run as configured; the message names the problem."""


class StaleSplitError(SplitError):
    """The output directory holds another split (other config or input) or an unfinished one."""


@dataclass
class CutoffRule:
    """Calendar cutoffs: every month, quarter or year end between two dates (inclusive)."""

    every: Literal["month", "quarter", "year"] = doc("period whose last day is a cutoff")
    start: dt.datetime = doc("first date considered")
    end: dt.datetime = doc("last date considered")


@dataclass
class SplitConfig:
    """A corpus, its cutoffs and filters, and where the split goes."""

    corpus: CorpusConfig = doc("the corpus to read and validate")
    output: str = doc("output directory (slices/, quarantine.parquet, leakage_report.parquet, manifest.json)")
    cutoffs: list[dt.datetime] | None = doc("explicit cutoff dates, increasing", None)
    cutoff_rule: CutoffRule | None = doc("calendar rule for cutoffs (instead of an explicit list)", None)
    filters: dict[str, Any] = doc("enabled filters in order, each with its parameters", default=DEFAULT_FILTERS)
    engine: Literal["ray", "polars"] = doc("ray (Ray Data) or polars (single process)", "ray")
    batch_size: int = doc("documents per batch in map stages", 4096)
    partitions: int = doc("hash partitions of the corpus-wide passes (ray engine); 0 = 2 x cluster CPUs", 0)
    shuffle: Literal["sort_shuffle_pull_based", "hash_shuffle"] = doc(
        "Ray Data shuffle of the corpus-wide passes: the task-based sort shuffle starts in a fraction of the "
        "hash shuffle's time on small clusters (measured in bench/split.py)", "sort_shuffle_pull_based")
    warn_fraction: float = doc("warn loudly when a filter moves more than this share of the corpus", 0.10)
    warn_shift_years: float = doc("warn loudly when a filter moves any document by more than this many years", 5.0)
    audit_plot: bool = doc("draw audit_shifts.png, the histogram of shifts per filter (about a second)", True)

    def __post_init__(self):
        if (self.cutoffs is None) == (self.cutoff_rule is None):
            raise ValueError("give exactly one of cutoffs (a list of dates) or cutoff_rule")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    def cutoff_dates(self) -> list[dt.date]:
        if self.cutoffs is not None:
            days = [c.date() for c in self.cutoffs]
            for a, b in zip(days, days[1:]):
                if b <= a:
                    raise ConfigError(f"cutoffs must be strictly increasing: {b} follows {a}")
            if not days:
                raise ConfigError("cutoffs: the list is empty")
            return days
        return calendar_cutoffs(self.cutoff_rule.every, self.cutoff_rule.start.date(), self.cutoff_rule.end.date())

    def fingerprint(self) -> str:
        """Hash of everything that changes the output (not where it goes, nor the engine)."""
        data = asdict(self)
        for key in ("output", "engine", "batch_size", "partitions", "shuffle", "warn_fraction", "warn_shift_years",
                    "audit_plot"):
            data.pop(key)
        data["corpus"].pop("path")  # where the input lives is not what it is: input_fingerprint covers that
        data["cutoffs"] = [d.isoformat() for d in self.cutoff_dates()]
        data.pop("cutoff_rule")
        return short_hash(json.dumps(data, sort_keys=True, default=str))


def calendar_cutoffs(every: str, start: dt.date, end: dt.date) -> list[dt.date]:
    months = {"month": 1, "quarter": 3, "year": 12}[every]
    out, year, month = [], start.year, 1
    while True:
        month += 1
        if month > 12:
            year, month = year + 1, 1
        last = dt.date(year, month, 1) - dt.timedelta(days=1)  # last day of the previous month
        if last > end:
            break
        if last >= start and last.month % months == 0:
            out.append(last)
    if not out:
        raise ConfigError(f"cutoff_rule: no {every} end between {start} and {end}")
    return out


# ---------------------------------------------------------------------------------------------------------
# Per-batch functions: the same in both engines.

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
    return pa.concat_tables([good.cast(_nullable(CHECKED_SCHEMA)), bad.cast(_nullable(CHECKED_SCHEMA))])


def _nullable(schema: pa.Schema) -> pa.Schema:
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


def _quarantine_from_checked(table: pa.Table) -> pa.Table:
    return pa.table({"source_file": table["__file"], "row": table["__row"], "doc_id": table["doc_id"],
                     "reason": table["__reason"], "detail": table["__detail"], "original": table["__original"]},
                    schema=QUARANTINE_SCHEMA)


def _quarantine_from_dated(table: pa.Table) -> pa.Table:
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


# ---------------------------------------------------------------------------------------------------------
# Output directory handling: atomic, idempotent.

def input_fingerprint(corpus: CorpusConfig) -> str:
    digest = hashlib.sha256()
    for path, fmt in corpus_files(corpus.path, corpus.format):
        digest.update(f"{os.path.basename(path)}\0{fmt}\0".encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def existing_split(output: Path, config_hash: str, input_hash: str) -> dict | None:
    """The manifest of a finished identical split at `output`; None if there is none; an error if different."""
    manifest_path = output / "manifest.json"
    if not output.exists():
        return None
    if not manifest_path.exists():
        if any(output.iterdir()):
            raise StaleSplitError(f"{output}: exists, is not empty and holds no finished split (no manifest.json); "
                             f"choose another output or remove it")
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("config_hash") != config_hash:
        raise StaleSplitError(f"{output}: holds a split of a different config ({manifest.get('config_hash')} != "
                         f"{config_hash}); choose another output directory")
    if manifest.get("input_fingerprint") != input_hash:
        raise StaleSplitError(f"{output}: holds a split of different input ({manifest.get('input_fingerprint')} != "
                         f"{input_hash}); choose another output directory")
    return manifest


@dataclass
class SplitResult:
    output: Path
    manifest: dict
    skipped: bool  # True when an identical finished split was already there
    audit: Audit | None = None  # what the filters moved (None when skipped)

    def read_slices(self, up_to: str | None = None) -> pa.Table:
        return read_slices(self.output, up_to)


def read_slices(output: str | Path, up_to: str | None = None) -> pa.Table:
    """Documents of every slice (or of vintage `up_to`: all slices <= it), sorted by knowledge date, doc_id."""
    dataset = pads.dataset(Path(output) / "slices", format="parquet", partitioning="hive",
                           schema=SLICE_SCHEMA)
    table = dataset.to_table(filter=(pc.field("slice") <= up_to) if up_to else None)
    return table.sort_by([("knowledge_date", "ascending"), ("doc_id", "ascending")])


def run_split(config: SplitConfig, dry_run: bool = False) -> SplitResult:
    """Run the split unless an identical one is already at `config.output` (then it is a no-op).

    dry_run: run every filter and print the full audit, but write nothing (not even the staging folder stays).
    """
    started = time.perf_counter()
    cutoffs = config.cutoff_dates()
    filters = build_filters(config.filters)
    output = Path(config.output)
    config_hash, input_hash = config.fingerprint(), input_fingerprint(config.corpus)
    done = None if dry_run else existing_split(output, config_hash, input_hash)
    if done is not None:
        print(f"split: {output} already holds this split (config {config_hash}, input {input_hash}); nothing to do")
        return SplitResult(output, done, skipped=True)
    if dry_run:
        import tempfile

        staging = Path(tempfile.mkdtemp(prefix="vintage-split-dry-run-"))
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = output.parent / f".{output.name}.staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    (staging / "slices").mkdir()  # present even when no document falls before the last cutoff
    try:
        engine = _ray_engine if config.engine == "ray" else _polars_engine
        stats, audit = engine(config, filters, cutoffs, staging)
        print(format_audit(audit, largest=LARGEST_PRINTED if dry_run else 0), flush=True)
        for warning in audit.warnings:
            print(warning, file=sys.stderr, flush=True)
        manifest = {
            "config_hash": config_hash,
            "input_fingerprint": input_hash,
            "cutoffs": [c.isoformat() for c in cutoffs],
            "cutoff_semantics": "slice c holds documents with knowledge_date in (previous cutoff, end of day c] UTC",
            "filters": {f.name: asdict(f.params) for f in filters},
            "engine": config.engine,
            "seconds": round(time.perf_counter() - started, 3),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "code_version": _code_version(),
            **stats,
        }
        if dry_run:
            shutil.rmtree(staging, ignore_errors=True)
            return SplitResult(output, {**manifest, "dry_run": True}, skipped=False, audit=audit)
        manifest["audit"] = {"warnings": audit.warnings,
                             "files": sorted(p.name for p in staging.glob("audit*"))}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if output.exists():  # empty directory (checked above)
            output.rmdir()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SplitResult(output, manifest, skipped=False, audit=audit)


def _code_version() -> str:
    try:
        from importlib.metadata import version

        return version("vintage")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


def _summarise(quarantine: pa.Table, slice_counts: dict, redated: dict, filters, rows_read: int, cutoffs) -> dict:
    from collections import Counter

    return {
        "rows_read": rows_read,
        "documents": int(sum(slice_counts.values())),
        "quarantined": dict(sorted(Counter(quarantine["reason"].to_pylist()).items())),
        "redated_by_filter": {f.name: int(redated.get(f.name, 0)) for f in filters},
        "slices": {c.isoformat(): int(slice_counts.get(c.isoformat(), 0)) for c in cutoffs},
    }


def _counts(slices: pa.Table) -> tuple[dict, dict]:
    """Documents per slice, and re-dated documents per filter, of written slice rows."""
    from collections import Counter

    per_slice = Counter(slices["slice"].to_pylist())
    redated = Counter(name for names in slices["redated_by"].to_pylist() for name in (names or []))
    return dict(per_slice), dict(redated)


def _write_outputs(staging: Path, quarantine: pa.Table, acted: pa.Table, filters, config: "SplitConfig",
                   documents: int) -> Audit:
    """quarantine.parquet, leakage_report.parquet and the audit (`acted`: rows a filter re-dated or dropped)."""
    pq.write_table(quarantine, staging / "quarantine.parquet")
    pq.write_table(leakage_report(acted, filters), staging / "leakage_report.parquet")
    audit = build_audit(acted, documents, config.warn_fraction, config.warn_shift_years)
    write_audit(audit, staging, plot=config.audit_plot)
    return audit


# ---------------------------------------------------------------------------------------------------------
# Engines.

def _polars_engine(config: SplitConfig, filters, cutoffs, staging: Path) -> tuple[dict, Audit]:
    stages = _Stages("polars", 3 + sum(f.key is not None for f in filters))
    checked = pa.concat_tables([read_and_validate(u, config.corpus) for u in read_units(config.corpus)])
    valid, quarantine = _resolve_duplicate_ids(checked)
    if valid.num_rows == 0:
        raise SplitError(f"{config.corpus.path}: no valid document after validation: "
                         f"{dict(sorted(_count(quarantine['reason']).items()))}")
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
    quarantine = pa.concat_tables([quarantine, _quarantine_from_dated(dated.filter(pc.invert(kept_mask)))])
    slices = kept.select(SLICE_SCHEMA.names).cast(SLICE_SCHEMA)
    pads.write_dataset(slices, staging / "slices", format="parquet", partitioning=["slice"],
                       partitioning_flavor="hive", basename_template="part-{i}.parquet")
    audit = _write_outputs(staging, quarantine, _acted_on(dated), filters, config, valid.num_rows)
    stages.done("write slices + report", valid.num_rows)
    return {**_summarise(quarantine, *_counts(slices), filters, checked.num_rows, cutoffs), "nodes": 1,
            "stage_seconds": stages.times}, audit


def _count(column) -> dict:
    from collections import Counter

    return Counter(column.to_pylist())


def _resolve_duplicate_ids(checked: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Split checked rows into valid documents and quarantine; a doc_id repeated across units keeps its
    first occurrence (file order, then row)."""
    is_valid = pc.is_null(checked["__reason"])
    valid = checked.filter(is_valid).sort_by([("__file", "ascending"), ("__row", "ascending")])
    quarantine = _quarantine_from_checked(checked.filter(pc.invert(is_valid)))
    import numpy as np

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


class _Stages:
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


class _QuietRayData:
    """Ray Data's INFO lines and progress bars stay in Ray's log files (ray-data.log) during a split;
    warnings and errors still reach the console. The DataContext settings the split needs are restored after,
    so nothing leaks into later Ray Data work in the same process (a backtest)."""

    def __init__(self, **settings):
        self.settings = settings

    def __enter__(self):
        import logging

        import ray.data

        self.context = ray.data.DataContext.get_current()
        self.saved = {k: getattr(self.context, k) for k in self.settings}
        for k, v in self.settings.items():
            setattr(self.context, k, v)
        self.handlers = [(h, h.level) for h in logging.getLogger("ray.data").handlers if h.name == "console"]
        for handler, _ in self.handlers:
            handler.setLevel(logging.WARNING)
            handler.addFilter(_not_our_choice)
        return self.context

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(self.context, k, v)
        for handler, level in self.handlers:
            handler.setLevel(level)
            handler.removeFilter(_not_our_choice)
        return False


def _not_our_choice(record) -> bool:
    """Drop Ray Data's warning that progress bars are off: the split turned them off for its own lines."""
    return "Progress bars disabled" not in record.getMessage()


def _ray_engine(config: SplitConfig, filters, cutoffs, staging: Path) -> tuple[dict, Audit]:
    import ray

    if not ray.is_initialized():
        ray.init(runtime_env={"env_vars": {"POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1"}})
    # Ray Data reserves a share of the cluster per operator; on a 2-CPU node that left one map task running
    # at a time (measured: a pure map stage 7.6 s with 1 or 2 CPUs, 4.3 s at 2 CPUs without reservation).
    # Every stage here is materialised before the next starts, so nothing competes for the reservation.
    with _QuietRayData(shuffle_strategy=config.shuffle, op_resource_reservation_enabled=False,
                       enable_progress_bars=False):
        return _ray_stages(config, filters, cutoffs, staging)


def _ray_stages(config: SplitConfig, filters, cutoffs, staging: Path) -> tuple[dict, Audit]:
    import ray
    import ray.data

    stages = _Stages("ray", 3 + sum(f.key is not None for f in filters))
    units = read_units(config.corpus)
    corpus = config.corpus
    checked = ray.data.from_items(units, override_num_blocks=max(1, len(units))).map_batches(
        _read_validate, fn_kwargs={"corpus": corpus}, batch_size=1, batch_format="pyarrow",
    ).materialize()
    n_units = len(units)
    quarantine = _to_table(checked.map_batches(_where, fn_kwargs={"column": "__reason", "null": False},
                                               batch_format="pyarrow"), CHECKED_SCHEMA)
    quarantine = _quarantine_from_checked(quarantine) if quarantine.num_rows else QUARANTINE_SCHEMA.empty_table()
    valid_ds = checked.map_batches(_where, fn_kwargs={"column": "__reason", "null": True}, batch_format="pyarrow")
    # A doc_id repeated across units: the id column is small enough to check in the driver.
    ids = _to_table(valid_ds.select_columns(["doc_id"]), None)
    if ids.num_rows == 0:
        raise SplitError(f"{corpus.path}: no valid document after validation: "
                         f"{dict(sorted(_count(quarantine['reason']).items()))}")
    repeated_ids = _repeated(ids["doc_id"])
    repeated_rows: set = set()
    if repeated_ids:
        wanted = ray.put(pa.array(sorted(repeated_ids), pa.string()))
        repeated = _to_table(valid_ds.map_batches(_select_ids, fn_kwargs={"wanted": wanted}, batch_format="pyarrow"),
                             CHECKED_SCHEMA)
        kept, extra = _resolve_duplicate_ids(repeated)
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
        quarantine = pa.concat_tables([quarantine, _quarantine_from_dated(rest)])
    # Only what the report needs comes back to the driver: documents a filter acted on, and per-batch counts.
    acted = _to_table(dated_ds.map_batches(_acted_on, batch_format="pyarrow"), None)
    tallies = _to_table(dated_ds.map_batches(_tally, batch_format="pyarrow"), None)
    audit = _write_outputs(staging, quarantine, acted if acted.num_rows else _empty_acted(), filters, config,
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
    return {**_summarise(quarantine, slice_counts, redated, filters, rows_read, cutoffs),
            "nodes": len(nodes), "node_ids": nodes, "stage_seconds": stages.times}, audit


def _acted_on(batch: pa.Table) -> pa.Table:
    """Rows a filter re-dated or dropped (what the leakage report lists)."""
    mask = pc.or_(pc.greater(pc.list_value_length(batch["redated_by"]), 0), pc.is_valid(batch["__drop"]))
    return batch.filter(pc.fill_null(mask, False)).select(ACTED_COLUMNS)


ACTED_COLUMNS = ["doc_id", "published_at", "knowledge_date", "slice", "redated_by", "__drop", "__dropped_by",
                 "evidence"]


def _empty_acted() -> pa.Table:
    return pa.table({"doc_id": pa.array([], pa.string()), "published_at": pa.array([], UTC_TIMESTAMP),
                     "knowledge_date": pa.array([], UTC_TIMESTAMP), "slice": pa.array([], pa.string()),
                     "redated_by": pa.array([], pa.list_(pa.string())), "__drop": pa.array([], pa.string()),
                     "__dropped_by": pa.array([], pa.string()), "evidence": pa.array([], pa.string())})


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
        return _nullable(schema).empty_table() if schema is not None else pa.table({})
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


