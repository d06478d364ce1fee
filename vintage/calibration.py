"""Choose alpha per vintage on labelled probes, never as a constant (RESEARCH.md experiment 3).

On fact queries after the cutoff, the point-in-time answer probabilities should match the reference's
(a model retrained at the cutoff where one exists, else the vintage surrogate); on fact queries before
it, accuracy must stay within `max_pre_drop` of the frontier's. Among the alphas of the grid that keep
the second, the one closest to the reference on the first wins (ties: the smaller alpha).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from vintage.decoding import PointInTimeLM, ScoredChoices

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
