"""Memorisation probe: every model of a registry on a world's ground-truth facts, before and after cutoffs.

    vintage probe-facts --registry out/demo/models --world out/demo/world/synthetic-market

A fact query (`kind == "fact"`) is "pre" a cutoff when its `as_of` is within the cutoff day (the split's
rule), else "post". The contrastive method only has something to remove if the frontier and the full
surrogate know the post-cutoff facts while a vintage does not; the checks below say whether that holds:

- frontier accuracy on facts after the first vintage cutoff >= 0.9;
- full surrogate accuracy on the same facts >= 0.8;
- each vintage (not the full one) on facts after its cutoff no better than the retrained models at that
  cutoff (or, where none was retrained, than chance 0.5), allowing for noise: 1.96 standard errors of the
  difference of two accuracies near 0.5 (the vintage's and the retrained models', both estimated on
  these facts; against chance only the vintage's), so a vintage that guesses is not flagged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from corpora.timeline import known_by_expr
from vintage.registry import Registry

FRONTIER_POST_MIN = 0.9
FULL_POST_MIN = 0.8


@dataclass
class ProbeResult:
    scores: pl.DataFrame  # one row per (model, fact): model, role, cutoff, query_id, as_of, correct, p_answer
    table: pl.DataFrame  # per model and side of a cutoff: n, accuracy
    checks: pl.DataFrame  # check, model, value, bound, passed

    @property
    def passed(self) -> bool:
        return bool(self.checks["passed"].all())


def registry_models(registry: Registry) -> list[tuple[str, str, str, Path]]:
    """(name, role, cutoff, directory) of every model in the registry."""
    models = []
    full = registry.full_cutoff()
    if registry.has_frontier():  # trained, or the user's own (external_frontier)
        models.append(("frontier", "frontier", full, registry.frontier_path()))
    for cutoff in registry.cutoffs():
        role = "full" if cutoff == full else "vintage"
        models.append((f"vintages/{cutoff}", role, cutoff, registry.vintage_path(cutoff)))
    base = registry.root / "retrained"
    for cutoff in sorted(p.name for p in base.iterdir()) if base.exists() else []:
        for seed in registry.retrained_seeds(cutoff):
            models.append((f"retrained/{cutoff}/seed={seed}", "retrained", cutoff,
                           registry.retrained_path(cutoff, seed)))
    return models


def fact_queries(world: str | Path) -> pl.DataFrame:
    path = Path(world) / "queries.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{world}: no queries.parquet (expected a world directory from `vintage world`)")
    queries = pl.from_arrow(pq.read_table(path))
    if "kind" in queries.columns:
        queries = queries.filter(pl.col("kind") == "fact")
    if queries.height == 0:
        raise ValueError(f"{path}: no fact queries to probe with")
    return queries


def score_models(registry: Registry, queries: pl.DataFrame, batch_size: int = 64) -> pl.DataFrame:
    """Each model alone (frontier-only scoring) on every fact query."""
    from vintage.compact import load_causal_lm

    from vintage.decoding import PointInTimeLM
    from vintage.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(registry.tokenizer_path())
    prompts, choices = queries["prompt"].to_list(), queries["choices"].to_list()
    answers = [list(c).index(a) for c, a in zip(choices, queries["answer"].to_list())]
    frames = []
    for name, role, cutoff, directory in registry_models(registry):
        model = load_causal_lm(directory)
        lm = PointInTimeLM(model, None, None, tokenizer, alpha=0.0, batch_size=batch_size)
        scored = lm.score(prompts, choices)
        frames.append(pl.DataFrame({
            "model": name, "role": role, "cutoff": cutoff, "query_id": queries["query_id"],
            "as_of": queries["as_of"], "correct": [s.prediction == a for s, a in zip(scored, answers)],
            "p_answer": [s.probabilities()[a] for s, a in zip(scored, answers)]}))
    return pl.concat(frames)


def _after(cutoff: str) -> pl.Expr:
    return ~known_by_expr("as_of", cutoff)


def summarise(scores: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    table = (scores.with_columns(side=pl.when(_after_each()).then(pl.lit("post")).otherwise(pl.lit("pre")))
             .group_by("model", "role", "cutoff", "side").agg(n=pl.len(), accuracy=pl.col("correct").mean())
             .sort("model", "side"))
    cutoffs = sorted(set(scores.filter(pl.col("role").is_in(["vintage", "full"]))["cutoff"].to_list()))
    checks = []
    if cutoffs:
        first = cutoffs[0]
        for role, bound in (("frontier", FRONTIER_POST_MIN), ("full", FULL_POST_MIN)):
            part = scores.filter((pl.col("role") == role) & _after(first))
            if part.height:
                value = float(part["correct"].mean())
                checks.append(dict(check=f"{role} accuracy on facts after {first}", model=part["model"][0],
                                   value=value, bound=bound, passed=value >= bound))
    retrained = scores.filter(pl.col("role") == "retrained")
    for cutoff in cutoffs[:-1]:
        part = scores.filter((pl.col("role") == "vintage") & (pl.col("cutoff") == cutoff) & _after(cutoff))
        if part.height == 0:
            continue
        gold = retrained.filter((pl.col("cutoff") == cutoff) & _after(cutoff))
        reference = float(gold["correct"].mean()) if gold.height else 0.5
        # 95% bound on the difference of two accuracies near 0.5; chance (no gold model) is exact
        noise = 1.96 * math.sqrt(0.25 / part.height + (0.25 / gold.height if gold.height else 0.0))
        value = float(part["correct"].mean())
        checks.append(dict(check=f"vintage {cutoff} on facts after it <= "
                                 f"{'retrained' if gold.height else 'chance'} + noise",
                           model=f"vintages/{cutoff}", value=value, bound=reference + noise,
                           passed=value <= reference + noise))
    schema = {"check": pl.String, "model": pl.String, "value": pl.Float64, "bound": pl.Float64, "passed": pl.Boolean}
    return table, pl.DataFrame(checks, schema=schema)


def _after_each() -> pl.Expr:
    """Per row: is the fact public only after the row's model cutoff (the end of that day)?"""
    day_end = (pl.col("cutoff").str.to_date().cast(pl.Datetime("us", "UTC")) + pl.duration(days=1)
               - pl.duration(microseconds=1))
    return pl.col("as_of") > day_end


def probe_facts(registry: str | Path, world: str | Path) -> ProbeResult:
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    scores = score_models(registry, fact_queries(world))
    table, checks = summarise(scores)
    return ProbeResult(scores, table, checks)
