"""What every embedded world produces, and how it is written and summarised.

A world is a dated corpus with its ground truth: `documents` (the corpus, Document schema, no labels),
`queries` (forecast and fact queries), `events` (what really happened) and `leaks` (every planted leak and
non-leak with its kind and true knowledge date), plus `world.json` describing how it was made.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpora.schema import DOCUMENT_SCHEMA, QUERY_SCHEMA, UTC_TIMESTAMP, conform

LEAK_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # misdated, revised, retrospective_mention, ...
        pa.field("expected", pa.string(), nullable=False),  # what a filter should do: redate, drop, keep
        pa.field("true_knowledge_date", UTC_TIMESTAMP, nullable=False),
        pa.field("event_id", pa.string()),
        pa.field("original_doc_id", pa.string()),  # the earlier copy, for duplicates
        pa.field("detail", pa.string()),
    ]
)

# Splitting text into word and punctuation tokens: an honest stand-in for a token count before any
# tokenizer exists (a BPE trained on these worlds gives a similar count; GPT-2's gives more).
WORD_TOKEN_PATTERN = r"\w+|[^\w\s]"


@dataclass
class World:
    name: str
    preset: str
    seed: int
    documents: pa.Table
    queries: pa.Table
    events: pa.Table
    leaks: pa.Table
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.documents = conform(self.documents, DOCUMENT_SCHEMA, f"{self.name} documents")
        self.queries = conform(self.queries, QUERY_SCHEMA, f"{self.name} queries")
        self.leaks = conform(self.leaks, LEAK_SCHEMA, f"{self.name} leaks")

    def word_tokens(self) -> int:
        return int(pc.sum(pc.count_substring_regex(self.documents["text"], WORD_TOKEN_PATTERN)).as_py() or 0)

    def summary(self) -> dict:
        published = self.documents["published_at"]
        return {
            "world": self.name,
            "preset": self.preset,
            "seed": self.seed,
            "documents": self.documents.num_rows,
            "word_tokens": self.word_tokens(),
            "first_published": pc.min(published).as_py().date().isoformat(),
            "last_published": pc.max(published).as_py().date().isoformat(),
            "events": self.events.num_rows,
            "queries": dict(sorted(Counter(self.queries["kind"].to_pylist()).items())),
            "leaks": dict(sorted(Counter(self.leaks["kind"].to_pylist()).items())),
        }

    def write(self, out: str | Path) -> Path:
        """Write the tables and world.json into `out` atomically (a temp dir renamed into place)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        for name in ("documents", "queries", "events", "leaks"):
            pq.write_table(getattr(self, name), staging / f"{name}.parquet")
        info = {**self.info, **self.summary()}
        (staging / "world.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        if out.exists():
            backup = out.with_name(f".{out.name}.old")
            os.replace(out, backup)
            os.replace(staging, out)
            _rmtree(backup)
        else:
            os.replace(staging, out)
        return out


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def read_world(path: str | Path) -> World:
    path = Path(path)
    if not (path / "world.json").exists():
        raise FileNotFoundError(f"{path}: not a world directory (no world.json); make one with `vintage world`")
    info = json.loads((path / "world.json").read_text())
    tables = {name: pq.read_table(path / f"{name}.parquet") for name in ("documents", "queries", "events", "leaks")}
    return World(info["world"], info["preset"], info["seed"], info=info, **tables)


def utc(day: dt.date, hour: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.timezone.utc)


def long_date(day: dt.date) -> str:
    """"October 24, 2018": the form news text uses, and the retrospective-mention filter reads."""
    return f"{day:%B} {day.day}, {day.year}"
