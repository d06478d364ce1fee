"""The recommended point-in-time method: what every entry point uses when it is given no method.

`PointInTimeLM.from_registry`, a backtest's bare `{name: point_in_time}`, `vintage probe-cutoff`, `vintage ask` and
`vintage serve` all read it from here; change it here and nowhere else (README "Point-in-time decoding" quotes the
evidence).
"""
from __future__ import annotations

from typing import Callable

from vintage.modes import LINEAR_ALPHA, Steering

# The switch gated on the full surrogate's confidence: where the full surrogate gives some token the frontier finds
# plausible (>= 0.3 x its top probability) at least probability 0.3 and at least 0.25 nats more log-prob than the
# vintage surrogate, the vintage's distribution replaces the frontier's; everywhere else the frontier stands.
# Evidence (bench/RESULTS.md, session 17), with the gold standard (the base retrained at the cutoff):
# - a real pretrained frontier (SmolLM2-135M continued on the fact world, compact `small` surrogates, 3 gold seeds):
#   0.94 of the look-ahead gap closed [0.82, 1.07], perplexity 1.00x the frontier's on the world's pre-cutoff text
#   and 1.02x on State of the Union addresses it never saw, forget-quality KS p 0.18 (the gold seeds' own median
#   0.51; margin 0.1 reaches 0.51 but misses the demo's pre-cutoff goal);
#   pre-cutoff facts 0.817 against the frontier's 0.883 (one query of 60 beyond the 0.05 allowed; the drop's 95%
#   interval over queries [0.00, 0.15]);
# - the demo world (embedded frontier): 0.87 of the gap closed [0.73, 1.03], pre-cutoff facts 0.883 against 0.933.
# The linear contrast at alpha 0.5 (the recommendation before) closed 0.44 and 0.06 of the gap there.
# It needs nothing the pipeline does not write (no calibrated strength, no fitted temperatures): it works on every
# registry.
STEERING = Steering("switch", margin=0.25, plausibility=0.3, gate_probability=0.3)

# the same method as a serving spec string (serving/methods.py parses it; a test checks the two agree)
SPEC = "switch margin=0.25 plausibility=0.3 gate_probability=0.3"


def resolve(alpha: float | str | None = None, plausibility: float | None = None, steering: Steering | None = None,
            calibrated: Callable[[], float] | None = None) -> Steering:
    """The steering a caller asked for: `steering` as given; the linear contrast where `alpha` or `plausibility`
    is set (alpha 0.5 where only a mask is; "calibrated": what `calibrated()` returns, the vintage's recorded
    strength); with none of them the recommended method."""
    linear = (alpha, plausibility) != (None, None)
    if steering is not None and linear:
        raise TypeError("pass either steering= or alpha=/plausibility= (the linear contrast), not both")
    if not linear:
        return steering or STEERING
    alpha = LINEAR_ALPHA if alpha is None else alpha
    if alpha == "calibrated":
        if calibrated is None:
            raise ValueError("alpha='calibrated' needs a registry that records the vintage's strength")
        alpha = calibrated()
    return Steering("linear", alpha, plausibility)
