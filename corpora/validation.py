"""Map a user's columns onto the Document schema and quarantine every row that breaks the contract.

Each bad row lands in the quarantine table with one reason (the first that applies, in REASONS order), a
detail naming the field and the value, and the original row as JSON. A corpus with no valid row at all is
an error, not an empty result.
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpora.config import doc
from corpora.readers import ROW_COLUMN, RawFile, corpus_files, read_file
from corpora.schema import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA, UTC_TIMESTAMP, SchemaError

# In the order they are checked: a row gets the first that applies.
REASONS = (
    "unparseable_row",  # the reader could not parse the line (JSONL)
    "invalid_utf8",  # text (or the whole line) is not valid UTF-8
    "missing_doc_id",
    "missing_date",  # published_at null or blank
    "unparseable_date",  # published_at or updated_at not a date
    "naive_timestamp",  # no timezone, and naive_timestamps: reject
    "too_early",  # before `earliest`
    "after_corpus_end",  # published_at or updated_at after `corpus_end`
    "empty_text",  # empty or whitespace only
    "duplicate_doc_id",  # a valid row with this doc_id came first; that one is kept
)


class CorpusValidationError(ValueError):
    """No row of the corpus survived validation; the message gives the counts per reason."""


@dataclass
class ColumnMapping:
    """Which of the user's columns holds each Document field (a user's corpus never uses our names)."""

    doc_id: str = doc("column with a unique document id", "doc_id")
    published_at: str = doc("column with the publication timestamp", "published_at")
    text: str = doc("column with the document text", "text")
    updated_at: str | None = doc("column with the last-revision timestamp, if any", "updated_at")
    source: str | None = doc("column naming the publisher or feed, if any", "source")
    entities: str | None = doc("column with entity names (a list, or a string split on entities_separator)",
                               "entities")


@dataclass
class CorpusConfig:
    """Where a corpus is and how to read and validate it."""

    path: str = doc("a file, a directory of files, or a glob")
    format: Literal["auto", "parquet", "jsonl", "csv"] = doc("file format; auto uses the suffix", "auto")
    columns: ColumnMapping = doc("column mapping", default=None)
    naive_timestamps: Literal["assume_utc", "reject"] = doc(
        "timestamps without a timezone: read them as UTC, or quarantine them", "reject")
    date_format: str | None = doc("strptime format for string dates; ISO 8601 when unset", None)
    earliest: dt.datetime | None = doc(
        "dates before this are quarantined as too_early; unset (the default) keeps every date, since a "
        "historical corpus is valid", None)
    corpus_end: dt.datetime | None = doc("dates after this are quarantined (the corpus cannot know them)", None)
    entities_separator: str = doc("separator of entity names held in one string", "|")

    def __post_init__(self):
        if self.columns is None:
            self.columns = ColumnMapping()


@dataclass
class ValidatedCorpus:
    documents: pa.Table  # DOCUMENT_SCHEMA
    quarantine: pa.Table  # QUARANTINE_SCHEMA
    rows_read: int

    def summary(self) -> str:
        counts = Counter(self.quarantine["reason"].to_pylist())
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(counts.items())) or "none"
        return f"{self.rows_read} rows read, {self.documents.num_rows} valid, quarantined: {reasons}"


def load_corpus(config: CorpusConfig) -> ValidatedCorpus:
    """Read every file of the corpus, validate it, and raise if nothing valid remains."""
    files = [read_file(path, fmt) for path, fmt in corpus_files(config.path, config.format)]
    return validate(files, config)


def validate(files: list[RawFile], config: CorpusConfig) -> ValidatedCorpus:
    documents, quarantines, rows_read = [], [], 0
    for raw in files:
        docs, bad = _validate_file(raw, config)
        documents.append(docs)
        quarantines.append(bad)
        rows_read += raw.table.num_rows + len(raw.rejected)
    documents = pa.concat_tables(documents)
    quarantine = pa.concat_tables(quarantines)
    # doc_id must be unique across files too: the first file (sorted order) wins.
    documents, cross_file = _drop_duplicate_ids(documents, files)
    quarantine = pa.concat_tables([quarantine, cross_file])
    result = ValidatedCorpus(documents, quarantine, rows_read)
    if documents.num_rows == 0:
        hint = ""
        if "naive_timestamp" in quarantine["reason"].to_pylist():
            hint = " (timestamps without a timezone are rejected: set naive_timestamps: assume_utc to read them as UTC)"
        raise CorpusValidationError(
            f"{config.path}: every row is bad, nothing to use: {result.summary()}{hint}")
    return result


def _column(raw: RawFile, name: str | None, field: str, required: bool) -> pa.ChunkedArray | None:
    if name is not None and name in raw.table.column_names:
        return raw.table[name]
    if required:
        raise SchemaError(f"{raw.path}: no column {name!r} for field {field!r}; columns are "
                          f"{[c for c in raw.table.column_names if c != ROW_COLUMN]} (set columns.{field})")
    return None


def _decode(values: list, bad: np.ndarray, reasons: np.ndarray, details: np.ndarray, field: str) -> list:
    """Bytes to str; rows with invalid UTF-8 get reason invalid_utf8."""
    out = []
    for i, value in enumerate(values):
        if isinstance(value, (bytes, bytearray)):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                _mark(i, "invalid_utf8", f"{field}: {err}", bad, reasons, details)
                value = None
        out.append(value)
    return out


def _mark(i: int, reason: str, detail: str, bad, reasons, details) -> None:
    if not bad[i] or REASONS.index(reason) < REASONS.index(reasons[i]):
        bad[i], reasons[i], details[i] = True, reason, detail


def _parse_dates(column: pa.ChunkedArray, field: str, config: CorpusConfig, required: bool,
                 bad, reasons, details) -> list:
    """A column of timestamps, dates or strings → aware UTC datetimes (None where missing or bad)."""
    kind = column.type
    n = len(column)
    if pa.types.is_timestamp(kind):
        if kind.tz is not None:
            values = column.cast(UTC_TIMESTAMP).to_pylist()
            for i, v in enumerate(values):
                if v is None and required:
                    _mark(i, "missing_date", f"{field}: null", bad, reasons, details)
            return values
        naive = column.cast(pa.timestamp("us")).to_pylist()
        strings = [None if v is None else v.isoformat() for v in naive]
    elif pa.types.is_date(kind):
        strings = [None if v is None else v.isoformat() for v in column.to_pylist()]
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        strings = _decode(column.to_pylist(), bad, reasons, details, field)
    else:
        strings = [None if v is None else str(v) for v in column.to_pylist()]
    out: list = [None] * n
    cache: dict[str, dt.datetime | str] = {}
    for i, text in enumerate(strings):
        if text is None or not str(text).strip():
            if required:
                _mark(i, "missing_date", f"{field}: {'null' if text is None else repr(text)}", bad, reasons, details)
            continue
        parsed = cache.get(text)
        if parsed is None:
            parsed = cache[text] = _parse_one(text.strip(), config.date_format)
        if isinstance(parsed, str):
            _mark(i, "unparseable_date", f"{field}: {text!r} ({parsed})", bad, reasons, details)
        elif parsed.tzinfo is None:
            if config.naive_timestamps == "reject":
                _mark(i, "naive_timestamp", f"{field}: {text!r} has no timezone (naive_timestamps: reject)",
                      bad, reasons, details)
            else:
                out[i] = parsed.replace(tzinfo=dt.timezone.utc)
        else:
            out[i] = parsed.astimezone(dt.timezone.utc)
    return out


def _parse_one(text: str, date_format: str | None) -> dt.datetime | str:
    try:
        if date_format:
            return dt.datetime.strptime(text, date_format)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        return value
    except (ValueError, OverflowError) as err:
        return f"expected {date_format or 'ISO 8601, e.g. 2019-03-31T16:00:00+00:00'}: {err}"


def _validate_file(raw: RawFile, config: CorpusConfig) -> tuple[pa.Table, pa.Table]:
    cols = config.columns
    table = raw.table
    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    details = np.full(n, "", dtype=object)

    ids = _column(raw, cols.doc_id, "doc_id", True)
    ids = _decode(ids.to_pylist(), bad, reasons, details, "doc_id")
    ids = [None if v is None else str(v).strip() for v in ids]
    for i, v in enumerate(ids):
        if not v:
            _mark(i, "missing_doc_id", f"doc_id: {v!r}", bad, reasons, details)

    text = _decode(_column(raw, cols.text, "text", True).to_pylist(), bad, reasons, details, "text")
    text_array = pa.array([t if isinstance(t, str) else None for t in text], pa.string())
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text_array)), 0), True)
    for i in np.flatnonzero(blank.to_numpy(zero_copy_only=False)):
        if text[i] is not None or not bad[i]:
            _mark(int(i), "empty_text", f"text: {text[i]!r}", bad, reasons, details)

    published = _parse_dates(_column(raw, cols.published_at, "published_at", True), "published_at",
                             config, True, bad, reasons, details)
    updated_col = _column(raw, cols.updated_at, "updated_at", False)
    updated = (_parse_dates(updated_col, "updated_at", config, False, bad, reasons, details)
               if updated_col is not None else [None] * n)
    for i in range(n):
        for field, value in (("published_at", published[i]), ("updated_at", updated[i])):
            if value is None:
                continue
            if config.earliest is not None and value < config.earliest:
                _mark(i, "too_early", f"{field}: {value.isoformat()} is before earliest "
                      f"{config.earliest.isoformat()} (lower corpus.earliest, or remove it, to keep such rows)",
                      bad, reasons, details)
            elif config.corpus_end is not None and value > config.corpus_end:
                _mark(i, "after_corpus_end", f"{field}: {value.isoformat()} is after corpus_end "
                      f"{config.corpus_end.isoformat()}", bad, reasons, details)

    # Duplicates among rows that are otherwise valid: the first valid copy is kept.
    seen: set[str] = set()
    for i in range(n):
        if bad[i]:
            continue
        if ids[i] in seen:
            _mark(i, "duplicate_doc_id", f"doc_id: {ids[i]!r} appeared on an earlier row", bad, reasons, details)
        seen.add(ids[i])

    good = ~bad
    source_col = _column(raw, cols.source, "source", False)
    entities_col = _column(raw, cols.entities, "entities", False)
    documents = pa.table(
        {
            "doc_id": pa.array([v for v, g in zip(ids, good) if g], pa.string()),
            "published_at": pa.array([v for v, g in zip(published, good) if g], UTC_TIMESTAMP),
            "text": pa.array([v for v, g in zip(text, good) if g], pa.string()),
            "updated_at": pa.array([v for v, g in zip(updated, good) if g], UTC_TIMESTAMP),
            "source": _optional_strings(source_col, good, n),
            "entities": _entities(entities_col, good, n, config.entities_separator),
        },
        schema=DOCUMENT_SCHEMA,
    )
    # Origin of each valid document, for cross-file duplicate checks.
    documents = documents.append_column("__row", table[ROW_COLUMN].filter(pa.array(good)))

    bad_rows = np.flatnonzero(bad)
    originals = table.drop_columns([ROW_COLUMN]).take(pa.array(bad_rows, pa.int64())).to_pylist()
    row_numbers = table[ROW_COLUMN].to_pylist()
    records = [
        dict(source_file=raw.path, row=row_numbers[i], doc_id=ids[i], reason=reasons[i], detail=details[i],
             original=json.dumps(original, default=_json_default, ensure_ascii=False))
        for i, original in zip(bad_rows, originals)
    ]
    records += [dict(source_file=raw.path, doc_id=None, **r) for r in raw.rejected]
    quarantine = pa.Table.from_pylist(records, schema=QUARANTINE_SCHEMA)
    return documents.append_column("__file", pa.array([raw.path] * documents.num_rows, pa.string())), quarantine


def _drop_duplicate_ids(documents: pa.Table, files: list[RawFile]) -> tuple[pa.Table, pa.Table]:
    ids = documents["doc_id"].to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    keep = np.zeros(len(ids), dtype=bool)
    keep[first] = True
    dropped = documents.filter(pa.array(~keep))
    records = [
        dict(source_file=row["__file"], row=row["__row"], doc_id=row["doc_id"], reason="duplicate_doc_id",
             detail=f"doc_id: {row['doc_id']!r} appeared in an earlier file",
             original=json.dumps({k: v for k, v in row.items() if not k.startswith("__")}, default=_json_default))
        for row in dropped.to_pylist()
    ]
    kept = documents.filter(pa.array(keep)).drop_columns(["__row", "__file"])
    return kept, pa.Table.from_pylist(records, schema=QUARANTINE_SCHEMA)


def _optional_strings(column, good, n) -> pa.Array:
    if column is None:
        return pa.nulls(int(good.sum()), pa.string())
    values = [None if v is None else (v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v))
              for v in column.to_pylist()]
    return pa.array([v for v, g in zip(values, good) if g], pa.string())


def _entities(column, good, n, separator: str) -> pa.Array:
    if column is None:
        return pa.nulls(int(good.sum()), pa.list_(pa.string()))
    out = []
    for value, g in zip(column.to_pylist(), good):
        if not g:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if value is None:
            out.append(None)
        elif isinstance(value, str):
            out.append([e.strip() for e in value.split(separator) if e.strip()])
        else:
            out.append([str(e) for e in value])
    return pa.array(out, pa.list_(pa.string()))


def _json_default(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)
