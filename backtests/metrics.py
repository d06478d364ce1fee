"""Metrics: pure functions over a backtest's results table (one registry, one run id).

Units: accuracy and hit rate are fractions; Brier is the mean squared error of the answer probability
(0 best, 0.25 a coin); log loss is nats per query; returns are simple per-trade returns; Sharpe is
annualised with `periods_per_year` (trades are treated as periods); max drawdown is a fraction of peak
equity. The look-ahead gap is a method's metric minus the reference's on the same queries, where the
reference is the retrained model where one exists, else the vintage surrogate.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats
from scipy.special import softmax

EPS = 1e-12


def accuracy(results: pl.DataFrame) -> float:
    return float(results["correct"].cast(pl.Float64).mean())


def brier(results: pl.DataFrame) -> float:
    """Mean (1 - p_answer)^2: the binary Brier score of the event "the answer is right"."""
    p = results["p_answer"].to_numpy()
    return float(np.mean((1 - p) ** 2))


def log_loss(results: pl.DataFrame) -> float:
    return float(-np.mean(np.log(np.clip(results["p_answer"].to_numpy(), EPS, 1.0))))


def calibration_by_decile(results: pl.DataFrame) -> pl.DataFrame:
    """Per decile of the predicted choice's probability: mean confidence vs observed accuracy."""
    confidence = results["choice_logprobs"].map_elements(_max_prob, return_dtype=pl.Float64)
    frame = results.select("correct").with_columns(confidence=confidence)
    # the epsilon keeps a confidence of exactly 0.7 (after exp/log round trips) in the 0.7 decile
    return (frame.with_columns(decile=(pl.col("confidence") * 10 + 1e-9).floor().clip(0, 9).cast(pl.Int32))
            .group_by("decile").agg(n=pl.len(), confidence=pl.col("confidence").mean(),
                                    accuracy=pl.col("correct").cast(pl.Float64).mean()).sort("decile"))


def _max_prob(logprobs) -> float:
    values = np.asarray(list(logprobs), dtype=float)
    p = np.exp(values - values.max())
    return float(p.max() / p.sum())


METRICS = {"accuracy": accuracy, "brier": brier, "log_loss": log_loss}


def headline(results: pl.DataFrame, by: tuple[str, ...] = ("method",)) -> pl.DataFrame:
    """Method (x `by`) x metric."""
    rows = []
    for key, part in results.group_by(*by, maintain_order=True):
        row = dict(zip(by, key))
        row["n"] = part.height
        row.update({name: fn(part) for name, fn in METRICS.items()})
        rows.append(row)
    return pl.DataFrame(rows).sort(*by)


def reference_method(results: pl.DataFrame) -> str:
    methods = set(results["method"].unique().to_list())
    if "retrained" in methods:
        return "retrained"
    if "surrogate" in methods:
        return "surrogate"
    raise ValueError(f"look-ahead gap needs a `retrained` or `surrogate` method; results have {sorted(methods)}")


def lookahead_gap(results: pl.DataFrame, metric: str = "accuracy", period: str | None = None,
                  reference: str | None = None) -> pl.DataFrame:
    """Per method (and `period` of as_of, e.g. "1q"): metric(method) - metric(reference) on the queries
    both answered. Positive accuracy gap = the method knows more than a model of that date could."""
    reference = reference or reference_method(results)
    fn = METRICS[metric]
    ref = results.filter(pl.col("method") == reference)
    frame = results if period is None else results.with_columns(period=pl.col("as_of").dt.truncate(period))
    ref = ref if period is None else ref.with_columns(period=pl.col("as_of").dt.truncate(period))
    keys = ["method"] + ([] if period is None else ["period"])
    rows = []
    for key, part in frame.filter(pl.col("method") != reference).group_by(*keys, maintain_order=True):
        common = ref.join(part.select("query_id"), on="query_id", how="semi")
        mine = part.join(common.select("query_id"), on="query_id", how="semi")
        if common.height == 0:
            continue
        row = dict(zip(keys, key))
        row.update(n=common.height, method_value=fn(mine), reference_value=fn(common))
        row["gap"] = row["method_value"] - row["reference_value"]
        rows.append(row)
    return pl.DataFrame(rows).sort(keys) if rows else pl.DataFrame()


def strategy_returns(results: pl.DataFrame, weighting: str = "sign", up: str | None = None) -> pl.DataFrame:
    """Trades from predictions on queries with a realized return: long when the predicted choice is the
    `up` choice (default: the first choice, e.g. " beat"), short otherwise. `weighting`: "sign" (±1) or
    "probability" (2·p(up) − 1). Returns rows (as_of, method, position, return) sorted by as_of."""
    frame = results.filter(pl.col("realized_return").is_not_null())
    p_up = frame["choice_logprobs"].map_elements(lambda lp: _softmax(lp)[0], return_dtype=pl.Float64)
    frame = frame.with_columns(p_up=p_up)
    if up is not None:
        frame = frame.filter(pl.col("choices").list.first() == up)
    position = (pl.when(pl.col("p_up") >= 0.5).then(1.0).otherwise(-1.0) if weighting == "sign"
                else 2 * pl.col("p_up") - 1)
    return (frame.with_columns(position=position)
            .with_columns(**{"return": pl.col("position") * pl.col("realized_return")})
            .select("as_of", "method", "query_id", "position", "return").sort("method", "as_of", "query_id"))


def _softmax(logprobs) -> np.ndarray:
    return softmax(np.asarray(list(logprobs), dtype=float))


def risk_analysis(returns: np.ndarray, periods_per_year: float = 52.0) -> dict:
    """Qlib-style summary of a return series: mean, std, annualised return and Sharpe, max drawdown, hit rate."""
    r = np.asarray(returns, dtype=float)
    if r.size == 0:
        return dict(trades=0, mean=math.nan, std=math.nan, annualized_return=math.nan, sharpe=math.nan,
                    max_drawdown=math.nan, hit_rate=math.nan)
    std = float(r.std(ddof=1)) if r.size > 1 else math.nan
    equity = np.cumprod(1 + r)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return dict(trades=int(r.size), mean=float(r.mean()), std=std,
                annualized_return=float(r.mean() * periods_per_year),
                sharpe=float(r.mean() / std * math.sqrt(periods_per_year)) if std and std > 0 else math.nan,
                max_drawdown=float((equity / peak - 1).min()), hit_rate=float((r > 0).mean()))


def strategy_table(results: pl.DataFrame, periods_per_year: float = 52.0) -> pl.DataFrame:
    rows = []
    for weighting in ("sign", "probability"):
        trades = strategy_returns(results, weighting)
        for (method,), part in trades.group_by("method", maintain_order=True):
            rows.append(dict(method=method, weighting=weighting,
                             **risk_analysis(part["return"].to_numpy(), periods_per_year)))
    return pl.DataFrame(rows).sort("weighting", "method") if rows else pl.DataFrame()


def forget_quality(results: pl.DataFrame, method: str, reference: str = "retrained") -> float:
    """TOFU's forget quality: the KS-test p-value between `method`'s and `reference`'s answer-probability
    distributions on the same queries (pass post-cutoff fact queries). High = indistinguishable."""
    a = results.filter(pl.col("method") == method)
    b = results.filter(pl.col("method") == reference)
    common = a.join(b.select("query_id"), on="query_id", how="semi")["query_id"]
    pa_ = a.filter(pl.col("query_id").is_in(common.implode()))["p_answer"].to_numpy()
    pb = b.filter(pl.col("query_id").is_in(common.implode()))["p_answer"].to_numpy()
    if len(pa_) == 0:
        return math.nan
    return float(stats.ks_2samp(pa_, pb).pvalue)
