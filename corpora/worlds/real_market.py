"""World `real-market`: documents narrated from real dated series that PyPI packages ship offline.

Series: S&P 500 daily 1999-2018 (`arch`), AAPL/IBM/MSFT/GOOG daily adjusted closes 2000-2013
(`bokeh-sampledata`, public-domain Quandl WIKI data) and US quarterly macro 1959-2009 (`statsmodels`).
Every document is dated when its numbers became public: a month's recap the morning after the month's
last close, a quarter's GDP about a month after the quarter ends. Forecast queries ask whether an asset
is higher three months after `as_of`; the answer and return come from the series itself.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from corpora.schema import UTC_TIMESTAMP
from corpora.worlds.base import World, long_date, utc

# Release lags after the end of the reference quarter, in days (the US agencies' usual calendar: the
# employment report early in the next month, CPI mid-month, BEA's advance GDP estimate about a month on).
RELEASE_LAG_DAYS = {"unemployment": 7, "cpi": 15, "gdp": 30, "tbill": 1}
HORIZON_MONTHS = 3


@dataclass(frozen=True)
class RealMarketPreset:
    start: str  # first month narrated (YYYY-MM-DD)
    end: str  # last day narrated
    assets: tuple[str, ...]  # among SP500, AAPL, IBM, MSFT, GOOG
    daily: bool  # also one recap per asset per trading day (the bench preset)
    macro: bool  # quarterly macro releases


PRESETS = {
    "tiny": RealMarketPreset("2004-01-01", "2006-12-31", ("SP500", "AAPL"), daily=False, macro=True),
    "small": RealMarketPreset("1999-01-01", "2018-12-31", ("SP500", "AAPL", "IBM", "MSFT", "GOOG"),
                              daily=False, macro=True),
    "bench": RealMarketPreset("1999-01-01", "2018-12-31", ("SP500", "AAPL", "IBM", "MSFT", "GOOG"),
                              daily=True, macro=True),
}
ASSET_NAMES = {"SP500": "the S&P 500", "AAPL": "Apple", "IBM": "IBM", "MSFT": "Microsoft", "GOOG": "Google"}


def load_prices(asset: str) -> pd.Series:
    """Daily closes (adjusted for the stocks), indexed by date."""
    if asset == "SP500":
        import arch.data.sp500

        frame = arch.data.sp500.load()
        series = frame["Adj Close"]
    else:
        from bokeh_sampledata import stocks

        data = getattr(stocks, asset)
        series = pd.Series(data["adj_close"], index=pd.to_datetime(data["date"]), dtype=float)
    series.index = pd.DatetimeIndex(series.index).tz_localize(None).normalize()
    return series.sort_index().astype(float)


def load_macro() -> pd.DataFrame:
    import statsmodels.api as sm

    frame = sm.datasets.macrodata.load_pandas().data.copy()
    frame["year"] = frame["year"].astype(int)
    frame["quarter"] = frame["quarter"].astype(int)
    return frame


def _quarter_end(year: int, quarter: int) -> dt.date:
    return (pd.Timestamp(year=year, month=3 * quarter, day=1) + pd.offsets.MonthEnd(0)).date()


def generate(preset: str = "small", seed: int = 0) -> World:
    """The seed only orders document ids; the content is the real data and fully determined by the preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown real-market preset {preset!r}; expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    start, end = pd.Timestamp(p.start), pd.Timestamp(p.end)
    docs, events, queries = [], [], []

    def add(text: str, day: dt.date, hour: int, source: str, entities: list[str]):
        docs.append(dict(text=text, published_at=utc(day, hour), source=source, entities=entities))

    for asset in p.assets:
        prices = load_prices(asset)
        prices = prices[(prices.index >= start - pd.offsets.MonthBegin(1)) & (prices.index <= end)]
        name = ASSET_NAMES[asset]
        label = name[0].upper() + name[1:]
        if p.daily:
            changes = prices.pct_change()
            for day, close, change in zip(prices.index[1:], prices.values[1:], changes.values[1:]):
                published = (day + pd.Timedelta(days=1)).date()
                add(f"On {long_date(day.date())}, {name} closed at {close:.2f}, "
                    f"{'up' if change >= 0 else 'down'} {abs(change) * 100:.1f}%.", published, 7, "Daily Close", [asset])
        month_ends = prices.groupby(prices.index.to_period("M")).tail(1)
        previous = None
        for day, close in month_ends.items():
            period = day.to_period("M")
            if previous is None or day < start:
                previous = close
                continue
            month = prices[prices.index.to_period("M") == period]
            change = close / previous - 1
            published = (day + pd.Timedelta(days=1)).date()  # the morning after the month's last close
            month_name = f"{day:%B %Y}"
            add(f"{label} monthly recap for {month_name}: {name} {'rose' if change >= 0 else 'fell'} "
                f"{abs(change) * 100:.1f}% to close at {close:.2f}, trading between {month.min():.2f} and "
                f"{month.max():.2f}.", published, 8, "Monthly Recap", [asset])
            event_id = f"{asset}-{period}"
            horizon_end = day + pd.DateOffset(months=HORIZON_MONTHS)
            future = prices[(prices.index > day) & (prices.index <= horizon_end)]
            forward = None
            if len(future) and future.index[-1] >= horizon_end - pd.Timedelta(days=7):
                forward = float(future.iloc[-1] / close - 1)
            events.append(dict(event_id=event_id, asset=asset, period=str(period), period_end=day.date(),
                               published=published, close=float(close), monthly_return=float(change),
                               forward_return_3m=forward))
            as_of = utc(published, 9)  # the recap is out (08:00); the day's own close is not
            queries.append(dict(query_id=f"fact-{event_id}", kind="fact", as_of=as_of,
                                prompt=f"{label} monthly recap for {month_name}: {name}",
                                choices=[" rose", " fell"], answer=" rose" if change >= 0 else " fell",
                                horizon="0d", asset=asset, realized_return=float(change), event_id=event_id))
            if forward is not None:
                queries.append(dict(
                    query_id=f"forecast-{event_id}", kind="forecast", as_of=as_of,
                    prompt=f"As of {long_date(day.date())}, will {name} be higher in three months? Answer:",
                    choices=[" yes", " no"], answer=" yes" if forward > 0 else " no", horizon=f"{HORIZON_MONTHS}m",
                    asset=asset, realized_return=forward, event_id=event_id))
            previous = close

    if p.macro:
        macro = load_macro()
        previous = None
        for row in macro.itertuples():
            q_end = _quarter_end(row.year, row.quarter)
            q = f"{row.year}q{row.quarter}"
            if previous is not None and pd.Timestamp(q_end) >= start and pd.Timestamp(q_end) <= end:
                growth = row.realgdp / previous.realgdp - 1
                releases = {
                    "unemployment": f"The US unemployment rate averaged {row.unemp:.1f}% in {q}.",
                    "cpi": f"US consumer prices in {q}: the CPI stood at {row.cpi:.1f}, inflation {row.infl:.1f}% "
                           f"annualised.",
                    "gdp": f"US real GDP for {q}: {row.realgdp:,.0f} billion chained dollars, "
                           f"{'up' if growth >= 0 else 'down'} {abs(growth) * 100:.1f}% on the quarter.",
                    "tbill": f"The three-month Treasury bill rate averaged {row.tbilrate:.2f}% in {q}.",
                }
                for kind, text in releases.items():
                    published = q_end + dt.timedelta(days=RELEASE_LAG_DAYS[kind])
                    add(text, published, 13, "Macro Release", ["US economy"])
                event_id = f"GDP-{q}"
                published = q_end + dt.timedelta(days=RELEASE_LAG_DAYS["gdp"])
                events.append(dict(event_id=event_id, asset="US_GDP", period=q, period_end=q_end, published=published,
                                   close=float(row.realgdp), monthly_return=float(growth), forward_return_3m=None))
                queries.append(dict(query_id=f"fact-{event_id}", kind="fact", as_of=utc(published, 23),
                                    prompt=f"US real GDP for {q}: {row.realgdp:,.0f} billion chained dollars,",
                                    choices=[" up", " down"], answer=" up" if growth >= 0 else " down", horizon="0d",
                                    asset="US_GDP", realized_return=float(growth), event_id=event_id))
            previous = row

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs))
    for position, index in enumerate(order):
        docs[index]["doc_id"] = f"rm{seed}-{position:07d}"
    docs.sort(key=lambda d: (d["published_at"], d["doc_id"]))
    documents = pa.Table.from_pylist(docs)
    queries_table = pa.Table.from_pylist(queries)
    info = dict(parameters=asdict(p), corpus_end=max(d["published_at"] for d in docs).date().isoformat(),
                release_lag_days=RELEASE_LAG_DAYS,
                caveat=("macro values are the dataset's final revisions, not first prints: the dates respect "
                        "release lags but the numbers are of a later vintage (a real-time dataset such as "
                        "ALFRED would fix that)"))
    return World("real-market", preset, seed, documents, queries_table, pa.Table.from_pylist(events),
                 pa.table({"doc_id": pa.array([], pa.string()), "kind": pa.array([], pa.string()),
                           "expected": pa.array([], pa.string()),
                           "true_knowledge_date": pa.array([], UTC_TIMESTAMP)}), info)
