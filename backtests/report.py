"""`vintage report OUT`: report.md with the headline table (method x metric) and PNG plots.

Reads OUT/results (and OUT/effective_cutoff.parquet when the backtest wrote one); the latest run id only.
OUT may be a filesystem URI (s3://...): the report is built in a local scratch directory and uploaded.
"""
from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from backtests import metrics
from backtests import storage
from backtests.runner import read_table


def latest_run(results: pl.DataFrame, out: str | Path) -> pl.DataFrame:
    """Rows of the run the backtest wrote last (OUT/run.json); a results directory may hold several runs."""
    import json

    marker = storage.read_text(storage.join(out, "run.json")) if results["run_id"].n_unique() > 1 else None
    if marker is None:
        return results
    return results.filter(pl.col("run_id") == json.loads(marker)["run_id"])


def _markdown(frame: pl.DataFrame, digits: int = 3) -> str:
    if frame.is_empty():
        return "(none)\n"
    cols = frame.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.iter_rows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("nan" if math.isnan(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_equity(trades: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (method,), part in trades.sort("as_of").group_by("method", maintain_order=True):
        equity = (1 + part["return"]).cum_prod()
        ax.plot(part["as_of"].to_list(), equity.to_list(), label=method)
    ax.set_title("Long/short on the predicted direction (forecast queries): equity")
    ax.set_ylabel("equity (start = 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lines(frame: pl.DataFrame, x: str, y: str, title: str, ylabel: str, path: Path,
               cutoff: str | None = None, log: bool = False) -> None:
    """One line per `method` of `y` over `x`, a dashed line at `cutoff`, saved as a PNG at `path`."""
    import datetime as dt

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (method,), part in frame.sort(x).group_by("method", maintain_order=True):
        ax.plot(part[x].to_list(), part[y].to_list(), marker="o", ms=3, label=method)
    if cutoff:
        ax.axvline(dt.datetime.fromisoformat(cutoff), color="grey", ls="--", lw=1, label=f"cutoff {cutoff}")
    if log:
        ax.set_yscale("log")
    ax.axhline(0, color="black", lw=0.5) if not log else None
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(location: str | Path) -> str:
    """OUT/report.md and its plots; returns where the report is (a path, or a URI for remote outputs)."""
    results = read_table(storage.join(location, "results"))
    if results is None:
        raise FileNotFoundError(f"{storage.join(location, 'results')}: no results to report on (run the backtest first)")
    results = latest_run(results, location)
    errors = read_table(storage.join(location, "errors"))
    out = storage.scratch_dir(location)
    by = ("kind", "method") if "kind" in results.columns else ("method",)
    table = metrics.headline(results, by)
    sections = [f"# Backtest report\n\nRun `{results['run_id'][0]}`: {results['query_id'].n_unique()} queries, "
                f"methods {sorted(results['method'].unique().to_list())}.\n",
                "## Headline (accuracy, Brier, log loss per method)\n", _markdown(table)]
    plots = []
    try:
        reference = metrics.reference_method(results)
        gap = metrics.lookahead_gap(results, "accuracy")
        sections += [f"## Look-ahead gap (accuracy minus `{reference}` on the same queries)\n", _markdown(gap)]
        over_time = metrics.lookahead_gap(results, "accuracy", period="1q")
        if not over_time.is_empty():
            plot_lines(over_time, "period", "gap", f"Look-ahead gap over time (accuracy minus {reference})",
                        "accuracy gap", out / "lookahead_gap.png")
            plots.append("lookahead_gap.png")
    except ValueError as err:
        sections.append(f"Look-ahead gap: not available ({err}).\n")
    forecasts = results.filter(pl.col("kind") == "forecast") if "kind" in results.columns else results
    if "realized_return" in results.columns and forecasts.height:
        sections += ["## Strategy on forecast queries (per trade; Sharpe annualised at 52 trades/year)\n",
                     _markdown(metrics.strategy_table(forecasts))]
        _plot_equity(metrics.strategy_returns(forecasts), out / "equity.png")
        plots.append("equity.png")
    if "retrained" in results["method"].unique().to_list():
        facts = results.filter(pl.col("kind") == "fact") if "kind" in results.columns else results
        rows = [dict(method=m, ks_pvalue=metrics.forget_quality(facts, m))
                for m in sorted(facts["method"].unique().to_list()) if m != "retrained"]
        sections += ["## Forget quality (KS p-value vs retrained, fact queries)\n", _markdown(pl.DataFrame(rows))]
    calibration = metrics.calibration_by_decile(results.filter(pl.col("method") == results["method"][0]))
    sections += [f"## Calibration by decile (`{results['method'][0]}`)\n", _markdown(calibration)]
    curves = storage.read_parquet(storage.join(location, "effective_cutoff.parquet"))
    if curves is not None:
        cutoff = curves["cutoff"][0] if "cutoff" in curves.columns else None
        plot_lines(curves, "period", "perplexity", f"Effective cutoff: held-out perplexity (vintage {cutoff})",
                    "perplexity", out / "effective_cutoff.png", cutoff=cutoff, log=True)
        plots.append("effective_cutoff.png")
        sections += ["## Effective-cutoff probe (held-out perplexity per period of knowledge date)\n",
                     _markdown(curves.pivot(on="method", index="period", values="perplexity").sort("period"))]
    if errors is not None:
        counts = errors.group_by("method", "reason").agg(n=pl.len()).sort("method", "reason")
        sections += ["## Errors (queries not answered, with reasons: OUT/errors)\n", _markdown(counts)]
    sections += ["## Plots\n"] + [f"![{p}]({p})\n" for p in plots]
    (out / "report.md").write_text("\n".join(sections))
    if storage.is_uri(location):
        storage.upload(out, location, ["report.md", *plots])
        return storage.join(location, "report.md")
    return str(out / "report.md")
