"""anachronism: a document that uses a term before the corpus first corroborates that term exists.

Corpus-wide pass: per term (the document's `entities`, or capitalised words where a document has none),
its first trusted appearance is the earliest mention followed by `min_support - 1` more within
`window_days`; terms seen in fewer than `min_mentions` documents are ignored so that rare words are not
noise. A document that names a term more than `tolerance_days` before that date moves to it. Terms seen
within `burn_in_days` of the corpus start are trusted from the start: a corpus cannot tell when what it
already talks about on day one first appeared.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from corpora.config import doc
from corpora.filters import Filter, proposals, register, trusted_first_appearance
from corpora.schema import UTC_TIMESTAMP

_CORPUS = "\x00corpus"  # reserved term: every document mentions it
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+(?:[A-Z][a-z]+)*\b")


@dataclass
class Params:
    """What counts as a term, and how much evidence makes its first appearance trusted."""

    terms: Literal["entities", "capitalized", "both"] = doc(
        "entities: the entities column (capitalised words where it is null); capitalized: words; both", "entities")
    min_support: int = doc("mentions within window_days that make a first appearance trusted", 3)
    window_days: float = doc("corroboration window, days", 14.0)
    min_mentions: int = doc("terms with fewer mentions in the whole corpus are ignored", 5)
    tolerance_days: float = doc("a use this many days before the first trusted appearance is not an anachronism", 1.0)
    burn_in_days: float = doc("terms first mentioned this close to the corpus start are trusted from the start", 90.0)

    def __post_init__(self):
        if self.min_support < 1 or self.min_mentions < 1 or min(self.window_days, self.tolerance_days,
                                                                self.burn_in_days) < 0:
            raise ValueError("min_support and min_mentions must be >= 1; window, tolerance and burn-in days >= 0")


def _first_mention(observations: pa.Table, terms: pa.ChunkedArray) -> list:
    import polars as pl

    firsts = pl.from_arrow(observations).group_by("term").agg(pl.col("date").min())
    lookup = dict(zip(firsts["term"].to_list(), firsts["date"].to_list()))
    return [lookup[t] for t in terms.to_pylist()]


@register("anachronism")
class Anachronism(Filter):
    Params = Params
    key = "term"

    def _terms(self, batch: pa.Table) -> list[set[str]]:
        mode = self.params.terms
        entities = batch["entities"].to_pylist() if "entities" in batch.column_names else [None] * batch.num_rows
        out = []
        for text, ents in zip(batch["text"].to_pylist(), entities):
            terms = set(ents or ())
            if mode == "capitalized" or mode == "both" or (mode == "entities" and ents is None):
                terms |= set(_CAPITALISED.findall(text))
            out.append(terms)
        return out

    def observe(self, batch: pa.Table) -> pa.Table:
        terms, dates = [], []
        for row_terms, published in zip(self._terms(batch), batch["published_at"].to_pylist()):
            terms.extend(row_terms)
            dates.extend([published] * len(row_terms))
        # One row per document under a reserved term, so that finalize knows when the corpus starts.
        terms.extend([_CORPUS] * batch.num_rows)
        dates.extend(batch["published_at"].to_pylist())
        return pa.table({"term": pa.array(terms, pa.string()), "date": pa.array(dates, UTC_TIMESTAMP)})

    def reduce(self, observations: pa.Table) -> pa.Table:
        window = dt.timedelta(days=self.params.window_days)
        trusted = trusted_first_appearance(observations, "term", self.params.min_support, window)
        seen = _first_mention(observations, trusted["term"])
        return trusted.append_column("seen", pa.array(seen, UTC_TIMESTAMP))

    def finalize(self, reduced: pa.Table) -> dict[str, dt.datetime]:
        corpus = reduced.filter(pc.equal(reduced["term"], _CORPUS))
        if corpus.num_rows == 0:
            return {}
        start = corpus["seen"][0].as_py()
        keep = pc.and_(pc.is_valid(reduced["first"]), pc.greater_equal(reduced["mentions"], self.params.min_mentions))
        reduced = reduced.filter(pc.and_(keep, pc.not_equal(reduced["term"], _CORPUS)))
        burn_in_end = start + dt.timedelta(days=self.params.burn_in_days)
        return {term: first for term, first, seen in zip(reduced["term"].to_pylist(), reduced["first"].to_pylist(),
                                                         reduced["seen"].to_pylist()) if seen > burn_in_end}

    def apply(self, batch: pa.Table, context: dict[str, dt.datetime]) -> pa.Table:
        tolerance = dt.timedelta(days=self.params.tolerance_days)
        dates, evidence = [], []
        for row_terms, published in zip(self._terms(batch), batch["published_at"].to_pylist()):
            best, why = None, None
            for term in row_terms:
                first = context.get(term)
                if first is not None and first > published + tolerance and (best is None or first > best):
                    best, why = first, f"names {term!r}, first corroborated on {first.date()}"
            dates.append(best)
            evidence.append(why)
        return proposals(dates, evidence=evidence)

