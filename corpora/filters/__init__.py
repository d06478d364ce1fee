"""Leakage filters: one per file, registered by name, enabled and tuned in the split's YAML.

A filter sees Arrow batches of valid documents and returns, per row, a proposed knowledge date (or null)
and a drop reason (or null). The split takes `knowledge_date = max(published_at, updated_at, proposals)`,
so no filter can move a date earlier: the invariant is enforced in one place, not trusted to each filter.

Filters that need the whole corpus (first appearance of a term, duplicates) run in three steps that map
onto Ray Data: `observe` (map_batches: rows keyed by `key`), `reduce` (map_groups: whole key groups in,
context rows out; it must also work on many groups at once, which the single-process baseline uses) and
`finalize` (in the driver: the small context every `apply` task receives).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from corpora.config import ConfigError, from_dict
from corpora.schema import UTC_TIMESTAMP

FILTERS: dict[str, type["Filter"]] = {}

PROPOSAL_SCHEMA = pa.schema([
    pa.field("date", UTC_TIMESTAMP),  # proposed knowledge date; null = no opinion
    pa.field("drop", pa.string()),  # drop reason; null = keep
    pa.field("evidence", pa.string()),  # what triggered the proposal (a mention, a term, an earlier copy)
])


def register(name: str):
    def decorate(cls):
        if name in FILTERS:
            raise ValueError(f"filter {name!r} registered twice")
        cls.name = name
        FILTERS[name] = cls
        return cls

    return decorate


@dataclass
class NoParams:
    """This filter has no parameters."""


class Filter:
    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    key: ClassVar[str | None] = None  # set by filters with a corpus-wide pass

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    def observe(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    def reduce(self, observations: pa.Table) -> pa.Table:
        raise NotImplementedError

    def finalize(self, reduced: pa.Table) -> Any:
        return reduced

    def apply(self, batch: pa.Table, context: Any) -> pa.Table:
        """PROPOSAL_SCHEMA rows, one per row of `batch`."""
        raise NotImplementedError


def build_filters(spec: dict[str, dict | None], where: str = "filters") -> list[Filter]:
    """`{name: params}` from YAML → filter instances, in the order given."""
    _load_builtin()
    out = []
    for name, params in (spec or {}).items():
        if name not in FILTERS:
            raise ConfigError(f"{where}: unknown filter {name!r}; known filters are {sorted(FILTERS)}")
        cls = FILTERS[name]
        out.append(cls(from_dict(cls.Params, params or {}, f"{where}.{name}")))
    return out


def _load_builtin() -> None:
    from corpora.filters import anachronism, duplicates, retrospective, revision  # noqa: F401  (registers)


def proposals(dates: list[dt.datetime | None], drops: list[str | None] | None = None,
              evidence: list[str | None] | None = None) -> pa.Table:
    n = len(dates)
    return pa.table({
        "date": pa.array(dates, UTC_TIMESTAMP),
        "drop": pa.array(drops if drops is not None else [None] * n, pa.string()),
        "evidence": pa.array(evidence if evidence is not None else [None] * n, pa.string()),
    }, schema=PROPOSAL_SCHEMA)


def trusted_first_appearance(observations: pa.Table, key: str, min_support: int, window: dt.timedelta) -> pa.Table:
    """Per key, the first date at which the corpus corroborates it: the earliest mention that at least
    `min_support` mentions (itself included) follow within `window`. A lone early mention (a leak, a
    mis-dated copy) is thereby not trusted, while the burst of coverage that real news gets is.

    observations: `key`, `date` columns (any number of complete key groups). Returns `key`, `first`,
    `mentions` (null `first` where the key is never corroborated).
    """
    import polars as pl

    frame = pl.from_arrow(observations.select([key, "date"])).sort([key, "date"])
    frame = frame.with_columns(
        pl.col("date").shift(-(min_support - 1)).over(key).alias("_kth"),
    )
    within = pl.duration(microseconds=window // dt.timedelta(microseconds=1))
    corroborated = frame.filter(pl.col("_kth") <= pl.col("date") + within)
    firsts = corroborated.group_by(key).agg(pl.col("date").min().alias("first"))
    counts = frame.group_by(key).agg(pl.len().alias("mentions"))
    out = counts.join(firsts, on=key, how="left").sort(key)
    schema = pa.schema([pa.field(key, pa.string()), pa.field("mentions", pa.int64()), pa.field("first", UTC_TIMESTAMP)])
    return out.select([key, "mentions", "first"]).to_arrow().cast(schema)
