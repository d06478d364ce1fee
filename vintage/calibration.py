"""Choose alpha per vintage on labelled probes, never as a constant (RESEARCH.md experiment 3).

On fact queries after the cutoff, the point-in-time answer probabilities should match the reference's
(a model retrained at the cutoff where one exists, else the vintage surrogate); on fact queries before
it, accuracy must stay within `max_pre_drop` of the frontier's. Among the alphas of the grid that keep
the second, the one closest to the reference on the first wins (ties: the smaller alpha).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from vintage.decoding import PointInTimeLM, ScoredChoices
from vintage.surrogates import load_surrogate, surrogate_fingerprint

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(0, 41))  # 0 .. 2


@dataclass
class Probe:
    prompt: str
    choices: list[str]
    answer: str


@dataclass
class CalibrationResult:
    alpha: float
    reference: str  # "retrained" or "vintage"
    distance: float  # mean |p_pit(answer) - p_ref(answer)| on post-cutoff probes at the chosen alpha
    post_accuracy: float
    pre_accuracy: float
    frontier_pre_accuracy: float
    n_post: int
    n_pre: int
    table: list[dict] = field(default_factory=list)  # per alpha: distance, post/pre accuracy, admissible

    def evidence(self) -> dict:
        return asdict(self)


def answer_probability(scored: ScoredChoices, choices: Sequence[str], answer: str) -> float:
    return scored.probabilities()[list(choices).index(answer)]


def accuracy(scored: Sequence[ScoredChoices], probes: Sequence[Probe]) -> float:
    hits = [s.prediction == list(p.choices).index(p.answer) for s, p in zip(scored, probes)]
    return sum(hits) / max(1, len(hits))


def calibrate_alpha(lm: PointInTimeLM, post: Sequence[Probe], pre: Sequence[Probe],
                    reference_post: Sequence[ScoredChoices], reference: str = "retrained",
                    grid: Sequence[float] = DEFAULT_GRID, max_pre_drop: float = 0.05) -> CalibrationResult:
    """`reference_post`: the reference model's scores of `post` (same order)."""
    if not post or not pre:
        raise ValueError(f"calibration needs probes on both sides of the cutoff (post: {len(post)}, pre: {len(pre)})")
    for probe in (*post, *pre):
        if probe.answer not in probe.choices:
            raise ValueError(f"probe {probe.prompt!r}: answer {probe.answer!r} is not one of {probe.choices}")
    post_parts = lm.choice_components([p.prompt for p in post], [p.choices for p in post])
    pre_parts = lm.choice_components([p.prompt for p in pre], [p.choices for p in pre])
    ref_p = [answer_probability(s, p.choices, p.answer) for s, p in zip(reference_post, post)]
    frontier_pre = accuracy(lm.score_components(pre_parts, alpha=0.0), pre)
    table = []
    for alpha in grid:
        post_scores = lm.score_components(post_parts, alpha=alpha)
        pre_scores = lm.score_components(pre_parts, alpha=alpha)
        pit_p = [answer_probability(s, p.choices, p.answer) for s, p in zip(post_scores, post)]
        row = dict(alpha=float(alpha), distance=sum(abs(a - b) for a, b in zip(pit_p, ref_p)) / len(post),
                   post_accuracy=accuracy(post_scores, post), pre_accuracy=accuracy(pre_scores, pre))
        row["admissible"] = row["pre_accuracy"] >= frontier_pre - max_pre_drop
        table.append(row)
    admissible = [r for r in table if r["admissible"]] or [min(table, key=lambda r: r["alpha"])]
    best = min(admissible, key=lambda r: (round(r["distance"], 12), r["alpha"]))
    return CalibrationResult(alpha=best["alpha"], reference=reference, distance=best["distance"],
                             post_accuracy=best["post_accuracy"], pre_accuracy=best["pre_accuracy"],
                             frontier_pre_accuracy=frontier_pre, n_post=len(post), n_pre=len(pre), table=table)


def calibrate_registry(registry, queries: str, frontier: str | None = None, grid: Sequence[float] = DEFAULT_GRID,
                       max_pre_drop: float = 0.05) -> dict[str, dict]:
    """`alpha="calibrated"` made possible: `calibrate_alpha` for every neural vintage of `registry` but the full one
    (its contrast is zero) on the fact queries of `queries` (parquet: kind, as_of, prompt, choices, answer), those
    asked after the cutoff day against those before it; the reference is the model retrained at the cutoff
    (seed 0) where the registry has one, else the vintage surrogate. Each vintage's evidence, with the fingerprints
    of the models it was measured on, goes to the manifest's `calibration[cutoff]` (Registry.record_calibration).
    A vintage without facts on both sides of its cutoff is skipped and named."""
    import polars as pl
    from vintage.compact import load_causal_lm
    from transformers.utils import logging as hf_logging

    from corpora.timeline import known_by_expr
    from vintage.registry import Registry, model_fingerprint
    from vintage.tokenizer import load_tokenizer

    hf_logging.disable_progress_bar()
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    facts = pl.read_parquet(queries).filter(pl.col("kind") == "fact").with_columns(
        pl.col("as_of").dt.convert_time_zone("UTC"))
    if facts.is_empty():
        raise ValueError(f"{queries}: no fact queries (kind == 'fact') to calibrate on")
    tokenizer = load_tokenizer(registry.tokenizer_path())
    load = load_causal_lm
    frontier_dir = frontier or registry.frontier_path()
    frontier_model, full = load(frontier_dir), load_surrogate(registry, "neural", registry.full_cutoff())
    found = {}
    for cutoff in registry.cutoffs()[:-1]:
        known = known_by_expr("as_of", cutoff)
        sides = {side: [Probe(p, list(c), a) for p, c, a in zip(q["prompt"], q["choices"], q["answer"])]
                 for side, q in (("post", facts.filter(~known)), ("pre", facts.filter(known)))}
        if not sides["post"] or not sides["pre"]:
            print(f"[calibrate] {cutoff}: skipped, fact queries after / before the cutoff: "
                  f"{len(sides['post'])} / {len(sides['pre'])}", flush=True)
            continue
        vintage = load_surrogate(registry, "neural", cutoff)
        seeds = registry.retrained_seeds(cutoff)
        reference_dir = registry.retrained_path(cutoff, seeds[0]) if seeds else registry.vintage_path(cutoff)
        alone = PointInTimeLM(load(reference_dir) if seeds else vintage, None, None, tokenizer)
        reference = alone.score([p.prompt for p in sides["post"]], [p.choices for p in sides["post"]])
        lm = PointInTimeLM(frontier_model, vintage, full, tokenizer, alpha=1.0)
        result = calibrate_alpha(lm, sides["post"], sides["pre"], reference, "retrained" if seeds else "vintage",
                                 grid, max_pre_drop)
        evidence = {**result.evidence(), "queries": str(queries),
                    "fingerprints": {"frontier": model_fingerprint(Path(frontier_dir)),
                                     "full": surrogate_fingerprint(registry, "neural", registry.full_cutoff()),
                                     "vintage": surrogate_fingerprint(registry, "neural", cutoff)}}
        registry.record_calibration(cutoff, evidence)
        found[cutoff] = evidence
        print(f"[calibrate] {cutoff}: alpha {result.alpha:g} (reference {result.reference}: distance "
              f"{result.distance:.3f}; pre-cutoff accuracy {result.pre_accuracy:.2f}, the frontier's "
              f"{result.frontier_pre_accuracy:.2f}; {result.n_post} / {result.n_pre} facts after / before)", flush=True)
    return found
