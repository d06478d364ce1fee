"""Decoding methods for ask and serve: one spec string (or mapping) parsed by one function into a `Method`.

    frontier                       the frontier alone (no steering)
    linear alpha=0.5 [plausibility=0.3]     alpha=calibrated: the vintage's alpha from the registry (vintage/strength.py)
    rank k=1 [margin=0] [plausibility=0.1]
    switch [margin=0] [plausibility=0.1] [gate_probability=0.3]
    blend [margin=0] [width=1] [plausibility=0.1] [gate_probability=0.3]
    adaptive alpha=2 [margin=0] [width=1] [plausibility=0.1] [gate_probability=0.3]

The modes are vintage/modes.py's registry and a Method is a `Steering` of it (`Method.steering()`), with the
backtest spec's defaults
(margin 0, no plausibility mask, temperatures 1). The default for requests that name no method is
DEFAULT_METHOD, the recommended method of vintage/recommended.py (defined there, not here).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from vintage import recommended
from vintage.modes import LINEAR_ALPHA, MODES as REGISTERED, Steering, steer

# The method used when a request or `vintage ask` names none: the one PointInTimeLM.from_registry and a backtest's
# bare point_in_time use too.
DEFAULT_METHOD = recommended.SPEC

MODES = tuple(REGISTERED)  # frontier, linear, rank, switch, blend, adaptive
KNOBS = {"frontier": (), "linear": ("alpha", "plausibility"), "rank": ("k", "margin", "plausibility"),
         "switch": ("margin", "plausibility", "gate_probability"),
         "blend": ("margin", "width", "plausibility", "gate_probability"),
         "adaptive": ("alpha", "margin", "width", "plausibility", "gate_probability")}
OPTIONAL = ("plausibility", "gate_probability")  # knobs whose None (unset) is left out of a spec


CALIBRATED = "calibrated"


class MethodError(ValueError):
    """A method spec that names an unknown mode or knob, or a knob out of range."""


@dataclass(frozen=True)
class Method:
    """One way of decoding: the mode and its knobs (hashable: requests with equal methods share a combine)."""

    mode: str
    alpha: float | str = LINEAR_ALPHA  # linear, adaptive: contrast strength in [0, 4], or "calibrated"
    k: int = 1  # rank: tokens banned per step (>= 1)
    margin: float = 0.0  # rank, switch, blend, adaptive: minimum log p_full - log p_vintage to act on
    width: float = 1.0  # blend and adaptive: the divergence above margin at which they act in full
    plausibility: float | None = None  # fraction of the frontier's top probability; None: no mask
    gate_probability: float | None = None  # gated modes: the full surrogate's probability a token needs to gate

    @property
    def calibrated(self) -> bool:
        """Whether the strength is each vintage's recorded one (`at_vintage` resolves it)."""
        return self.alpha == CALIBRATED

    def at_vintage(self, registry, cutoff: str) -> "Method":
        """This method with a calibrated alpha replaced by the one `registry` records for `cutoff`."""
        if not self.calibrated:
            return self
        return dataclasses.replace(self, alpha=registry.calibrated_alpha(cutoff))

    def steering(self) -> Steering:
        """This method as a decoding mode with its settings (what PointInTimeLM and the server combine with);
        a calibrated alpha must be resolved first (`at_vintage`)."""
        if self.calibrated:
            raise MethodError(f"method {self.spec!r}: resolve the calibrated alpha for a vintage first (at_vintage)")
        if self.mode == "linear":
            return Steering("linear", alpha=self.alpha, plausibility=self.plausibility)
        if self.mode == "frontier":
            return Steering("frontier")
        if self.mode == "adaptive":
            return Steering("adaptive", alpha=self.alpha, margin=self.margin, width=self.width,
                            plausibility=self.plausibility, gate_probability=self.gate_probability)
        return Steering(self.mode, k=self.k, margin=self.margin, width=self.width, plausibility=self.plausibility,
                        gate_probability=self.gate_probability)

    @property
    def steered(self) -> bool:
        """Whether the surrogates are needed at all (the frontier alone and alpha 0 need none)."""
        return self.calibrated or self.steering().steered

    @property
    def spec(self) -> str:
        """The canonical spec string (parse_method(m.spec) == m)."""
        parts = [self.mode] + [f"{knob}={getattr(self, knob)}" for knob in KNOBS[self.mode]
                               if not (knob in OPTIONAL and getattr(self, knob) is None)]
        return " ".join(parts)

    def lm_kwargs(self) -> dict:
        """The PointInTimeLM constructor settings of this method (from_registry(..., **m.lm_kwargs()))."""
        return {"steering": self.steering()}

    def logprobs(self, frontier: torch.Tensor, vintage: torch.Tensor | None, full: torch.Tensor | None) -> torch.Tensor:
        """Next-token log-probs [..., V] from the three models' logits; the same arithmetic as
        PointInTimeLM._combine (one function, vintage.modes.steer), so served answers equal PointInTimeLM's."""
        return steer(self.steering(), frontier, vintage, full)


def _number(mode: str, knob: str, value: Any, kind: type):
    if isinstance(value, str):
        text = value.strip()
        if knob == "alpha" and text == CALIBRATED:
            return CALIBRATED
        if knob in OPTIONAL and text.lower() in ("none", "null", ""):
            return None
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise MethodError(f"method {mode}: {knob}={value!r} is not {'an integer' if kind is int else 'a number'}"
                              ) from None
    if value is None and knob in OPTIONAL:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise MethodError(f"method {mode}: {knob}={value!r} is not {'an integer' if kind is int else 'a number'}")
    return kind(value)


def parse_method(spec: str | Mapping[str, Any] | None) -> Method:
    """'linear alpha=0.5' or {"mode": "linear", "alpha": 0.5} → Method; None → DEFAULT_METHOD."""
    if spec is None:
        spec = DEFAULT_METHOD
    if isinstance(spec, Mapping):
        knobs = dict(spec)
        mode = knobs.pop("mode", None)
    elif isinstance(spec, str):
        words = spec.split()
        if not words:
            raise MethodError(f"method is empty; expected one of {', '.join(MODES)} (e.g. {DEFAULT_METHOD!r})")
        mode, knobs = words[0], {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise MethodError(f"method {spec!r}: {word!r} is not key=value")
            knobs[key] = value
    else:
        raise MethodError(f"method must be a string such as {DEFAULT_METHOD!r} or a mapping with a 'mode', "
                          f"got {type(spec).__name__}")
    if mode not in MODES:
        raise MethodError(f"unknown method {mode!r}; expected one of {', '.join(MODES)} (e.g. {DEFAULT_METHOD!r})")
    unknown = sorted(set(knobs) - set(KNOBS[mode]))
    if unknown:
        allowed = ", ".join(KNOBS[mode]) or "none"
        raise MethodError(f"method {mode}: unknown setting(s) {unknown}; {mode} takes {allowed}")
    values = {knob: _number(mode, knob, value, int if knob == "k" else float) for knob, value in knobs.items()}
    method = Method(mode, **values)
    if method.alpha != CALIBRATED and not 0 <= method.alpha <= 4:
        raise MethodError(f"method {mode}: alpha {method.alpha} outside [0, 4]")
    if method.k < 1:
        raise MethodError(f"method {mode}: k must be >= 1, got {method.k}")
    if not method.width > 0:
        raise MethodError(f"method {mode}: width must be > 0, got {method.width}")
    for knob in OPTIONAL:
        value = getattr(method, knob)
        if value is not None and not 0 < value <= 1:
            raise MethodError(f"method {mode}: {knob} must be in (0, 1], got {value}")
    return method
