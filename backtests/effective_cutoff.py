"""Effective-cutoff probe (Dated Data, Cheng et al. 2024): perplexity of held-out documents period by period.

A model that has only read data up to t finds documents after t harder: its curve rises after t. The
frontier's does not. The documents are the run's validation documents (never trained on by any model).
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from corpora.split import read_slices
from vintage.registry import Registry


def heldout_documents(registry: Registry) -> pl.DataFrame:
    from vintage.runs import is_holdout

    config = registry.manifest["config"]
    docs = pl.from_arrow(read_slices(config["split"]).select(["doc_id", "knowledge_date", "text"]))
    every = int(config.get("holdout_every", 20))
    return docs.filter(pl.Series([is_holdout(d, every) for d in docs["doc_id"].to_list()]))


def effective_cutoff(registry: str | Path | Registry, cutoff: str, methods: dict[str, float],
                     frontier: str | Path | None = None, period: str = "1mo") -> pl.DataFrame:
    """Rows (period, method, documents, perplexity) for the vintage at `cutoff`. `methods` maps a name to
    how it is scored: "frontier", "surrogate", "retrained", or an alpha for the point-in-time combination
    (no plausibility mask: perplexity must not depend on it, RESEARCH.md exp. 2)."""
    from transformers import AutoModelForCausalLM

    from vintage.decoding import PointInTimeLM
    from vintage.tokenizer import load_tokenizer

    registry = registry if isinstance(registry, Registry) else Registry(registry)
    docs = heldout_documents(registry)
    load = lambda p: AutoModelForCausalLM.from_pretrained(str(p), use_safetensors=True).eval()  # noqa: E731
    tok = load_tokenizer(registry.tokenizer_path())
    front = load(frontier or registry.frontier_path())
    full, vintage = load(registry.full_path()), load(registry.vintage_path(cutoff))
    seeds = registry.retrained_seeds(cutoff)
    scorers = {}
    for name, how in methods.items():
        if how == "frontier":
            lm = PointInTimeLM(front, None, None, tok)
        elif how == "surrogate":
            lm = PointInTimeLM(vintage, None, None, tok)
        elif how == "retrained":
            if not seeds:
                continue
            lm = PointInTimeLM(load(registry.retrained_path(cutoff, seeds[0])), None, None, tok)
        else:
            lm = PointInTimeLM(front, full, vintage, tok, alpha=float(how))
        scorers[name] = lm.perplexity
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
