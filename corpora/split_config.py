"""What a split is asked to do: the corpus, its cutoffs (an explicit list or a calendar rule), the filters in
order, the engine; and the errors a split raises. Reading, dating and writing live in corpora/split.py and
the modules it names."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from corpora.config import ConfigError, doc
from corpora.files import short_hash
from corpora.validation import CorpusConfig

DEFAULT_FILTERS = {"revision": {}, "retrospective": {}, "anachronism": {}, "duplicates": {}}


class SplitError(ValueError):
    """The split cannot run as configured; the message names the problem."""


class StaleSplitError(SplitError):
    """The output directory holds another split (other config or input) or an unfinished one."""


@dataclass
class CutoffRule:
    """Calendar cutoffs: every month, quarter or year end between two dates (inclusive)."""

    every: Literal["month", "quarter", "year"] = doc("period whose last day is a cutoff")
    start: dt.datetime = doc("first date considered")
    end: dt.datetime = doc("last date considered")


@dataclass
class SplitConfig:
    """A corpus, its cutoffs and filters, and where the split goes."""

    corpus: CorpusConfig = doc("the corpus to read and validate")
    output: str = doc("output directory (slices/, quarantine.parquet, leakage_report.parquet, manifest.json)")
    cutoffs: list[dt.datetime] | None = doc("explicit cutoff dates, increasing", None)
    cutoff_rule: CutoffRule | None = doc("calendar rule for cutoffs (instead of an explicit list)", None)
    filters: dict[str, Any] = doc("enabled filters in order, each with its parameters", default=DEFAULT_FILTERS)
    engine: Literal["ray", "polars"] = doc("ray (Ray Data) or polars (single process)", "ray")
    batch_size: int = doc("documents per batch in map stages", 4096)
    partitions: int = doc("hash partitions of the corpus-wide passes (ray engine); 0 = 2 x cluster CPUs", 0)
    shuffle: Literal["sort_shuffle_pull_based", "hash_shuffle"] = doc(
        "Ray Data shuffle of the corpus-wide passes: the task-based sort shuffle starts in a fraction of the "
        "hash shuffle's time on small clusters (measured in bench/split.py)", "sort_shuffle_pull_based")
    warn_fraction: float = doc("warn loudly when a filter moves more than this share of the corpus", 0.10)
    warn_shift_years: float = doc("warn loudly when a filter moves any document by more than this many years", 5.0)
    audit_plot: bool = doc("draw audit_shifts.png, the histogram of shifts per filter (about a second)", True)

    def __post_init__(self):
        if (self.cutoffs is None) == (self.cutoff_rule is None):
            raise ValueError("give exactly one of cutoffs (a list of dates) or cutoff_rule")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    def cutoff_dates(self) -> list[dt.date]:
        if self.cutoffs is not None:
            days = [c.date() for c in self.cutoffs]
            for a, b in zip(days, days[1:]):
                if b <= a:
                    raise ConfigError(f"cutoffs must be strictly increasing: {b} follows {a}")
            if not days:
                raise ConfigError("cutoffs: the list is empty")
            return days
        return calendar_cutoffs(self.cutoff_rule.every, self.cutoff_rule.start.date(), self.cutoff_rule.end.date())

    def fingerprint(self) -> str:
        """Hash of everything that changes the output (not where it goes, nor the engine)."""
        data = asdict(self)
        for key in ("output", "engine", "batch_size", "partitions", "shuffle", "warn_fraction", "warn_shift_years",
                    "audit_plot"):
            data.pop(key)
        data["corpus"].pop("path")  # where the input lives is not what it is: input_fingerprint covers that
        data["cutoffs"] = [d.isoformat() for d in self.cutoff_dates()]
        data.pop("cutoff_rule")
        return short_hash(json.dumps(data, sort_keys=True, default=str))


def calendar_cutoffs(every: str, start: dt.date, end: dt.date) -> list[dt.date]:
    months = {"month": 1, "quarter": 3, "year": 12}[every]
    out, year, month = [], start.year, 1
    while True:
        month += 1
        if month > 12:
            year, month = year + 1, 1
        last = dt.date(year, month, 1) - dt.timedelta(days=1)  # last day of the previous month
        if last > end:
            break
        if last >= start and last.month % months == 0:
            out.append(last)
    if not out:
        raise ConfigError(f"cutoff_rule: no {every} end between {start} and {end}")
    return out

