"""The recommended point-in-time method: what every entry point uses when it is given no method.

`PointInTimeLM.from_registry`, a backtest's bare `{name: point_in_time}`, `vintage ask` and `vintage serve` all
read it from here; change it here and nowhere else (README "Point-in-time decoding" quotes the evidence).
"""
from __future__ import annotations

# The linear contrast at alpha 0.5, no plausibility mask. Evidence (RESEARCH.md, "What a real corpus and a real
# pretrained frontier showed"): with a real 135M frontier it cost 1.08-1.09x the frontier's perplexity before the
# cutoff (1.16-1.18x after: the bend), alpha 1 cost 1.33-1.39x, switch mode 6-9x (unusable for text). With a 0.1
# plausibility mask alpha 0.5 was more fluent still (1.04x), but that was measured once, on one registry, and the
# tiny pipeline's backtest cannot tell the two apart (configs/tiny.yaml's registry: masks 0.1 and 0.3 gave the same
# 336 answers as no mask; its models are near chance), so the mask waits for a measurement at the demo's scale.
# It needs nothing the pipeline does not write (no calibrated alpha, no fitted temperatures), so it works on every
# registry; a calibrated alpha stays an explicit opt-in (alpha="calibrated").
ALPHA = 0.5
PLAUSIBILITY: float | None = None

# the same method as a serving spec string (serving/methods.py parses it)
SPEC = f"linear alpha={ALPHA:g}" + ("" if PLAUSIBILITY is None else f" plausibility={PLAUSIBILITY:g}")
