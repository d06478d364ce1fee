"""`vintage probe-cutoff`: a model's effective cutoff on a dated corpus, from its own perplexity by period.

Held-out documents are packed, period by period, into fixed windows; each model scores every window (mean
token NLL, and Min-K% prob: the mean log-prob of its k% least likely tokens; Dated Data, Cheng et al. 2024;
look-ahead propensity, Gao et al. 2025). The knee of each per-period curve is one changepoint (ruptures), its
interval a bootstrap over windows within each period, and a permutation test of windows across periods says
whether the rise is real: a model trained on everything may have no knee, and then none is reported.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from corpora.config import ConfigError, doc
from corpora.timeline import as_utc
from vintage.holdout import HOLDOUT_EVERY

# metric: (per-window value, weight) whose per-period ratio of sums rises as a model's familiarity falls
METRICS = {
    "perplexity": (pl.col("nll"), pl.col("tokens")),  # log perplexity, nats per token
    "min_k_prob": (-pl.col("min_k_prob"), pl.lit(1.0)),  # minus the mean Min-K% prob, nats per token
    # log of the model's perplexity over the frontier's on the same windows: each window's own difficulty
    # (which varies a lot between periods of a small held-out set) cancels; none for the frontier itself
    "perplexity_ratio": (pl.col("nll") - pl.col("frontier_nll"), pl.col("tokens")),
}


@dataclass
class ProbeCutoffConfig:
    """What `vintage probe-cutoff` probes, on which corpus, and how."""

    corpus: str = doc("a split output directory, or a split YAML config (configs/split/*.yaml) whose output exists")
    out: str = doc("output directory: probe_cutoff.parquet, effective_cutoffs.parquet, probe_cutoff.png")
    frontier: str | None = doc("HF causal LM directory (safetensors and a tokenizer); unset: the registry's "
                               "frontier/", None)
    registry: str | None = doc("model registry: also probe its models (surrogate, point_in_time, retrained) at "
                               "the vintage for as_of", None)
    as_of: str | None = doc("with registry: the date whose vintage is probed (YYYY-MM-DD)", None)
    alpha: float | None = doc("point_in_time: the linear contrast at this weight; unset: the recommended method "
                              "(vintage/recommended.py)", None)
    period: str = doc("calendar period of the curve, a polars duration: 1mo, 1q, 1y, 10y", "1y")
    since: str | None = doc("probe only documents known on or after this date (YYYY-MM-DD): over centuries a real "
                            "frontier's curve follows the language's drift, not its cutoff; unset: from the first",
                            None)
    until: str | None = doc("probe only documents known before this date (YYYY-MM-DD); unset: to the last", None)
    window: int = doc("tokens per packed window (capped at the smallest context of the probed models)", 256)
    min_k: float = doc("Min-K% prob: the share of a window's least likely tokens that are averaged", 0.2)
    max_windows: int | None = doc("at most this many windows per period, evenly spaced (long corpora); "
                                  "unset: all", None)
    batch_size: int = doc("windows per forward pass (a batch's log-softmax is batch x window x vocabulary)", 8)
    threads: int = doc("torch threads for scoring; 0: every core this process may use", 0)
    dtype: Literal["auto", "float32", "bfloat16"] = doc("what the models compute in (as a backtest's dtype)", "float32")
    resamples: int = doc("bootstrap resamples (the interval) and permutations (the p-value)", 200)
    level: float = doc("confidence level of the cutoff's interval", 0.9)
    significance: float = doc("a knee is reported only where the permutation p-value is below this", 0.05)
    seed: int = doc("seed of the bootstrap and the permutations", 0)

    def __post_init__(self):
        if (self.registry is None) != (self.as_of is None):
            raise ConfigError("probe-cutoff: give --registry and --as-of together (the vintage probed is the "
                              "registry's for as_of)")
        if self.registry is None and self.frontier is None:
            raise ConfigError("probe-cutoff: give --frontier DIR, or --registry R --as-of D (its frontier/)")
        for name in ("since", "until", "as_of"):
            value = getattr(self, name)
            if value is not None:
                try:
                    dt.date.fromisoformat(str(value)[:10])
                except ValueError as err:
                    raise ConfigError(f"probe-cutoff: --{name.replace('_', '-')} {value!r} is not a date "
                                      f"(expected YYYY-MM-DD)") from err
        try:
            pl.Series([dt.datetime(2000, 1, 1)]).dt.truncate(self.period)
        except Exception as err:  # polars' own error types: not a ValueError
            raise ConfigError(f"probe-cutoff: --period {self.period!r} is not a calendar period (expected a polars "
                              f"duration such as 1mo, 1q, 1y, 10y)") from err
        if not 0 < self.min_k <= 1:
            raise ConfigError(f"probe-cutoff: min_k is a share of tokens in (0, 1], got {self.min_k}")


# -- the corpus: dated, held-out windows -------------------------------------------------------------------

def split_directory(corpus: str | Path) -> Path:
    """The split output directory that `corpus` names: itself, or the `output` of a split YAML config."""
    path = Path(corpus)
    if path.suffix in (".yaml", ".yml"):
        from corpora.config import load_yaml
        from corpora.split import SplitConfig

        output = Path(load_yaml(path, SplitConfig).output)
        if not (output / "slices").is_dir():
            raise FileNotFoundError(f"{path}: its split output {output} does not exist yet; run "
                                    f"`vintage split --config {path}` first")
        return output
    if not (path / "slices").is_dir():
        raise FileNotFoundError(f"--corpus {path}: expected a split output directory (with slices/) or a split "
                                f"YAML config")
    return path


def probed_documents(split: Path, registry=None) -> tuple[pl.DataFrame, str]:
    """(doc_id, knowledge_date, text) of the documents that no probed model trained on, and why those."""
    from corpora.split import read_slices
    from vintage.holdout import holdout_mask

    docs = pl.from_arrow(read_slices(split).select(["doc_id", "knowledge_date", "text"]))
    if registry is None:
        return docs, "every document (the frontier's training data is unknown: one it read looks familiar)"
    config = registry.manifest.get("config", {})
    trained_on = config.get("split")
    if not trained_on or Path(trained_on).resolve() != split.resolve():
        return docs, f"every document (the registry was trained on {trained_on}, not on this split)"
    every = registry.holdout_every or HOLDOUT_EVERY
    held = pl.Series(holdout_mask(docs["doc_id"].to_list(), every))
    return docs.filter(held), f"the registry's held-out documents (one in {every}, never trained on)"


def period_windows(docs: pl.DataFrame, tokenizer, period: str, length: int,
                   max_windows: int | None = None) -> pl.DataFrame:
    """Rows (period, window): the documents of each `period` of knowledge_date, tokenised and packed with
    `vintage.windows.pack` (so a window never straddles two periods), at most `max_windows` a period."""
    from vintage.windows import pack

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    dated = docs.sort("knowledge_date", "doc_id").with_columns(period=pl.col("knowledge_date").dt.truncate(period))
    rows = []
    for (start,), part in dated.group_by("period", maintain_order=True):
        ids = tokenizer(part["text"].to_list(), add_special_tokens=False)["input_ids"]
        windows = [w for w in pack(ids, length, eos) if len(w) >= 2]
        if max_windows and len(windows) > max_windows:
            windows = [windows[i] for i in np.linspace(0, len(windows) - 1, max_windows).round().astype(int)]
        rows += [dict(period=start, window=w) for w in windows]
    if not rows:
        raise ValueError("probe-cutoff: no window of two or more tokens in the probed documents")
    return pl.DataFrame(rows, schema={"period": dated.schema["period"], "window": pl.List(pl.Int64)})


# -- scoring -------------------------------------------------------------------------------------------------

def window_scores(logprobs, min_k: float) -> dict:
    """Per window (a tensor of its tokens' log-probs): NLL sum, tokens and Min-K% prob (the mean log-prob of
    its ceil(k x tokens) least likely tokens)."""
    import math

    nll, tokens, low = [], [], []
    for lp in logprobs:
        values = lp.double()
        k = max(1, math.ceil(min_k * len(values)))
        nll.append(float(-values.sum()))
        tokens.append(len(values))
        low.append(float(values.sort().values[:k].mean()))
    return dict(nll=nll, tokens=tokens, min_k_prob=low)


def per_period(scores: pl.DataFrame) -> pl.DataFrame:
    """Rows (model, period, windows, tokens, perplexity, min_k_prob, perplexity_ratio) from per-window scores:
    perplexity over all the period's tokens, Min-K% prob the mean over its windows (nats, <= 0), and the
    perplexity over the frontier's on the same windows (null for the frontier itself)."""
    ratio = (pl.col("nll") - pl.col("frontier_nll")).sum() / pl.col("tokens").sum()
    return (scores.group_by("model", "period")
            .agg(windows=pl.len(), tokens=pl.col("tokens").sum(),
                 perplexity=(pl.col("nll").sum() / pl.col("tokens").sum()).exp(),
                 min_k_prob=pl.col("min_k_prob").mean(),
                 perplexity_ratio=pl.when(pl.col("frontier_nll").null_count() == 0).then(ratio.exp()))
            .sort("model", "period"))


# -- the knee ------------------------------------------------------------------------------------------------

def find_knee(series, min_size: int = 2) -> tuple[int, float]:
    """(b, rise) of the best single changepoint of `series` (ruptures' binary segmentation, l2 cost: the
    exact best split into two means): periods [0, b) before it, [b, n) after, rise = mean after - mean
    before (positive: the curve rose)."""
    import ruptures

    y = np.asarray(series, dtype=float)
    if len(y) < 2 * min_size:
        raise ValueError(f"probe-cutoff: a knee needs at least {2 * min_size} periods with windows, got {len(y)}; "
                         f"use a shorter --period")
    b = ruptures.Binseg(model="l2", min_size=min_size, jump=1).fit(y.reshape(-1, 1)).predict(n_bkps=1)[0]
    return b, float(y[b:].mean() - y[:b].mean())


def _curve(values: np.ndarray, weights: np.ndarray, groups) -> np.ndarray:
    """Per period (`groups`: its windows' indices), the sum of its windows' values over the sum of their weights."""
    return np.array([values[g].sum() / weights[g].sum() for g in groups])


def knee_with_interval(values, weights, period_of, resamples: int = 200, level: float = 0.9, seed: int = 0) -> dict:
    """The knee of the curve sum(values) / sum(weights) per period (a rise: less familiar): the detected break;
    a percentile interval of it from a bootstrap that resamples windows within each period (a period of one
    window keeps it); and the p-value of its rise when windows are permuted across periods (no link between
    period and score: (1 + as high) / (1 + permutations)). `period_of[i]`: the period (0, 1, ...) of window i."""
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    period_of = np.asarray(period_of)
    groups = [np.flatnonzero(period_of == p) for p in range(period_of.max() + 1)]
    series = _curve(values, weights, groups)
    b, rise = find_knee(series)
    rng = np.random.default_rng(seed)
    breaks = [find_knee(_curve(values, weights, [rng.choice(g, len(g)) for g in groups]))[0] for _ in range(resamples)]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(breaks, [tail, 100 - tail], method="nearest") if resamples else (b, b)
    permuted = []
    for _ in range(resamples):
        labels = rng.permutation(period_of)
        permuted.append(find_knee(_curve(values, weights, [np.flatnonzero(labels == p)
                                                            for p in range(len(groups))]))[1])
    p_value = (1 + sum(r >= rise for r in permuted)) / (1 + resamples)
    return dict(break_index=int(b), low_index=int(min(lo, b)), high_index=int(max(hi, b)), rise=rise,
                before=float(series[:b].mean()), after=float(series[b:].mean()), p_value=float(p_value))


def period_end(start: dt.datetime, period: str) -> dt.date:
    """The last day of the period starting at `start`."""
    following = pl.Series([start]).dt.offset_by(period)[0]
    return (following - dt.timedelta(days=1)).date()


def effective_cutoffs(scores: pl.DataFrame, period: str, resamples: int = 200, level: float = 0.9,
                      significance: float = 0.05, seed: int = 0, stated: dict | None = None) -> pl.DataFrame:
    """Rows (model, metric, stated_cutoff, knee, cutoff, low, high, candidate, rise, before, after, p_value,
    periods, windows) from per-window scores. `cutoff` is the last day of the last familiar period, null when
    the rise is not significant (`candidate` keeps the best split's date either way); low and high bound
    it at `level`. rise, before and after are the METRICS curve's, in nats per token."""
    rows = []
    for (model,), part in scores.sort("period").group_by("model", maintain_order=True):
        periods = part["period"].unique(maintain_order=True).to_list()
        index = {p: i for i, p in enumerate(periods)}
        period_of = [index[p] for p in part["period"].to_list()]
        for metric, (value, weight) in METRICS.items():
            curve = part.select(value=value, weight=weight)
            if curve["value"].null_count():  # perplexity_ratio of the frontier, or of a run without one
                continue
            knee = knee_with_interval(curve["value"], curve["weight"], period_of, resamples, level, seed)
            end = lambda i: period_end(periods[i - 1], period)  # noqa: E731  (break i: period i-1 is the last familiar)
            significant = knee["rise"] > 0 and knee["p_value"] < significance
            rows.append(dict(model=model, metric=metric, stated_cutoff=(stated or {}).get(model), knee=significant,
                             cutoff=end(knee["break_index"]) if significant else None,
                             low=end(knee["low_index"]) if significant else None,
                             high=end(knee["high_index"]) if significant else None,
                             candidate=end(knee["break_index"]), rise=knee["rise"], before=knee["before"],
                             after=knee["after"], p_value=knee["p_value"], periods=len(periods), windows=part.height))
    return pl.DataFrame(rows, schema_overrides={"cutoff": pl.Date, "low": pl.Date, "high": pl.Date,
                                                "stated_cutoff": pl.String})


# -- the models and the run ----------------------------------------------------------------------------------

def _context(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def probed_models(config: ProbeCutoffConfig, threads: int):
    """(registry or None, tokenizer, [(name, PointInTimeLM, stated cutoff)]): the frontier alone, and with a
    registry its models at the vintage for as_of, built as the backtest's Scorer builds them."""
    from backtests.runner import Scorer
    from backtests.spec import MethodSpec
    from vintage.decoding import PointInTimeLM
    from vintage.vocabulary import has_tokenizer
    from vintage.registry import Registry

    if config.registry is None:
        from transformers import AutoTokenizer

        from vintage.compact import load_causal_lm
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # as the Scorer does: one progress line per model, not a bar
        if not has_tokenizer(config.frontier):
            raise FileNotFoundError(f"--frontier {config.frontier}: no tokenizer files there (an HF causal LM "
                                    f"directory with safetensors and its tokenizer is expected)")
        tokenizer = AutoTokenizer.from_pretrained(config.frontier)
        model = load_causal_lm(config.frontier, compute=config.dtype)
        return None, tokenizer, [("frontier", PointInTimeLM(model, None, None, tokenizer), None)]
    registry = Registry(config.registry)
    cutoff, _ = registry.vintage_for(config.as_of)
    scorer = Scorer({"registry": str(registry.root), "methods": [], "frontier": config.frontier, "dtype": config.dtype},
                    run_id="probe-cutoff", threads=threads)
    methods = [MethodSpec(name="frontier"), MethodSpec(name="surrogate"),
               MethodSpec(name="point_in_time", alpha=config.alpha),
               MethodSpec(name="retrained")]
    models = []
    for method in methods:
        lm, _ = scorer.lm(method, cutoff)
        if lm is not None:  # None: no retrained model at this vintage
            models.append((method.key, lm, None if method.name == "frontier" else cutoff))
    return registry, scorer.tokenizer, models


def _scored(name: str, lm, windows: list[list[int]], every: float = 30.0) -> list:
    """Token log-probs of every window under `lm`, with a progress line every `every` seconds and at the end."""
    started = last = time.perf_counter()
    out = []
    step = lm.batch_size * 8
    for start in range(0, len(windows), step):
        out += lm.ids_logprobs(windows[start:start + step])
        now = time.perf_counter()
        if now - last > every and len(out) < len(windows):
            last = now
            eta = (now - started) / len(out) * (len(windows) - len(out))
            print(f"[probe-cutoff] {name}: {len(out)}/{len(windows)} windows, {now - started:.0f} s, eta {eta:.0f} s",
                  flush=True)
    print(f"[probe-cutoff] {name}: {len(windows)} windows in {time.perf_counter() - started:.1f} s", flush=True)
    return out


def probe_cutoff(config: ProbeCutoffConfig) -> dict[str, pl.DataFrame]:
    """Score the corpus's held-out windows with every probed model, find each curve's knee, and write
    probe_cutoff.parquet, probe_windows.parquet, effective_cutoffs.parquet and probe_cutoff.png under `out`.
    Returns {"curves": per (model, period), "cutoffs": per (model, metric)}."""
    import torch

    threads = config.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    split = split_directory(config.corpus)
    registry, tokenizer, models = probed_models(config, threads)
    contexts = [c for _, lm, _ in models for c in (_context(lm.frontier), _context(lm.vintage), _context(lm.full)) if c]
    length = min([config.window, *contexts])
    docs, which = probed_documents(split, registry)
    if config.since:
        docs, which = docs.filter(pl.col("knowledge_date") >= as_utc(config.since)), f"{which}, since {config.since}"
    if config.until:
        docs, which = docs.filter(pl.col("knowledge_date") < as_utc(config.until)), f"{which}, until {config.until}"
    windows = period_windows(docs, tokenizer, config.period, length, config.max_windows)
    periods = windows["period"].n_unique()
    print(f"[probe-cutoff] {split}: {docs.height} documents probed, {which}; {windows.height} windows of <= "
          f"{length} tokens in {periods} periods of {config.period}", flush=True)
    parts = []
    for name, lm, _ in models:
        lm.batch_size = config.batch_size
        scores = window_scores(_scored(name, lm, windows["window"].to_list()), config.min_k)
        parts.append(windows.select("period").with_row_index("window_id").with_columns(
            model=pl.lit(name), **{k: pl.Series(v) for k, v in scores.items()}))
    frontier_nll = parts[0]["nll"]  # the frontier is probed first, always
    scores = pl.concat([part.with_columns(frontier_nll=pl.lit(None, pl.Float64) if name == "frontier" else frontier_nll)
                        for (name, _, _), part in zip(models, parts)])
    curves = per_period(scores)
    cutoffs = effective_cutoffs(scores, config.period, config.resamples, config.level, config.significance,
                                config.seed, stated={name: stated for name, _, stated in models})
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    curves.write_parquet(out / "probe_cutoff.parquet")
    scores.write_parquet(out / "probe_windows.parquet")
    cutoffs.write_parquet(out / "effective_cutoffs.parquet")
    plot_curves(curves, cutoffs, out / "probe_cutoff.png", f"{split.name}: {which.split(' (')[0]}, by {config.period}")
    return {"curves": curves, "cutoffs": cutoffs}


def plot_curves(curves: pl.DataFrame, cutoffs: pl.DataFrame, path: Path, title: str) -> None:
    """One panel per metric, one line per model; a significant knee as a dashed line at the cutoff with its
    interval shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if curves[m].null_count() < curves.height]
    labels = {"perplexity": "perplexity (held-out windows)",
              "min_k_prob": "Min-K% prob (mean log-prob of the least likely tokens)",
              "perplexity_ratio": "perplexity / the frontier's (same windows)"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (model,) in enumerate(curves.select("model").unique(maintain_order=True).iter_rows()):
        color = colors[i % len(colors)]
        part = curves.filter(pl.col("model") == model)
        for ax, metric in zip(axes[0], metrics):
            knee = cutoffs.filter((pl.col("model") == model) & (pl.col("metric") == metric))
            if knee.is_empty():
                continue
            knee = knee.row(0, named=True)
            label = f"{model}: knee {knee['cutoff']}" if knee["knee"] else f"{model}: no knee (p={knee['p_value']:.2f})"
            ax.plot(part["period"].to_list(), part[metric].to_list(), marker=".", color=color, label=label)
            if knee["knee"]:
                ax.axvline(knee["cutoff"], color=color, linestyle="--", linewidth=1)
                ax.axvspan(knee["low"], knee["high"], color=color, alpha=0.12)
    for ax, metric in zip(axes[0], metrics):
        ax.set(xlabel="start of the period (knowledge date)", ylabel=labels[metric],
               yscale="log" if metric != "min_k_prob" else "linear")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
