"""World `synthetic-market`: fictional companies, quarterly beat/miss events, planted leaks. Deterministic.

Each company-quarter has an outcome (beat or miss, a coin flip so that a company's base rate says
nothing) and a price move. A preview published days before the report carries a signal that agrees with
the outcome with probability `signal_accuracy`: the accuracy a leak-free forecaster can reach. Reports
repeat each fact in a few fixed templates (one canonical `"<Company> <2018q3> results: beat."` line among
them) so that a small model memorises individual events in minutes on a CPU; retrospectives published
later mention earlier outcomes; filler carries no facts. Leaks are planted and labelled (`leaks` table).
"""
from __future__ import annotations

import datetime as dt
import random
from dataclasses import asdict, dataclass, replace

import pyarrow as pa

from corpora.schema import UTC_TIMESTAMP
from corpora.worlds.base import World, long_date

EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000


@dataclass(frozen=True)
class SyntheticMarketPreset:
    companies: int  # fictional companies; names are unique made-up words
    quarters: int  # consecutive calendar quarters from start_year Q1
    start_year: int
    reports_per_event: int  # reports right after each outcome (>= 1; the first is the canonical template)
    retrospectives_per_event: int  # later documents recalling an outcome (legitimately dated)
    filler_per_quarter: int  # fact-free market chatter per quarter
    signal_accuracy: float = 0.7  # P(preview signal == outcome): the achievable leak-free accuracy
    late_listed_fraction: float = 0.25  # companies that list mid-calendar (targets of anachronisms)
    misdated_rate: float = 0.03  # per event: a report dated before the outcome was public
    revised_rate: float = 0.03  # per event: a preview later amended with the outcome (updated_at set)
    retrospective_mention_rate: float = 0.03  # per event: an earlier-dated text recalling the outcome
    anachronisms_per_late_company: int = 2  # texts naming a company before it was listed
    exact_duplicate_rate: float = 0.02  # per report: a verbatim syndicated copy, published later
    near_duplicate_rate: float = 0.02  # per report: a lightly edited copy, published later
    forward_looking_rate: float = 0.05  # per event: guidance about a later year (NOT a leak)
    longform: bool = False  # documents of several paragraphs of real-looking prose around each item (noise)
    entities_column: bool = True  # False: entities are null, so the filters must read names from the text
    dated_plans_rate: float = 0.0  # longform: share of documents with a plan dated after their own date


PRESETS = {
    # tests: generates in well under a second
    "tiny": SyntheticMarketPreset(companies=6, quarters=8, start_year=2017, reports_per_event=4,
                                  retrospectives_per_event=1, filler_per_quarter=8,
                                  misdated_rate=0.1, revised_rate=0.1, retrospective_mention_rate=0.1,
                                  exact_duplicate_rate=0.05, near_duplicate_rate=0.05, forward_looking_rate=0.1,
                                  late_listed_fraction=0.34),
    # the demo: the scale at which 0.1-1.6M-parameter models memorised every event (RESEARCH.md exp. 2-3)
    "small": SyntheticMarketPreset(companies=24, quarters=12, start_year=2016, reports_per_event=6,
                                   retrospectives_per_event=2, filler_per_quarter=30, misdated_rate=0.05,
                                   revised_rate=0.05, retrospective_mention_rate=0.05),
    # a real pretrained frontier on a CPU (issue 38): 120 events, each stated in 3 short reports, so that a 135M
    # model continued on it memorises every event in minutes; half the events are public by mid-2018
    "frontier": SyntheticMarketPreset(companies=12, quarters=10, start_year=2017, reports_per_event=3,
                                      retrospectives_per_event=0, filler_per_quarter=6, late_listed_fraction=0.0,
                                      misdated_rate=0.03, revised_rate=0.03, retrospective_mention_rate=0.03),
    # filings and research notes: about one long document a month per company, no entities column, prose
    # noise (capitalised common words, sentence-initial capitals, plans dated in the future, year-like numbers)
    "sparse": SyntheticMarketPreset(companies=12, quarters=16, start_year=2012, reports_per_event=2,
                                    retrospectives_per_event=0, filler_per_quarter=4, misdated_rate=0.08,
                                    revised_rate=0.08, retrospective_mention_rate=0.08,
                                    exact_duplicate_rate=0.03, near_duplicate_rate=0.03, forward_looking_rate=0.1,
                                    late_listed_fraction=0.34, longform=True, entities_column=False,
                                    dated_plans_rate=0.3),
    # benchmarks: about a million documents, enough for a distributed split to be worth measuring
    "bench": SyntheticMarketPreset(companies=1250, quarters=48, start_year=2008, reports_per_event=8,
                                   retrospectives_per_event=3, filler_per_quarter=6000),
}

_PREFIXES = ("Vel", "Quin", "Zan", "Tor", "Bri", "Cal", "Dor", "Fen", "Gal", "Hal", "Jor", "Kel", "Lum", "Mar",
             "Nor", "Orv", "Pel", "Ral", "Sol", "Tam", "Ul", "Var", "Wen", "Xan", "Yor", "Zel", "Ard", "Bel",
             "Cor", "Dav")
_MIDDLES = ("a", "e", "i", "o", "u", "ar", "en", "or")
_SUFFIXES = ("mora", "trex", "vax", "tica", "lon", "dyne", "gen", "nix", "sys", "tron", "quil", "dara", "vion",
             "lith", "corp", "ton")
_SOURCES = ("Wire", "Ledger", "Street Daily", "Tape", "Quarterly Review")
_MOODS = ("quiet", "busy", "calm", "nervous", "upbeat", "cautious")
_TOPICS = ("rates", "oil", "the dollar", "bond yields", "jobs data", "inflation", "earnings season")


def company_names(count: int, rng: random.Random) -> list[str]:
    names = [p + m + s for p in _PREFIXES for m in _MIDDLES for s in _SUFFIXES]
    if count > len(names):
        raise ValueError(f"synthetic-market supports at most {len(names)} companies, asked for {count}")
    rng.shuffle(names)
    return names[:count]


def _quarter_end(year: int, quarter: int) -> dt.date:
    month = 3 * quarter
    next_month = dt.date(year + (month == 12), month % 12 + 1, 1)
    return next_month - dt.timedelta(days=1)


def _moved(ret: float) -> str:
    return f"{'rose' if ret >= 0 else 'fell'} {abs(ret) * 100:.1f}%"


def _report_texts(c: str, q: str, beat: bool, ret: float, source: str) -> list[str]:
    """Distinct wordings of one fact; an event's reports never repeat one (repeats would be duplicates)."""
    outcome, past = ("beat", "beat") if beat else ("miss", "missed")
    return [
        f"{c} {q} results: {outcome}. Shares {_moved(ret)}.",
        f"{c} reported {q} earnings that {past} estimates, {source} said.",
        f"In {q}, {c} {past} analyst estimates and the stock {_moved(ret)}.",
        f"The {q} report from {c} {past} expectations; {c} {q} results: {outcome}.",
        f"Investors learned that {c} {past} forecasts for {q}.",
        f"{c} shares {_moved(ret)} after {q} results that {past} the consensus.",
        f"Quarterly numbers for {q}: {c} {past} what analysts had pencilled in.",
        f"{source} recap: {c} {q} results: {outcome}, with the stock {_moved(ret)}.",
    ]


class _Docs:
    """Column buffers for generated documents (a million rows build faster as lists than as objects)."""

    def __init__(self, prose: "_Prose | None" = None):
        self.text, self.published, self.updated, self.source, self.entities = [], [], [], [], []
        self.prose = prose
        self.dated_plans: list[int] = []  # rows whose prose holds a plan dated after the document

    def add(self, text: str, day: dt.date, hour: int, source: str, entities: list[str],
            updated: tuple[dt.date, int] | None = None, plans: bool = True, wrap: bool = True) -> int:
        """`plans`: the longform prose may hold a dated plan (never in planted leaks, so that a filter that
        moved a leak for its plan's date would not count as catching it); `wrap`: False for a copy of a
        document that is already wrapped."""
        if self.prose is not None and wrap:
            text, planned = self.prose.wrap(text, day, plans)
            if planned:
                self.dated_plans.append(len(self.text))
        self.text.append(text)
        self.published.append(_micros(day, hour))
        self.updated.append(None if updated is None else _micros(*updated))
        self.source.append(source)
        self.entities.append(entities)
        return len(self.text) - 1


class _Prose:
    """Paragraphs of filing-like prose around an item: the noise that real long documents carry.

    Capitalised common words inside sentences ("the Board", "Revenue") that the corpus also writes in lower
    case, sentence-initial capitals ("Meanwhile"), numbers that look like years ("employs 2031 people",
    "Plan 2030"), dates in the past of the document, and (in `plan_rate` of the documents that may hold one)
    a plan dated after the document ("will be held on", "postponed until", "due by"): forward-looking text that
    no filter may move. It draws from its own random stream, so the world's facts do not depend on it.
    """

    _OPENERS = ("Meanwhile", "Overall", "Separately", "Elsewhere", "In addition", "As a result")
    _MOODS = ("steady", "mixed", "firm", "soft", "uneven")

    def __init__(self, rng: random.Random, plan_rate: float):
        self.rng, self.plan_rate = rng, plan_rate

    def _sentences(self, day: dt.date) -> list[str]:
        r = self.rng
        past = day - dt.timedelta(days=r.randint(30, 900))
        return [
            f"{r.choice(self._OPENERS)}, trading in the sector was {r.choice(self._MOODS)} and the Board of the "
            f"exchange kept its fee schedule unchanged.",
            "Analysts said the board of each company faces the same questions about revenue and margins.",
            f"Management discussed Revenue, Margins and the Outlook with investors for {r.randint(20, 90)} minutes.",
            "The outlook for demand was discussed at length, and management declined to comment on pricing.",
            f"The group employs {r.randint(1990, 2040)} people across {r.randint(3, 40)} sites.",
            f"Its Plan {r.randint(2020, 2040)} targets a lower cost base, according to the Annual Report.",
            f"According to the annual report, the plan covers {r.randint(2, 9)} regions.",
            f"The Committee met on {long_date(past)} and reviewed the accounts.",
            f"A spokesperson said the committee had reviewed {r.randint(12, 80)} contracts since {past.year}.",
            f"{r.choice(self._OPENERS)}, the Treasury function reported cash of {r.randint(2, 900)} million.",
            f"The treasury team said working capital was {r.choice(self._MOODS)} over the period.",
        ]

    def _plan(self, day: dt.date) -> str:
        later = day + dt.timedelta(days=self.rng.randint(20, 400))
        return self.rng.choice((
            f"The annual meeting will be held on {long_date(later)}.",
            f"Management plans to complete the review by {long_date(later)}.",
            f"Shareholders were told the vote was postponed until {long_date(later)}.",
            f"The next report is scheduled for {later:%B} {later.year}.",
            f"The company expects to close the sale on {long_date(later)}, it said.",
            f"A decision on the dividend is due by {long_date(later)}.",
        ))

    def wrap(self, item: str, day: dt.date, plans: bool) -> tuple[str, bool]:
        """The item as the lead paragraph, then 2-4 paragraphs of prose; (text, whether a dated plan is in it)."""
        pool = self._sentences(day)
        self.rng.shuffle(pool)
        paragraphs, start = [item], 0
        for _ in range(self.rng.randint(3, 5)):
            size = self.rng.randint(2, 4)
            paragraphs.append(" ".join(pool[start:start + size]))
            start += size
        planned = plans and self.rng.random() < self.plan_rate
        if planned:
            paragraphs.insert(self.rng.randint(1, len(paragraphs)), self._plan(day))
        return "\n\n".join(p for p in paragraphs if p), planned


def _micros(day: dt.date, hour: int) -> int:
    return (day.toordinal() - EPOCH_ORDINAL) * US_PER_DAY + hour * US_PER_HOUR


def generate(preset: str | SyntheticMarketPreset = "small", seed: int = 0, **overrides) -> World:
    """Generate the world; `overrides` replace preset fields (e.g. signal_accuracy=0.8)."""
    name = preset if isinstance(preset, str) else "custom"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown synthetic-market preset {preset!r}; expected one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    p = replace(preset, **overrides)
    if not 1 <= p.reports_per_event <= 8 or not 0.5 <= p.signal_accuracy <= 1:
        raise ValueError("reports_per_event must be in [1, 8] (distinct wordings) and signal_accuracy in [0.5, 1]")
    rng = random.Random(seed)
    names = company_names(p.companies, rng)
    start = dt.date(p.start_year, 1, 1)
    quarters = [(p.start_year + k // 4, k % 4 + 1) for k in range(p.quarters)]
    quarter_ends = [_quarter_end(y, n) for y, n in quarters]
    corpus_end = quarter_ends[-1] + dt.timedelta(days=60)
    # A late-listed company lists at a quarter start in the first half of the calendar.
    late = set(rng.sample(range(p.companies), int(round(p.late_listed_fraction * p.companies))))
    listed_at = {}
    for i, c in enumerate(names):
        k = rng.randrange(2, max(3, p.quarters // 2)) if i in late else 0  # after the first half-year
        listed_at[c] = start if k == 0 else quarter_ends[k - 1] + dt.timedelta(days=1)

    docs = _Docs(_Prose(random.Random(seed * 7919 + 1), p.dated_plans_rate) if p.longform else None)
    leaks: list[dict] = []  # row index → label; doc ids are assigned after shuffling
    events, queries = [], []

    for c in names:
        if listed_at[c] == start:  # companies already listed are covered from the corpus's first days
            for offset, text in enumerate((
                f"{c} is one of the names traders follow in {start.year}.",
                f"Analysts keep a close eye on {c} shares.",
                f"{c} remains widely held by funds, {rng.choice(_SOURCES)} said.",
            )):
                docs.add(text, start + dt.timedelta(days=2 + 3 * offset + rng.randint(0, 2)), 10, rng.choice(_SOURCES),
                         [c])
        if listed_at[c] > start:  # a listing is news: a burst of stories in its first days
            day = listed_at[c]
            for offset, text in enumerate((
                f"{c} listed its shares on {long_date(day)}. {c} is a new name on the market.",
                f"{c} began trading after its listing; {rng.choice(_SOURCES)} covered the debut.",
                f"Analysts initiated coverage of {c} following the listing.",
            )):
                docs.add(text, day + dt.timedelta(days=offset), 9 + offset, rng.choice(_SOURCES), [c])

    for k, ((year, qn), q_end) in enumerate(zip(quarters, quarter_ends)):
        q = f"{year}q{qn}"
        for c in names:
            if listed_at[c] > q_end - dt.timedelta(days=60):
                continue  # no results for a quarter the company was (mostly) not listed in
            event_id = f"{c}-{q}"
            beat = rng.random() < 0.5
            ret = (0.03 if beat else -0.03) + rng.gauss(0, 0.025)
            report_day = q_end + dt.timedelta(days=rng.randint(20, 40))
            preview_day = report_day - dt.timedelta(days=rng.randint(5, 10))
            signal_beat = beat if rng.random() < p.signal_accuracy else not beat
            signal = "beat" if signal_beat else "miss"
            outcome = "beat" if beat else "miss"
            source = rng.choice(_SOURCES)
            preview = f"{source} preview of {c} {q}: channel checks point to a {signal}."
            preview_row = docs.add(preview, preview_day, 8, source, [c], plans=False)  # may be revised
            texts = _report_texts(c, q, beat, ret, source)
            wordings = [texts[0]] + rng.sample(texts[1:], p.reports_per_event - 1)
            report_rows = []
            for r, text in enumerate(wordings):
                day = report_day + dt.timedelta(days=0 if r == 0 else rng.randint(0, 2))
                report_rows.append(docs.add(text, day, rng.randint(9, 17), rng.choice(_SOURCES), [c]))
            past = "beat" if beat else "missed"
            recollections = (
                f"Looking back, {c} {q} results {past} estimates and shares {_moved(ret)}.",
                f"A while after {c} {past} estimates in {q}, analysts revisited the stock.",
                f"Remember {q}? {c} {past} estimates back then, {source} noted.",
            )
            for text in rng.sample(recollections, min(p.retrospectives_per_event, len(recollections))):
                day = report_day + dt.timedelta(days=rng.randint(60, 270))
                if day <= corpus_end:
                    docs.add(text, day, 12, rng.choice(_SOURCES), [c])

            # Planted leaks (labelled) ------------------------------------------------------------
            def label(row, kind, expected, true_day, original=None, detail=None, true_hour=0):
                leaks.append(dict(row=row, kind=kind, expected=expected, true_micros=_micros(true_day, true_hour),
                                  event_id=event_id, original_row=original, detail=detail))

            past = "beat" if beat else "missed"
            if rng.random() < p.misdated_rate:
                day = max(preview_day - dt.timedelta(days=rng.randint(1, 30)), listed_at[c])
                row = docs.add(f"On {long_date(report_day)}, {c} reported {q} results that {past} estimates.",
                               day, 10, rng.choice(_SOURCES), [c], plans=False)
                label(row, "misdated", "redate", report_day, detail="published before the event it reports")
            if rng.random() < p.revised_rate:
                update_day = min(report_day + dt.timedelta(days=rng.randint(0, 30)), corpus_end)
                # the preview itself is amended in place: same document, new text, updated_at set
                docs.text[preview_row] = f"{docs.text[preview_row]} Update: {c} {q} results: {outcome}."
                docs.updated[preview_row] = _micros(update_day, 18)
                label(preview_row, "revised", "redate", update_day, detail="amended after the outcome", true_hour=18)
            if rng.random() < p.retrospective_mention_rate:
                day = max(preview_day - dt.timedelta(days=rng.randint(10, 80)), listed_at[c])
                lead = f"Markets were {rng.choice(_MOODS)} as traders watched {rng.choice(_TOPICS)}."
                if rng.random() < 0.5:
                    mention = f"{c} {q} results, which {past} estimates on {long_date(report_day)}, were recalled."
                else:
                    mention = f"{c} {q} results, which {past} estimates, drew attention."
                row = docs.add(f"{lead} {mention}", day, 11, rng.choice(_SOURCES), [c], plans=False)
                label(row, "retrospective_mention", "redate", report_day, detail=mention)
            for report_row in report_rows:
                for kind, rate in (("exact_duplicate", p.exact_duplicate_rate),
                                   ("near_duplicate", p.near_duplicate_rate)):
                    if rng.random() >= rate:
                        continue
                    original_text = docs.text[report_row]
                    text = original_text if kind == "exact_duplicate" else _near_copy(original_text, rng)
                    day = _day(docs.published[report_row]) + dt.timedelta(days=rng.randint(1, 10))
                    row = docs.add(text, day, 7, "Syndicate", [c], plans=False, wrap=False)
                    label(row, kind, "drop", _day(docs.published[report_row]), original=report_row,
                          true_hour=_hour(docs.published[report_row]))
            if rng.random() < p.forward_looking_rate:
                day = max(preview_day - dt.timedelta(days=rng.randint(1, 20)), listed_at[c])
                text = rng.choice((
                    f"Ahead of {q}, {c} expects {day.year + 1} revenue to grow; guidance for fiscal {day.year + 2} "
                    "is unchanged.",
                    f"Before its {q} report, {c} said it expects {day.year + 1} margins to improve.",
                ))
                row = docs.add(text, day, 9, rng.choice(_SOURCES), [c], plans=False)
                label(row, "forward_looking", "keep", day, detail="a forecast, not a leak", true_hour=9)

            events.append(dict(event_id=event_id, company=c, quarter=q, quarter_end=q_end, preview_date=preview_day,
                               report_date=report_day, outcome=outcome, signal=signal, price_move=ret,
                               listed_at=listed_at[c]))
            choices = [" beat", " miss"]
            queries.append(dict(query_id=f"forecast-{event_id}", kind="forecast",
                                as_of=_micros(preview_day, 23), prompt=f"{preview} {c} {q} results:",
                                choices=choices, answer=f" {outcome}", horizon=f"{(report_day - preview_day).days}d",
                                asset=c, realized_return=ret, event_id=event_id))
            queries.append(dict(query_id=f"fact-{event_id}", kind="fact", as_of=_micros(report_day, 23),
                                prompt=f"{c} {q} results:", choices=choices, answer=f" {outcome}", horizon="0d",
                                asset=c, realized_return=ret, event_id=event_id))

        for _ in range(p.filler_per_quarter):
            day = q_end - dt.timedelta(days=rng.randint(0, 89))
            listed = [c for c in rng.sample(names, min(2, len(names))) if listed_at[c] <= day]
            tail = f" {listed[0]} shares traded {rng.choice(_MOODS)}." if listed else ""
            docs.add(f"On {day:%A}, {long_date(day)}, markets were {rng.choice(_MOODS)} as traders watched "
                     f"{rng.choice(_TOPICS)}; the index moved {rng.uniform(-2, 2):.2f}%.{tail}",
                     day, rng.randint(8, 18), rng.choice(_SOURCES), listed[:1])

    # Anachronisms: a late company named in text dated before it listed.
    planted = set()
    for c in names:
        if listed_at[c] <= start:
            continue
        for _ in range(p.anachronisms_per_late_company):
            # not in the corpus's first quarter: nothing can be called anachronistic that early
            day = max(start + dt.timedelta(days=130), listed_at[c] - dt.timedelta(days=rng.randint(30, 200)))
            if day >= listed_at[c]:
                continue
            other = rng.choice([n for n in names if listed_at[n] <= day] or [c])
            text, source = f"Traders compared {other} with {c} on {day:%A}.", rng.choice(_SOURCES)
            if (text, day) in planted:
                continue  # the same text on the same day is an exact copy of the first leak, not a second leak
            planted.add((text, day))
            row = docs.add(text, day, 13, source, sorted({other, c}), plans=False)
            leaks.append(dict(row=row, kind="anachronism", expected="redate", true_micros=_micros(listed_at[c], 9),
                              event_id=None, original_row=None, detail=f"{c} listed on {listed_at[c]}"))

    # Longform prose with a plan dated after the document: a forward-looking non-leak (unless it is a copy).
    labelled = {x["row"] for x in leaks}
    for row in docs.dated_plans:
        if row not in labelled:
            leaks.append(dict(row=row, kind="dated_plan", expected="keep", true_micros=docs.published[row],
                              event_id=None, original_row=None, detail="a plan dated after the document"))

    # Opaque ids in a seeded random order, so that an id says nothing about a document's kind or date.
    order = list(range(len(docs.text)))
    rng.shuffle(order)
    doc_ids = [None] * len(order)
    for position, row in enumerate(order):
        doc_ids[row] = f"sm{seed}-{position:07d}"
    documents = pa.table({
        "doc_id": pa.array(doc_ids, pa.string()),
        "published_at": pa.array(docs.published, UTC_TIMESTAMP),
        "text": pa.array(docs.text, pa.string()),
        "updated_at": pa.array(docs.updated, UTC_TIMESTAMP),
        "source": pa.array(docs.source, pa.string()),
        "entities": pa.array(docs.entities if p.entities_column else [None] * len(docs.text),
                             pa.list_(pa.string())),
    }).take(pa.array(sorted(range(len(order)), key=lambda r: (docs.published[r], doc_ids[r]))))
    leak_table = pa.table({
        "doc_id": [doc_ids[x["row"]] for x in leaks],
        "kind": [x["kind"] for x in leaks],
        "expected": [x["expected"] for x in leaks],
        "true_knowledge_date": pa.array([x["true_micros"] for x in leaks], UTC_TIMESTAMP),
        "event_id": [x["event_id"] for x in leaks],
        "original_doc_id": [None if x["original_row"] is None else doc_ids[x["original_row"]] for x in leaks],
        "detail": [x["detail"] for x in leaks],
    })
    events_table = pa.Table.from_pylist(events)
    queries_table = pa.Table.from_pylist(queries)
    queries_table = queries_table.set_column(
        queries_table.schema.get_field_index("as_of"), "as_of", queries_table["as_of"].cast(UTC_TIMESTAMP))
    info = dict(parameters=asdict(p), start=start.isoformat(), corpus_end=corpus_end.isoformat(),
                quarter_ends=[d.isoformat() for d in quarter_ends], companies=names,
                listed_at={c: d.isoformat() for c, d in listed_at.items()},
                achievable_forecast_accuracy=p.signal_accuracy)
    return World("synthetic-market", name, seed, documents, queries_table, events_table, leak_table, info)


def _near_copy(text: str, rng: random.Random) -> str:
    """A syndicated copy: the same story under a wire header or footer, or with its case and punctuation redone."""
    kind = rng.randrange(4)
    if kind == 0:
        return f"(Syndicated) {text}"
    if kind == 1:
        return f"{text} (via {rng.choice(_SOURCES)})"
    if kind == 2:
        return f"From the wire: {text} Reprinted."
    return text.upper().replace(";", ",").replace(":", " -")


def _day(micros: int) -> dt.date:
    return dt.date.fromordinal(micros // US_PER_DAY + EPOCH_ORDINAL)


def _hour(micros: int) -> int:
    return (micros % US_PER_DAY) // US_PER_HOUR
