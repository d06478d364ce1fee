"""Reading real prose: sentences, the names a text uses, and the dates it mentions.

The leakage filters share these rules so that they agree on what a sentence, a name and a date are. They are
deliberately conservative: a word that might be a common word is not a name, a span that might not be a date
is not a date. A filter that misses a leak costs recall; one that moves a clean document by decades costs
every vintage after it.
"""
from __future__ import annotations

import datetime as dt
import functools
import re

from dateutil import parser as date_parser

# A sentence ends at . ! ? (with closing quotes or brackets) before whitespace, or at a line break.
_TOKENS = re.compile(r"(?P<end>[.!?]+[\"'\u2019\u201d)\]]*(?=\s|$)|\n)|(?P<word>[^\W\d_]+)")
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u2019\u201d)\]]))\s+|\n")

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
# Capitalised by convention, not names: calendar words and titles. Anything else a corpus also writes in
# lower case is excluded corpus-wide by the anachronism filter (it sees every lower-case use).
NOT_NAMES = frozenset(
    MONTHS + ("Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec",
              "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
              "Mr", "Mrs", "Ms", "Miss", "Dr", "Sir", "Madam", "Messrs", "Hon", "Jr", "Sr",
              "President", "Vice", "Secretary", "Senator", "Representative", "Governor", "General", "Judge",
              "Justice", "Chairman", "Chairwoman", "Chief", "Minister", "Prime", "King", "Queen", "Prince",
              "Princess", "Lord", "Lady", "Captain", "Colonel", "Major", "Admiral", "Lieutenant", "Sergeant",
              "Professor", "Reverend", "Saint", "St", "Esq"))


def sentences(text: str) -> list[str]:
    """The text's sentences, stripped; line breaks end a sentence (headings, list items)."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text) if s.strip()]


def quoted(sentence: str, limit: int) -> str:
    """A sentence as evidence: in double quotes, cut to `limit` characters (an ellipsis says where)."""
    return f'"{sentence[:limit]}{"…" if len(sentence) > limit else ""}"'


def names_and_lower_words(text: str) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]], set[str]]:
    """(names, sentence-initial names, lower-case words) of a text.

    A name is a run of adjacent capitalised words (`McKinley`, `Saudi Arabia`, `Viet-Nam`; not ALL CAPS, not a
    calendar word or title), returned as its words so that one name counts once however many words it has. A
    run that starts a sentence is returned apart ("Velamora reported", but also "Meanwhile" and "The Board"):
    it is a name only where the corpus also writes it capitalised inside a sentence, which one text cannot
    tell; its words after the first are a name of their own ("The Velamora plant": `Velamora`). Lower-case
    words are returned so that a corpus-wide pass can drop every name whose words the corpus also writes in
    lower case (`Department`, `Act`, `United States`).
    """
    names, initial_names, lower = set(), set(), set()
    run: list[str] = []
    run_initial = False
    initial = True
    last_end = -1

    def flush():
        if run_initial:
            initial_names.add(tuple(run))
            if len(run) > 1:
                names.add(tuple(run[1:]))
        else:
            names.add(tuple(run))

    for m in _TOKENS.finditer(text):
        word = m.group("word")
        adjacent = last_end >= 0 and text[last_end:m.start()] in (" ", "-")
        if run and (word is None or not adjacent or not _capitalised(word) or word in NOT_NAMES):
            flush()
            run = []
        if word is None:
            initial = True
            last_end = -1
            continue
        if word.islower():
            lower.add(word)
        elif _capitalised(word) and word not in NOT_NAMES:
            if not run:
                run_initial = initial
            run.append(word)
        initial = False
        last_end = m.end()
    if run:
        flush()
    return names, initial_names, lower


def _capitalised(word: str) -> bool:
    return len(word) > 1 and word[0].isupper() and not word.isupper()


# Dates with at least a month and a year, in the forms prose uses; the span is then read by dateutil.
_MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?|" \
         r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
_DATE_SPAN = re.compile(
    rf"\b(?:{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"  # March 3, 2021 / Mar. 3rd 2021
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}"  # 3 March 2021 / 3rd of March, 2021
    rf"|{_MONTH},?\s+\d{{4}}"  # March 2021 (the first of the month: the earliest day it can mean)
    rf"|\d{{4}}-\d{{2}}-\d{{2}})(?![\d-])")  # 2021-03-03
_FIRST_OF_MONTH = dt.datetime(2000, 1, 1)


def has_date(text: str) -> bool:
    """Whether the text holds anything `dates_in` could read (a cheap test before splitting sentences)."""
    return _DATE_SPAN.search(text) is not None


def dates_in(sentence: str) -> list[tuple[dt.date, int, int]]:
    """(date, start, end) of every full date (day, month and year; or month and year) in a sentence.

    A month without a day reads as its first day: the earliest day it can mean, so a knowledge date moved to
    it is never later than the text allows. Spans dateutil cannot read (`February 30, 2021`) are skipped.
    """
    found = []
    for m in _DATE_SPAN.finditer(sentence):
        day = _parse(m.group(0).replace(" of ", " "))
        if day is not None:
            found.append((day, m.start(), m.end()))
    return found


@functools.lru_cache(maxsize=65_536)
def _parse(span: str) -> dt.date | None:
    try:
        return date_parser.parse(span, default=_FIRST_OF_MONTH).date()
    except (ValueError, OverflowError):
        return None
