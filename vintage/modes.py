"""Decoding modes: how the logits of a frontier and of a vintage surrogate pair become one next-token
distribution. Each mode is registered by name (`@mode("linear")`), takes the models' logits [..., V] in one
order, (frontier, vintage, full, fallback), and returns float32 log-probs; `Steering` is one frozen value
naming the mode and holding its settings, and `steer` applies it.

    linear:  log_softmax( lp_F + alpha * m * (lp_S_t - lp_S_full) )

with lp_M = log_softmax(logits_M / T_M) for each model M, and m the plausibility mask (1 where the
frontier gives the token at least `plausibility` x its top probability, else 0; None: all ones). The
bracket is what the small model learned after the cutoff; subtracting it removes that from the frontier.
Linear combination of log-probs as in unlearning-by-decoding (UCD, Suriyakumar et al. 2025; Divergence
Decoding, Merchant & Levy 2025), proxy-tuning (Liu et al. 2024) and DExperts; the mask is contrastive
decoding's adaptive plausibility constraint (Li et al. 2022), applied so that tokens outside the plausible
set keep the frontier's own log-prob rather than -inf: held-out perplexity stays finite (RESEARCH.md).

The gated modes read one number per position, the pair's divergence D = max over the frontier's plausible
tokens of (lp_S_full - lp_S_t): how much more the full surrogate expects some token than the vintage does,
i.e. whether the frontier is about to use something learnt after the cutoff. `switch` replaces the frontier's
distribution where D > margin; `blend` and `adaptive` act in proportion to w = clamp((D - margin) / width, 0, 1)
(`switch` is their limit as width -> 0). With `gate_probability`, D reads only the tokens the full surrogate gives at
least that probability (on text neither surrogate learnt, their disagreement is noise):

    blend:     log( (1 - w) p_F + w p_R )                         p_R: the fallback's or the vintage's
    adaptive:  log_softmax( lp_F + alpha * w * m * (lp_S_t - lp_S_full) )

A mixture never costs more than -log(1 - w) nats on a token the frontier predicts, and both leave every
position the pair agrees on (w = 0) exactly as the frontier has it: a fluent frontier stays fluent on text
that the surrogates do not tell apart (issue 26: switch mode replaced a real frontier at most positions).

A token a surrogate gives log-prob -inf is one it knows nothing about: a compact surrogate's id outside its
corpus's set (vintage/compact.py). There the contrast is 0 (linear, adaptive: the frontier's log-prob stands),
the token is never banned (rank) and never raises the gate's divergence, and a replacement distribution
(switch, blend) leaves the frontier's probability on such tokens and spreads the rest as the replacement says
(`known_or_frontier`). Surrogates over the whole vocabulary give no -inf: for them nothing changes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

MODES: dict[str, Callable] = {}  # name -> fn(frontier, vintage, full, fallback, steering) -> log-probs
# the linear contrast's strength where a method names the linear (or adaptive) mode but no alpha
LINEAR_ALPHA = 0.5
FALLBACK_MODES = frozenset({"switch", "blend"})  # the modes that can take a fallback model's distribution


def mode(name: str):
    """Register a decoding mode under `name`."""
    def register(fn):
        MODES[name] = fn
        return fn
    return register


@dataclass(frozen=True)
class Temperatures:
    frontier: float = 1.0
    vintage: float = 1.0
    full: float = 1.0
    fallback: float = 1.0  # switch mode with a separate fallback model

    def __post_init__(self):
        if min(self.frontier, self.vintage, self.full, self.fallback) <= 0:
            raise ValueError(f"temperatures must be > 0, got {self}")


@dataclass(frozen=True)
class Steering:
    """One decoding mode and its settings, named: `Steering("switch", margin=0.1, plausibility=0.3)`.

    frontier: the frontier alone. linear: the contrast at strength `alpha` (0: the frontier's own
    distribution). rank: ban the `k` most divergent plausible tokens whose divergence exceeds `margin`.
    switch: a vintage distribution where the pair diverges by more than `margin`. blend: a mixture of the
    frontier and that distribution, weighted by the divergence above `margin` over `width`; adaptive: the
    linear contrast at alpha times that weight. `plausibility` (all but frontier): the frontier's plausible set,
    a fraction of its top probability (None: every token)."""

    mode: str = "linear"
    alpha: float = 0.0
    plausibility: float | None = None
    k: int = 1
    margin: float = 0.0
    width: float = 1.0
    temperatures: Temperatures = Temperatures()
    gate_probability: float | None = None  # gated modes: only tokens the full surrogate gives at least this

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown decoding mode {self.mode!r}; known: {sorted(MODES)}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.plausibility is not None and not 0 < self.plausibility <= 1:
            raise ValueError(f"plausibility must be in (0, 1], got {self.plausibility}")
        if self.gate_probability is not None and not 0 < self.gate_probability <= 1:
            raise ValueError(f"gate_probability must be in (0, 1], got {self.gate_probability}")

    @property
    def steered(self) -> bool:
        """Whether the surrogates take part at all."""
        return self.mode != "frontier" and not (self.mode in ("linear", "adaptive") and self.alpha == 0)

    def at_alpha(self, alpha: float) -> "Steering":
        """The linear contrast at another strength; for the other modes alpha 0 is the frontier alone and any
        other value leaves them as they are (what an alpha sweep over a mixed set of methods needs)."""
        if self.mode in ("linear", "adaptive"):
            return dataclasses.replace(self, alpha=alpha)
        return dataclasses.replace(self, mode="frontier") if alpha == 0 else self


def steer(steering: Steering, frontier: torch.Tensor, vintage: torch.Tensor | None = None,
          full: torch.Tensor | None = None, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """The next-token log-probs [..., V] of `steering`'s mode."""
    if steering.steered and (vintage is None or full is None):
        raise ValueError("surrogate logits were not computed (alpha was 0 when they were scored)")
    return MODES[steering.mode if steering.steered else "frontier"](frontier, vintage, full, fallback, steering)


# -- the shared rules -----------------------------------------------------------------------------------------

def check_shapes(frontier: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every model's logits have the frontier's shape, or a ValueError naming each shape."""
    given = {name: t for name, t in others.items() if t is not None}
    if any(t.shape != frontier.shape for t in given.values()):
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in given.items())
        raise ValueError(f"logit shapes differ: frontier {tuple(frontier.shape)}, {shapes}")


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logits = logits.float()
    return F.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def plausible(lp_frontier: torch.Tensor, plausibility: float | None) -> torch.Tensor | None:
    """Tokens the frontier finds plausible: probability >= `plausibility` x its top one (None: no mask)."""
    if plausibility is None:
        return None
    if not 0 < plausibility <= 1:
        raise ValueError(f"plausibility must be in (0, 1], got {plausibility}")
    return lp_frontier >= lp_frontier.max(dim=-1, keepdim=True).values + math.log(plausibility)


def known_difference(lp_a: torch.Tensor, lp_b: torch.Tensor, unknown: float = 0.0) -> torch.Tensor:
    """lp_a - lp_b where both surrogates know the token (finite log-probs), `unknown` where either does not."""
    both = torch.isfinite(lp_a) & torch.isfinite(lp_b)
    difference = lp_a - lp_b
    return difference if bool(both.all()) else torch.where(both, difference, torch.full_like(difference, unknown))


def known_or_frontier(replacement: torch.Tensor, lp_frontier: torch.Tensor) -> torch.Tensor:
    """A replacement distribution over the tokens it knows, with the frontier's own probability left on the
    tokens it does not (-inf): p(x) = p_F(x) outside, P_F(known) p_R(x) on the known set; sums to one. Without
    unknown tokens, the replacement itself."""
    known = torch.isfinite(replacement)
    if bool(known.all()):
        return replacement
    frontier_known = torch.logsumexp(lp_frontier.masked_fill(~known, float("-inf")), dim=-1, keepdim=True)
    return torch.where(known, replacement + frontier_known, lp_frontier)


def divergence_gate(lp_frontier: torch.Tensor, lp_vintage: torch.Tensor, lp_full: torch.Tensor,
                    plausibility: float | None, gate_probability: float | None = None) -> torch.Tensor:
    """D [..., 1]: the largest lp_full - lp_vintage over the tokens the frontier finds plausible (and the pair
    knows); with `gate_probability`, over those the full surrogate also gives at least that probability: on text
    neither surrogate learnt (general prose beside a corpus of filings) their disagreement is noise, while a
    surrogate that learnt a fact after the cutoff predicts it with confidence."""
    if gate_probability is not None:
        return _confident_gate(lp_frontier, lp_vintage, lp_full, plausibility, gate_probability)
    divergence = known_difference(lp_full, lp_vintage, float("-inf"))
    mask = plausible(lp_frontier, plausibility)
    if mask is not None:
        divergence = divergence.masked_fill(~mask, float("-inf"))
    return divergence.max(dim=-1, keepdim=True).values


def _confident_gate(lp_frontier: torch.Tensor, lp_vintage: torch.Tensor, lp_full: torch.Tensor,
                    plausibility: float | None, gate_probability: float) -> torch.Tensor:
    """`divergence_gate` with `gate_probability`, exactly, without a pass over the vocabulary per rule: no more
    than 1 / gate_probability tokens can have that probability, so the maximum runs over the full surrogate's top
    ones (SmolLM2's 49k vocabulary, generation at batch 64 in bf16: the steered step from 1.47x the frontier's to
    1.20x; bench/RESULTS.md, session 18)."""
    if plausibility is not None and not 0 < plausibility <= 1:
        raise ValueError(f"plausibility must be in (0, 1], got {plausibility}")
    top, index = lp_full.topk(min(lp_full.shape[-1], int(1 / gate_probability) + 1), dim=-1)
    vintage = lp_vintage.gather(-1, index)
    eligible = (top >= math.log(gate_probability)) & torch.isfinite(vintage)  # known to both
    if plausibility is not None:
        floor = lp_frontier.max(dim=-1, keepdim=True).values + math.log(plausibility)
        eligible &= lp_frontier.gather(-1, index) >= floor
    return (top - vintage).masked_fill(~eligible, float("-inf")).max(dim=-1, keepdim=True).values


def gate_weight(gate: torch.Tensor, margin: float, width: float) -> torch.Tensor:
    """w = clamp((D - margin) / width, 0, 1): 0 where the pair agrees to within `margin`, 1 from margin + width."""
    return ((gate - margin) / width).clamp(0.0, 1.0)


# -- the modes --------------------------------------------------------------------------------------------------

@mode("frontier")
def _frontier(frontier, vintage, full, fallback, s: Steering) -> torch.Tensor:
    return log_probs(frontier, s.temperatures.frontier)


@mode("linear")
def _linear(frontier, vintage, full, fallback, s: Steering) -> torch.Tensor:
    return combine_logprobs(frontier, vintage, full, s.alpha, s.temperatures, s.plausibility)


@mode("rank")
def _rank(frontier, vintage, full, fallback, s: Steering) -> torch.Tensor:
    return rank_logprobs(frontier, vintage, full, s.k, s.margin, s.plausibility, s.temperatures)


@mode("switch")
def _switch(frontier, vintage, full, fallback, s: Steering) -> torch.Tensor:
    return switch_logprobs(frontier, vintage, full, s.margin, s.plausibility, s.temperatures, fallback, s.gate_probability)


@mode("blend")
def _blend(frontier, vintage, full, fallback, s: Steering) -> torch.Tensor:
    return blend_logprobs(frontier, vintage, full, s.margin, s.width, s.plausibility, s.temperatures, fallback,
                          s.gate_probability)


@mode("adaptive")
def _adaptive(frontier, vintage, full, fallback, s: Steering) -> torch.Tensor:
    return adaptive_logprobs(frontier, vintage, full, s.alpha, s.margin, s.width, s.plausibility, s.temperatures,
                             s.gate_probability)


def combine_logprobs(frontier: torch.Tensor, vintage: torch.Tensor, full: torch.Tensor, alpha: float,
                     temperatures: Temperatures = Temperatures(), plausibility: float | None = None) -> torch.Tensor:
    """Logits [..., V] of the three models → the combined next-token log-probs [..., V], float32.

    alpha = 0 returns the frontier's own log-softmax exactly.
    """
    check_shapes(frontier, vintage=vintage, full=full)
    lp_frontier = log_probs(frontier, temperatures.frontier)
    if alpha == 0:
        return lp_frontier
    contrast = alpha * known_difference(log_probs(vintage, temperatures.vintage), log_probs(full, temperatures.full))
    mask = plausible(lp_frontier, plausibility)
    if mask is not None:
        contrast = torch.where(mask, contrast, torch.zeros_like(contrast))
    return F.log_softmax(lp_frontier + contrast, dim=-1)


def rank_logprobs(frontier: torch.Tensor, vintage: torch.Tensor, full: torch.Tensor, k: int = 1,
                  margin: float = 0.0, plausibility: float | None = 0.1,
                  temperatures: Temperatures = Temperatures()) -> torch.Tensor:
    """Divergence Decoding's rank rule (Merchant & Levy 2025): forbid the `k` tokens whose
    `log p_full - log p_vintage` is largest (and above `margin`), among the tokens the frontier finds
    plausible (probability >= `plausibility` x its top one; None: all tokens), and otherwise keep the
    frontier's distribution untouched (renormalised over what is left). Magnitudes of the surrogates never
    enter, only their ranking, so it does not depend on their confidence matching the frontier's; and no
    token outside the banned set ever loses probability relative to the others (RESEARCH.md exp. 3)."""
    check_shapes(frontier, vintage=vintage, full=full)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    lp_frontier = log_probs(frontier, temperatures.frontier)
    if k == 0:
        return lp_frontier
    divergence = known_difference(log_probs(full, temperatures.full), log_probs(vintage, temperatures.vintage),
                                  float("-inf"))
    eligible = divergence > margin
    mask = plausible(lp_frontier, plausibility)
    if mask is not None:
        eligible &= mask
    ranked = torch.where(eligible, divergence, torch.full_like(divergence, float("-inf")))
    top = ranked.topk(min(k, ranked.shape[-1]), dim=-1)
    banned = torch.zeros_like(eligible).scatter(-1, top.indices, torch.isfinite(top.values))
    # never ban every token: the frontier's top token survives if everything else is banned
    everything = banned.all(dim=-1, keepdim=True)
    banned &= ~(everything & (lp_frontier == lp_frontier.max(dim=-1, keepdim=True).values))
    return F.log_softmax(lp_frontier.masked_fill(banned, float("-inf")), dim=-1)


def switch_logprobs(frontier: torch.Tensor, vintage: torch.Tensor, full: torch.Tensor, margin: float = 1.0,
                    plausibility: float | None = 0.1, temperatures: Temperatures = Temperatures(),
                    fallback: torch.Tensor | None = None, gate_probability: float | None = None) -> torch.Tensor:
    """Gated fallback: at a position where the full surrogate puts at least `margin` nats more log-prob than
    the vintage on some token the frontier finds plausible (probability >= `plausibility` x its top one),
    the frontier is about to use what was learnt after the cutoff, and a vintage distribution replaces it
    there: the `fallback` model's (logits of another vintage-`t` model) or, without one, the gating pair's
    vintage. Everywhere else the frontier's distribution is untouched.

    Unlike the linear contrast it needs no magnitude to match (the gate reads only the surrogates'
    disagreement), and unlike the rank rule it does not push toward the opposite answer: where it fires the
    answer is what the vintage believes, i.e. close to chance for facts it never saw. The gate relies on the
    pair agreeing on what both know (true of additive n-gram counts, much less of separately trained
    networks); what replaces the frontier should answer like a model trained to the cutoff (a trained
    network is confident, right or wrong, where a smoothed n-gram hedges): hence the gate from the n-gram
    pair and the fallback from the neural vintage (bench/fidelity.py measures each combination).
    """
    check_shapes(frontier, vintage=vintage, full=full, fallback=fallback)
    lp_frontier = log_probs(frontier, temperatures.frontier)
    lp_vintage = log_probs(vintage, temperatures.vintage)
    gate = divergence_gate(lp_frontier, lp_vintage, log_probs(full, temperatures.full), plausibility,
                           gate_probability) > margin
    fires = gate.squeeze(-1)
    if not bool(fires.any()):  # the usual case: nothing to replace
        return lp_frontier
    replacement = lp_vintage if fallback is None else log_probs(fallback, temperatures.fallback)
    steered = lp_frontier.clone()
    steered[fires] = known_or_frontier(replacement[fires], lp_frontier[fires])
    return steered


def blend_logprobs(frontier: torch.Tensor, vintage: torch.Tensor, full: torch.Tensor, margin: float = 0.5,
                   width: float = 1.0, plausibility: float | None = 0.1, temperatures: Temperatures = Temperatures(),
                   fallback: torch.Tensor | None = None, gate_probability: float | None = None) -> torch.Tensor:
    """The soft switch: log((1 - w) p_frontier + w p_replacement), w = gate_weight of the pair's divergence.

    The replacement is the `fallback` model's distribution or, without one, the gating pair's vintage (as in
    `switch_logprobs`). Where w = 0 the frontier's log-probs come back exactly, where w = 1 the replacement's."""
    check_shapes(frontier, vintage=vintage, full=full, fallback=fallback)
    lp_frontier = log_probs(frontier, temperatures.frontier)
    lp_vintage = log_probs(vintage, temperatures.vintage)
    w = gate_weight(divergence_gate(lp_frontier, lp_vintage, log_probs(full, temperatures.full), plausibility,
                                    gate_probability), margin, width)
    replacement = known_or_frontier(lp_vintage if fallback is None else log_probs(fallback, temperatures.fallback),
                                    lp_frontier)
    mixed = torch.logaddexp(torch.log1p(-w) + lp_frontier, torch.log(w) + replacement)
    return torch.where(w == 0, lp_frontier, torch.where(w == 1, replacement, mixed))


def adaptive_logprobs(frontier: torch.Tensor, vintage: torch.Tensor, full: torch.Tensor, alpha: float = 2.0,
                      margin: float = 0.5, width: float = 1.0, plausibility: float | None = 0.1,
                      temperatures: Temperatures = Temperatures(),
                      gate_probability: float | None = None) -> torch.Tensor:
    """The linear contrast at a per-position strength alpha * w (w = gate_weight of the pair's divergence), as
    FinCAD adapts its strength per entity and date: full strength where the frontier is about to use what the
    pair says was learnt after the cutoff, none where the pair agrees (there the frontier's log-probs exactly)."""
    check_shapes(frontier, vintage=vintage, full=full)
    lp_frontier = log_probs(frontier, temperatures.frontier)
    lp_vintage, lp_full = log_probs(vintage, temperatures.vintage), log_probs(full, temperatures.full)
    w = gate_weight(divergence_gate(lp_frontier, lp_vintage, lp_full, plausibility, gate_probability), margin,
                    width)
    contrast = alpha * w * known_difference(lp_vintage, lp_full)
    mask = plausible(lp_frontier, plausibility)
    if mask is not None:
        contrast = torch.where(mask, contrast, torch.zeros_like(contrast))
    return torch.where(w == 0, lp_frontier, F.log_softmax(lp_frontier + contrast, dim=-1))
