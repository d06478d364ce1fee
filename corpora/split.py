"""Point-in-time split: validate a corpus, run the leakage filters, date every document, write slices.

A document goes, once, into the slice `(c_{k-1}, c_k]` of its knowledge date (cutoffs are whole UTC
days: `2019-12-31` holds everything known by the end of that day; corpora/timeline.py). Everything else is
written to `quarantine.parquet` with a reason. This module owns the output directory (atomic, idempotent: an
identical finished split is a no-op) and the manifest; the engines that do the work are `ray` (Ray Data, the
default, corpora/split_ray.py) and `polars` (one process, corpora/split_polars.py), over the per-batch
functions of corpora/dating.py.
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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from corpora.audit import Audit, format_audit
from corpora.dating import SLICE_SCHEMA
from corpora.filters import build_filters
from corpora.readers import corpus_files
from corpora.split_config import (DEFAULT_FILTERS, CutoffRule, SplitConfig, SplitError, StaleSplitError,
                                  calendar_cutoffs)
from corpora.split_polars import polars_engine
from corpora.split_ray import ray_engine
from corpora.validation import CorpusConfig

__all__ = ["DEFAULT_FILTERS", "CutoffRule", "SplitConfig", "SplitError", "StaleSplitError", "SplitResult",
           "calendar_cutoffs", "read_slices", "run_split"]
ENGINES = {"ray": ray_engine, "polars": polars_engine}
LARGEST_PRINTED = 20  # moves per filter that a dry run prints


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
        engine = ENGINES[config.engine]
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
