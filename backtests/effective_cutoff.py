"""Effective-cutoff probe (Dated Data, Cheng et al. 2024): perplexity of held-out documents period by period.

A model that has only read data up to t finds documents after t harder: its curve rises after t. The
frontier's does not. The documents are the run's validation documents (never trained on by any model).
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from vintage.holdout import heldout_documents
from vintage.registry import Registry


def effective_cutoff(registry: str | Path | Registry, cutoff: str, methods: list, frontier: str | Path | None = None,
                     period: str = "1mo") -> pl.DataFrame:
    """Rows (period, method, documents, perplexity) for the vintage at `cutoff`: each of `methods` (backtest
    MethodSpecs; models built as the backtest's Scorer builds them) on the held-out documents of each period.
    Rank mode is left out: it bans tokens outright, so its perplexity is infinite by construction."""
    import torch

    from backtests.runner import Scorer
    from vintage.registry import RegistryError

    registry = registry if isinstance(registry, Registry) else Registry(registry)
    docs = heldout_documents(registry)
    scorer = Scorer({"registry": str(registry.root), "methods": [], "frontier": frontier}, run_id="effective-cutoff",
                    threads=torch.get_num_threads())
    scorers = {}
    for method in methods:
        if method.name == "point_in_time" and method.mode == "rank":
            continue
        try:
            lm, _ = scorer.lm(method, cutoff)
        except RegistryError as err:  # e.g. a calibrated alpha the registry does not hold for this vintage
            print(f"[effective-cutoff] {method.key} left out: {err}", flush=True)
            continue
        if lm is not None:  # None: no retrained model at this cutoff
            scorers[method.key] = lm.perplexity
    return perplexity_by_period(docs, scorers, period)


def perplexity_by_period(docs: pl.DataFrame, scorers: dict, period: str = "1mo") -> pl.DataFrame:
    """Rows (period, method, documents, perplexity): each scorer (texts -> perplexity) on the documents of
    each `period` of knowledge_date ("1mo", "1q", ...)."""
    docs = docs.with_columns(period=pl.col("knowledge_date").dt.truncate(period))
    rows = []
    for name, perplexity in scorers.items():
        for (when,), part in docs.group_by("period", maintain_order=True):
            rows.append(dict(period=when, method=name, documents=part.height,
                             perplexity=float(perplexity(part["text"].to_list()))))
    return pl.DataFrame(rows).sort("method", "period")
