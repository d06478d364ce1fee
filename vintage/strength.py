"""A vintage's steering strength chosen without labels, on the corpus's own held-out documents (issue 38).

The surrogate pair says how much less likely post-cutoff text is to a model that never read past the cutoff than
to one that read everything, relative to pre-cutoff text: the pair's bend

    B_pair = mean_post(lp_full - lp_vintage) - mean_pre(lp_full - lp_vintage)      (nats per token)

A frontier retrained at the cutoff would bend as much against the frontier. The steered model's bend at strength
alpha is B(alpha) = mean_post(lp_F - lp_alpha) - mean_pre(lp_F - lp_alpha). The strength is the smallest alpha of
the grid with B(alpha) >= B_pair among those whose cost on pre-cutoff text, mean_pre(lp_F - lp_alpha), stays
within log(1 + max_pre_cost) (the frontier's fluency on what the vintage may know); if none reaches B_pair, the
largest admissible one. Nothing here reads a label, a query or a retrained model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

DEFAULT_GRID = tuple(0.25 * i for i in range(17))  # 0 .. 4, the range a method's alpha may take
MAX_PRE_COST = 0.05  # perplexity on pre-cutoff held-out text may rise by at most 5%
TOLERANCE = 1e-4  # nats per token: bends equal to float32 rounding count as equal


@dataclass
class StrengthResult:
    alpha: float
    pair_bend: float  # nats per token: what the pair says the steered model should lose on post-cutoff text
    bend: float  # the steered model's bend at `alpha`
    pre_cost: float  # perplexity ratio on pre-cutoff held-out text at `alpha` (1.0: unchanged)
    post_cost: float  # the same on post-cutoff held-out text
    reached: bool  # whether `bend` >= `pair_bend` (False: the pre-cutoff budget stopped it first)
    tokens_pre: int
    tokens_post: int
    reference: str = "held-out text"  # as vintage.calibration's results name theirs
    table: list[dict] = field(default_factory=list)  # per alpha: bend, pre_cost, post_cost, admissible

    def evidence(self) -> dict:
        return asdict(self)


def choose_strength(table: Sequence[dict], pair_bend: float, max_pre_cost: float = MAX_PRE_COST) -> dict:
    """The row of `table` (per alpha, ascending: `alpha`, `bend`, `pre_cost` as a perplexity ratio) that the
    module's rule picks; its `reached` says whether the bend met `pair_bend`."""
    rows = sorted(table, key=lambda r: r["alpha"])
    admissible = [r for r in rows if r["pre_cost"] <= 1 + max_pre_cost] or rows[:1]
    for row in admissible:
        if row["bend"] >= pair_bend - TOLERANCE:
            return {**row, "reached": True}
    return {**admissible[-1], "reached": False}


def _mean(parts: Sequence[torch.Tensor]) -> tuple[float, int]:
    flat = torch.cat([p for p in parts if len(p)]) if any(len(p) for p in parts) else torch.zeros(0)
    if not len(flat):
        raise ValueError("held-out text of two or more tokens is needed on each side of the cutoff")
    return float(flat.mean()), int(len(flat))


def heldout_strength(lm, before: Sequence[Sequence[int]], after: Sequence[Sequence[int]],
                     grid: Sequence[float] = DEFAULT_GRID, max_pre_cost: float = MAX_PRE_COST) -> StrengthResult:
    """The strength for `lm` (a PointInTimeLM whose steering takes an alpha: linear or adaptive) from held-out
    token-id sequences known by its cutoff (`before`) and not (`after`)."""
    from vintage.decoding import PointInTimeLM

    if lm.vintage is None or lm.full is None:
        raise ValueError("heldout_strength needs a PointInTimeLM with a surrogate pair")
    if lm.steering.mode not in ("linear", "adaptive"):
        raise ValueError(f"mode {lm.steering.mode} takes no alpha to calibrate")
    alone = lambda model: PointInTimeLM(model, None, None, lm.tokenizer, batch_size=lm.batch_size)  # noqa: E731
    sides = {"pre": before, "post": after}
    pair, swept, tokens = {}, {}, {}
    for side, ids in sides.items():
        full_mean, tokens[side] = _mean(alone(lm.full).ids_logprobs(ids))
        pair[side] = full_mean - _mean(alone(lm.vintage).ids_logprobs(ids))[0]
        at = lm.ids_logprobs_at(ids, [0.0, *grid])
        frontier = _mean(at[0])[0]
        swept[side] = [frontier - _mean(parts)[0] for parts in at[1:]]  # nats lost per token at each alpha
    pair_bend = pair["post"] - pair["pre"]
    table = [dict(alpha=float(a), bend=swept["post"][i] - swept["pre"][i], pre_cost=math.exp(swept["pre"][i]),
                  post_cost=math.exp(swept["post"][i])) for i, a in enumerate(grid)]
    for row in table:
        row["admissible"] = row["pre_cost"] <= 1 + max_pre_cost
    best = choose_strength(table, pair_bend, max_pre_cost)
    return StrengthResult(alpha=best["alpha"], pair_bend=pair_bend, bend=best["bend"], pre_cost=best["pre_cost"],
                          post_cost=best["post_cost"], reached=best["reached"], tokens_pre=tokens["pre"],
                          tokens_post=tokens["post"], table=table)


def calibrate_registry_strength(registry, frontier=None, max_docs: int = 64, grid: Sequence[float] = DEFAULT_GRID,
                                max_pre_cost: float = MAX_PRE_COST, progress: bool = True) -> dict[str, dict]:
    """`heldout_strength` of the linear contrast for every neural vintage of `registry` but the full one, on its
    held-out documents (at most `max_docs` a side, evenly spread, cut at the training window), recorded as the
    vintage's calibrated alpha (Registry.record_calibration) with its evidence and the fingerprints of the models
    it was measured on. A vintage without held-out text on both sides of its cutoff is skipped and named."""
    from pathlib import Path

    from transformers.utils import logging as hf_logging

    from corpora.timeline import known_by_expr
    from vintage.compact import load_causal_lm
    from vintage.decoding import PointInTimeLM
    from vintage.holdout import heldout_documents
    from vintage.presets import get_preset
    from vintage.registry import Registry, model_fingerprint
    from vintage.surrogates import load_surrogate, surrogate_fingerprint
    from vintage.tokenizer import load_tokenizer

    hf_logging.disable_progress_bar()
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    docs = heldout_documents(registry)
    tokenizer = load_tokenizer(registry.tokenizer_path())
    window = int(registry.manifest.get("window") or get_preset("tiny").n_positions)
    frontier_dir = Path(frontier or registry.frontier_path())
    frontier_model = load_causal_lm(frontier_dir)
    full = load_surrogate(registry, "neural", registry.full_cutoff())
    found = {}
    for cutoff in registry.cutoffs()[:-1]:
        known = known_by_expr("knowledge_date", cutoff)
        ids = {}
        for side, part in (("pre", docs.filter(known)), ("post", docs.filter(~known))):
            texts = part["text"].to_list()
            texts = texts[:: max(1, math.ceil(len(texts) / max_docs))]
            ids[side] = [e[:window] for e in tokenizer(texts, add_special_tokens=False)["input_ids"] if len(e) >= 2]
        if not ids["pre"] or not ids["post"]:
            print(f"[strength] {cutoff}: skipped, held-out documents before / after the cutoff: "
                  f"{len(ids['pre'])} / {len(ids['post'])}", flush=True)
            continue
        vintage = load_surrogate(registry, "neural", cutoff)
        lm = PointInTimeLM(frontier_model, vintage, full, tokenizer, alpha=1.0)
        result = heldout_strength(lm, ids["pre"], ids["post"], grid, max_pre_cost)
        evidence = {**result.evidence(), "documents_pre": len(ids["pre"]), "documents_post": len(ids["post"]),
                    "fingerprints": {"frontier": model_fingerprint(frontier_dir),
                                     "full": surrogate_fingerprint(registry, "neural", registry.full_cutoff()),
                                     "vintage": surrogate_fingerprint(registry, "neural", cutoff)}}
        registry.record_calibration(cutoff, evidence)
        found[cutoff] = evidence
        if progress:
            print(f"[strength] {cutoff}: alpha {result.alpha:g} (the pair's bend {result.pair_bend:.3f} nats/token, "
                  f"the steered model's {result.bend:.3f}{'' if result.reached else ', stopped by the pre-cutoff budget'}"
                  f"; perplexity x{result.pre_cost:.3f} before the cutoff, x{result.post_cost:.3f} after; "
                  f"{result.tokens_pre} / {result.tokens_post} held-out tokens)", flush=True)
    return found

