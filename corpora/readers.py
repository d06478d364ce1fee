"""Read a user's corpus (parquet, JSONL or CSV, one file or many) into raw Arrow tables.

Readers keep the user's own column names and values untouched (text stays bytes where the file format
allows, so invalid UTF-8 can be quarantined rather than crash the reader); `validation` maps and checks
them. A line the reader itself cannot parse becomes a rejected row, never a silent skip.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

ROW_COLUMN = "__row"  # 0-based row or line number inside its file, added by every reader
FORMATS = ("parquet", "jsonl", "csv")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
             ".csv": "csv"}


class CorpusReadError(ValueError):
    """The corpus path or its format is unusable; the message names the path."""


@dataclass
class RawFile:
    path: str
    table: pa.Table  # the user's columns plus ROW_COLUMN
    rejected: list[dict] = field(default_factory=list)  # {row, reason, detail, original} the reader could not parse


def corpus_files(path: str | Path, fmt: str = "auto") -> list[tuple[str, str]]:
    """The (file, format) pairs a corpus path names: a file, a directory (recursively) or a glob."""
    path = str(path)
    if any(ch in path for ch in "*?["):
        candidates = sorted(glob.glob(path, recursive=True))
    elif os.path.isdir(path):
        candidates = sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    elif os.path.isfile(path):
        candidates = [path]
    else:
        raise CorpusReadError(f"{path}: no such file or directory")
    out = []
    for candidate in candidates:
        detected = _SUFFIXES.get(Path(candidate).suffix.lower())
        if fmt != "auto":
            if detected is None and len(candidates) > 1:
                continue  # a directory may hold other files (_SUCCESS, README); an explicit single file may not
            out.append((candidate, fmt))
        elif detected is not None:
            out.append((candidate, detected))
        elif len(candidates) == 1:
            raise CorpusReadError(
                f"{candidate}: cannot tell the format from the suffix; set format to one of {FORMATS}"
            )
    if not out:
        raise CorpusReadError(f"{path}: no corpus files ({', '.join(sorted(_SUFFIXES))}) found")
    return out


def read_file(path: str, fmt: str) -> RawFile:
    if fmt == "parquet":
        table = pq.read_table(path)
    elif fmt == "csv":
        return _read_csv(path)
    elif fmt == "jsonl":
        return _read_jsonl(path)
    else:
        raise CorpusReadError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS}")
    return RawFile(path, table.append_column(ROW_COLUMN, pa.array(range(table.num_rows), pa.int64())))


def _read_csv(path: str) -> RawFile:
    # Every column as bytes: pyarrow would otherwise refuse the whole file over one invalid UTF-8 cell,
    # and would guess types (a doc_id "007" becoming 7) that validation should decide instead.
    with open(path, "rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace")
    names = next(csv.reader([header]), [])
    if not names:
        raise CorpusReadError(f"{path}: empty CSV file (no header row)")
    try:
        table = pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.binary() for name in names}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as err:
        raise CorpusReadError(f"{path}: not a readable CSV file: {err}") from err
    return RawFile(path, table.append_column(ROW_COLUMN, pa.array(range(table.num_rows), pa.int64())))


def _read_jsonl(path: str) -> RawFile:
    records, rows, rejected = [], [], []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                rejected.append(dict(row=line_number, reason="invalid_utf8", detail=f"line {line_number + 1}: {err}",
                                     original=raw.decode("utf-8", errors="backslashreplace").rstrip("\n")))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                rejected.append(dict(row=line_number, reason="unparseable_row",
                                     detail=f"line {line_number + 1}: not JSON: {err.msg}", original=line.rstrip("\n")))
                continue
            if not isinstance(record, dict):
                rejected.append(dict(row=line_number, reason="unparseable_row",
                                     detail=f"line {line_number + 1}: expected a JSON object, got {type(record).__name__}",
                                     original=line.rstrip("\n")))
                continue
            records.append(record)
            rows.append(line_number)
    # Values keep their JSON types; mixed types in a column (a date as string in one row and number in
    # another) are stringified so that one odd row cannot fail the whole file.
    names = sorted({key for record in records for key in record})
    columns = {}
    for name in names:
        values = [record.get(name) for record in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else json.dumps(v) if not isinstance(v, str) else v
                                      for v in values], pa.string())
    columns[ROW_COLUMN] = pa.array(rows, pa.int64())
    return RawFile(path, pa.table(columns), rejected)
