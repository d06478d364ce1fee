"""The one cutoff-day rule: a vintage knows everything known by the end of its cutoff day (UTC), and is
usable from the next instant on.

Every place that puts a document, a probe or a query on one side of a cutoff uses these: the split (which
slice a knowledge date falls in), training (the facts a stage must know), the registry (the vintage usable
at a date), backtests and probes (pre- or post-cutoff queries).
"""
from __future__ import annotations

import bisect
import datetime as dt
from typing import Any, Sequence


def as_utc(value: Any) -> dt.datetime:
    """An ISO string (a trailing Z allowed), a date or a datetime as an aware UTC datetime; naive is UTC."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def cutoff_end(cutoff: str | dt.date) -> dt.datetime:
    """The last instant a vintage knows: the end of its cutoff day, UTC."""
    day = dt.date.fromisoformat(cutoff) if isinstance(cutoff, str) else cutoff
    if isinstance(day, dt.datetime):
        day = day.date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc) + dt.timedelta(days=1, microseconds=-1)


def known_by(when: Any, cutoff: str | dt.date) -> bool:
    """Whether something public at `when` is known to the vintage at `cutoff`."""
    return as_utc(when) <= cutoff_end(cutoff)


def usable_cutoffs(cutoffs: Sequence[str], as_of: Any) -> list[str]:
    """The cutoffs (ascending) whose vintage exists at `as_of`: their day has fully passed."""
    when = as_utc(as_of)
    return [c for c in sorted(cutoffs) if cutoff_end(c) < when]


def slices_of(whens: Sequence[dt.datetime], cutoffs: Sequence[dt.date]) -> list[str | None]:
    """The slice of each knowledge date: the first cutoff (ascending) whose vintage knows it, as YYYY-MM-DD;
    None after the last cutoff."""
    ends, labels = [cutoff_end(c) for c in cutoffs], [c.isoformat() for c in cutoffs]
    positions = (bisect.bisect_left(ends, when) for when in whens)
    return [labels[k] if k < len(ends) else None for k in positions]


def known_by_expr(column: str, cutoff: str | dt.date):
    """Polars: `column` (a UTC datetime) is known to the vintage at `cutoff`; negate it for post-cutoff."""
    import polars as pl

    return pl.col(column) <= cutoff_end(cutoff)


def latest_usable_expr(column: str, cutoffs: Sequence[str]):
    """Polars: the latest of `cutoffs` (ascending) usable at each `column` instant (null: none yet)."""
    import polars as pl

    expr = pl.lit(None, dtype=pl.String)
    for cutoff in sorted(cutoffs):
        expr = pl.when(pl.col(column) > cutoff_end(cutoff)).then(pl.lit(cutoff)).otherwise(expr)
    return expr
