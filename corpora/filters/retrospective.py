"""retrospective: past-tense mentions of dated events that happened after the document's own date.

Two kinds of evidence move the knowledge date:
- an explicit date later than `published_at` that its sentence places in the past: a reporting or outcome
  verb or a retrospective adverb ("reported", "beat", "announced", "later", "subsequently") and no
  forward-looking cue, neither in the sentence ("will", "expects", "plans", "scheduled", "postpone", ...) nor
  just before the date ("until", "by", "before", "for", "from", ...). Dates are found by `corpora.prose`
  (day-month-year and month-year forms, read by dateutil); year-only numbers are never dates here, since
  prose is full of numbers that look like years. The sentence is quoted as evidence;
- a reported result of a period ("X 2021q3 results, which beat", "Q3 2021 results: beat") before the
  corpus first corroborates that result (`min_support` mentions within `window_days`, a corpus-wide pass: an
  event is reported when it happens, so this window is in days whatever the corpus's density).
Forward-looking sentences ("expects 2021 revenue to grow", "will report on March 3, 2021", "postponed until
January 1, 1838") move nothing: in a clean corpus every later date is a plan, a deadline or a forecast.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from corpora.config import doc
from corpora.filters import Filter, proposals, register, trusted_first_appearance
from corpora.prose import dates_in, has_date, quoted, sentences
from corpora.schema import UTC_TIMESTAMP

# The sentence reports something that happened: reporting and outcome verbs, retrospective adverbs.
_PAST = re.compile(r"\b(reported|announced|beat|missed|rose|fell|posted|closed|recalled|revisited|released|"
                   r"disclosed|confirmed|occurred|happened|took place|ended|later|subsequently|afterwards|"
                   r"since then|looking back|in retrospect)\b", re.I)
# The sentence looks ahead: modals, intentions, schedules, forecasts.
_FUTURE = re.compile(r"\b(will|would|shall|should|(?-i:may)|might|expects?|expected|expecting|anticipates?|"
                     r"anticipated|plans?|planned|planning|intends?|intended|aims?|hopes?|proposes?|proposed|"
                     r"scheduled|schedule|due|deadline|postpones?|postponed|postponing|defers?|deferred|delays?|"
                     r"delayed|guidance|forecasts?|projected|projects|outlook|upcoming|forthcoming|next|"
                     r"is to|are to|ahead of|in advance of|set for|set to|effective|pending|intention|estimated|"
                     r"takes? effect)\b|'ll\b", re.I)
# Words just before a date that make it a deadline, a start or a period's end, not an event: "until January 1";
# or an infinitive shortly before it ("to terminate such arrangement on January 1").
_BEFORE_DATE = re.compile(r"\b(until|till|by|before|for|from|through|starting|beginning|commencing|ending|"
                          r"as of|no later than|not later than|on or before|on or after)\s+(?:the\s+)?$"
                          r"|\bto\s+[a-z]+\b[^.;]*$", re.I)
_PERIOD = r"(?:\d{4}\s?[qQ][1-4]|[qQ][1-4] \d{4})"
_ENTITY = r"[A-Z][A-Za-z&]+"
_RESULT_PATTERNS = [re.compile(p) for p in (
    rf"(?P<e>{_ENTITY}) (?P<p>{_PERIOD}) results(?::|,? which| that| -)\s*(?:beat|miss|missed)\b",
    rf"(?P<e>{_ENTITY}) reported (?P<p>{_PERIOD}) (?:earnings|results) that (?:beat|missed)\b",
    rf"\bIn (?P<p>{_PERIOD}), (?P<e>{_ENTITY}) (?:beat|missed)\b",
    rf"\bThe (?P<p>{_PERIOD}) report from (?P<e>{_ENTITY}) (?:beat|missed)\b",
    rf"(?P<e>{_ENTITY}) (?:beat|missed) (?:\w+ )?(?:estimates|forecasts|expectations|the consensus) "
    rf"(?:in|for) (?P<p>{_PERIOD})",
    rf"(?P<e>{_ENTITY}) shares (?:rose|fell) [\d.]+% after (?P<p>{_PERIOD}) results",
    rf"(?P<p>{_PERIOD}): (?P<e>{_ENTITY}) (?:beat|missed)\b",
)]


@dataclass
class Params:
    """How sure the corpus must be of when a result became public."""

    min_support: int = doc("mentions needed within window_days to trust a result's first report date", 2)
    window_days: float = doc("corroboration window, days", 3.0)
    tolerance_days: float = doc("explicit dates up to this many days after publication are not moved to", 0.0)

    def __post_init__(self):
        if self.min_support < 1 or self.window_days < 0 or self.tolerance_days < 0:
            raise ValueError("min_support must be >= 1, window_days and tolerance_days >= 0")


def _period_key(entity: str, period: str) -> str:
    period = period.lower().replace(" ", "")
    if period.startswith("q"):  # q3 2021 → 2021q3
        period = f"{period[2:]}{period[:2]}"
    return f"{entity.lower()}|{period}"


def result_mentions(text: str) -> set[str]:
    return {_period_key(m["e"], m["p"]) for pattern in _RESULT_PATTERNS for m in pattern.finditer(text)}


def explicit_past_dates(text: str) -> list[tuple[dt.datetime, str]]:
    """Dates that their sentence places in the past (see the module docstring), with the sentence."""
    found = []
    if not _PAST.search(text) or not has_date(text):
        return found  # most documents: no past-tense cue or no date at all
    for sentence in sentences(text):
        if not _PAST.search(sentence) or _FUTURE.search(sentence):
            continue
        for day, start, _ in dates_in(sentence):
            if _BEFORE_DATE.search(sentence[max(0, start - 40):start]):
                continue
            found.append((dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc), sentence))
    return found


@register("retrospective")
class Retrospective(Filter):
    Params = Params
    key = "event"

    def observe(self, batch: pa.Table) -> pa.Table:
        events, dates = [], []
        for text, published in zip(batch["text"].to_pylist(), batch["published_at"].to_pylist()):
            for key in result_mentions(text):
                events.append(key)
                dates.append(published)
        return pa.table({"event": pa.array(events, pa.string()), "date": pa.array(dates, UTC_TIMESTAMP)})

    def reduce(self, observations: pa.Table) -> pa.Table:
        window = dt.timedelta(days=self.params.window_days)
        return trusted_first_appearance(observations, "event", self.params.min_support, window)

    def finalize(self, reduced: pa.Table) -> dict[str, dt.datetime]:
        reduced = reduced.filter(pc.is_valid(reduced["first"]))
        return dict(zip(reduced["event"].to_pylist(), reduced["first"].to_pylist()))

    def apply(self, batch: pa.Table, context: dict[str, dt.datetime]) -> pa.Table:
        tolerance = dt.timedelta(days=self.params.tolerance_days)
        dates, evidence = [], []
        for text, published in zip(batch["text"].to_pylist(), batch["published_at"].to_pylist()):
            best, why = None, None
            for day, sentence in explicit_past_dates(text):
                # A date on the day of publication is the document's own day, not a later event.
                if day.date() > published.date() and day > published + tolerance and (best is None or day > best):
                    best, why = day, f"mentions {day.date()} in the past tense: {quoted(sentence, 200)}"
            for key in result_mentions(text):
                first = context.get(key)
                if first is not None and first > published and (best is None or first > best):
                    best, why = first, f"reports the result {key} first corroborated on {first.date()}"
            dates.append(best)
            evidence.append(why)
        return proposals(dates, evidence=evidence)
