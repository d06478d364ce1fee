"""A backtest spec: queries, model registry, methods and resources; validated when loaded from YAML.

    queries: out/demo/world/synthetic-market/queries.parquet
    registry: out/demo/models
    output: out/demo/backtest
    methods: [{name: frontier}, {name: surrogate}, {name: point_in_time}, {name: retrained}]

A bare `{name: point_in_time}` (no mode and no knob) is the recommended method (vintage/recommended.py); with
`alpha` or `plausibility` alone it is the linear contrast.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Literal

from corpora.config import doc
from corpora.files import short_hash
from vintage import recommended
from vintage.modes import FALLBACK_MODES, LINEAR_ALPHA

METHODS = ("frontier", "surrogate", "point_in_time", "retrained")


@dataclass
class MethodSpec:
    """One way of answering the queries."""

    name: Literal["frontier", "surrogate", "point_in_time", "retrained"] = doc(
        "frontier alone; the vintage surrogate alone; the frontier steered to the vintage; the gold retrained model")
    alpha: float | Literal["calibrated"] | None = doc(
        "point_in_time, linear and adaptive modes: contrast strength, or 'calibrated': the alpha recorded in the "
        "registry's manifest (an opt-in; the pipeline records none); unset: 0.5", None)
    plausibility: float | None = doc("point_in_time: plausibility mask (fraction of the frontier's top "
                                     "probability); unset: none (or the recommended method's, for a bare "
                                     "point_in_time)", None)
    mode: Literal["linear", "rank", "switch", "blend", "adaptive"] | None = doc(
        "point_in_time: linear contrast (alpha); rank (ban the k tokens the full surrogate prefers most over the "
        "vintage); switch (the vintage's distribution wherever the pair diverges by more than `margin`); blend (a "
        "mixture of the frontier and that distribution weighted by the divergence above `margin` over `width`); "
        "adaptive (the linear contrast at alpha times that weight). Unset: the recommended method "
        "(vintage/recommended.py) when no knob is set either, else linear", None)
    surrogate: Literal["neural", "ngram"] = doc("surrogate and point_in_time: the vintage pair is the trained "
                                                "transformers (neural) or the registry's n-gram counts (ngram)",
                                                "neural")
    confidence: Literal["raw", "matched"] = doc("point_in_time: surrogates as they are (raw) or divided by the "
                                                "registry's fitted temperatures (matched to the frontier's "
                                                "confidence)", "raw")
    fallback: Literal["neural", "ngram"] | None = doc(
        "switch and blend modes: whose vintage replaces the frontier where the gate fires; unset: the gating pair's own. "
        "surrogate: ngram with fallback: neural gates with the n-gram pair (selective) and answers like the trained "
        "vintage (confident, as a retrained model is)", None)
    k: int = doc("rank mode: tokens banned per step", 1)
    margin: float | None = doc("rank, switch, blend, adaptive: minimum log p_full - log p_vintage to act on a token; "
                               "unset: 0", None)
    width: float = doc("blend and adaptive: the divergence above `margin` at which they act in full", 1.0)
    gate_probability: float | None = doc(
        "switch, blend, adaptive: a token's divergence counts toward the gate only where the full surrogate gives it "
        "at least this probability (on text neither surrogate learnt their disagreement is noise); unset: every "
        "token", None)
    label: str | None = doc("name in the result table; default: name (with alpha for point_in_time)", None)

    def __post_init__(self):
        knobs = (self.alpha, self.plausibility, self.mode, self.margin, self.gate_probability)
        if self.name != "point_in_time" and (any(v is not None for v in knobs) or self.width != 1.0 or self.k != 1
                                             or self.confidence != "raw"):
            raise ValueError(f"method {self.name!r}: alpha, plausibility, mode, margin, k, width, gate_probability "
                             f"and confidence apply to point_in_time only")
        if self.name == "point_in_time":
            self._resolve_steering(bare=all(v is None for v in knobs) and self.width == 1.0 and self.k == 1)
        if self.gate_probability is not None and (self.mode not in ("switch", "blend", "adaptive")
                                                  or not 0 < self.gate_probability <= 1):
            raise ValueError(f"method {self.key}: gate_probability is a probability in (0, 1] for the gated modes "
                             f"(switch, blend, adaptive), got {self.gate_probability} with mode {self.mode}")
        if self.name in ("frontier", "retrained") and self.surrogate != "neural":
            raise ValueError(f"method {self.name!r}: surrogate applies to surrogate and point_in_time only")
        if self.fallback is not None and (self.name != "point_in_time" or self.mode not in FALLBACK_MODES):
            raise ValueError(f"method {self.key}: fallback applies to point_in_time with mode: "
                             f"{' or '.join(sorted(FALLBACK_MODES))} only")
        if not self.width > 0:
            raise ValueError(f"method {self.name!r}: width must be > 0, got {self.width}")
        if self.k < 1:
            raise ValueError(f"method {self.name!r}: k must be >= 1, got {self.k}")
        if isinstance(self.alpha, float) and not 0 <= self.alpha <= 4:
            raise ValueError(f"method {self.name!r}: alpha {self.alpha} outside [0, 4]")

    def _resolve_steering(self, bare: bool) -> None:
        """Fill the unset knobs: a bare point_in_time takes the recommended method's mode and knobs, any other the
        mode's defaults (linear; alpha 0.5, margin 0, no mask, no gate), so the fields name what is decoded."""
        if bare:
            chosen = recommended.STEERING
            self.mode, self.margin, self.plausibility = chosen.mode, chosen.margin, chosen.plausibility
            self.gate_probability, self.k, self.width = chosen.gate_probability, chosen.k, chosen.width
            self.alpha = chosen.alpha if chosen.mode in ("linear", "adaptive") else LINEAR_ALPHA
            return
        self.mode = self.mode or "linear"
        self.alpha = LINEAR_ALPHA if self.alpha is None else self.alpha
        self.margin = 0.0 if self.margin is None else self.margin

    @property
    def key(self) -> str:
        if self.label:
            return self.label
        kind = ",ngram" if self.surrogate == "ngram" else ""
        if self.name == "point_in_time":
            mask = f",mask={self.plausibility}" if self.plausibility is not None else ""
            matched = ",matched" if self.confidence == "matched" else ""
            if self.mode == "rank":
                return f"point_in_time(rank,k={self.k},margin={self.margin}{mask}{matched}{kind})"
            fallback = f",fallback={self.fallback}" if self.fallback and self.fallback != self.surrogate else ""
            gate = f",gate_p={self.gate_probability}" if self.gate_probability is not None else ""
            if self.mode == "switch":
                return f"point_in_time(switch,margin={self.margin}{mask}{matched}{kind}{fallback}{gate})"
            if self.mode == "blend":
                return (f"point_in_time(blend,margin={self.margin},width={self.width}{mask}{matched}{kind}{fallback}"
                        f"{gate})")
            if self.mode == "adaptive":
                return (f"point_in_time(adaptive,alpha={self.alpha},margin={self.margin},width={self.width}"
                        f"{mask}{matched}{kind}{gate})")
            return f"point_in_time(alpha={self.alpha}{mask}{matched}{kind})"
        return f"{self.name}(ngram)" if kind else self.name


@dataclass
class Resources:
    """How scoring is spread over the cluster."""

    actors: int = doc("scoring actors (each loads the models once)", 1)
    cpus_per_actor: float = doc("CPUs reserved per actor", 1.0)
    gpus_per_actor: float = doc("GPUs per actor (0: CPU)", 0.0)
    batch_size: int = doc("queries per map_batches call", 64)
    threads: int = doc("torch threads per actor", 1)


@dataclass
class BacktestSpec:
    """What to backtest and where the results go."""

    methods: list[MethodSpec] = doc("methods to compare")
    queries: str = doc("queries parquet (query_id, as_of, prompt, choices, answer; optional kind, "
                       "asset, realized_return); the end-to-end pipeline fills it in", "")
    registry: str = doc("model registry directory (vintage surrogates, full, optional frontier/retrained); "
                        "the end-to-end pipeline fills it in", "")
    output: str = doc("result directory: results/ and errors/ parquet datasets, report; the end-to-end "
                      "pipeline fills it in", "")
    frontier: str | None = doc("frontier model directory; default: the registry's frontier/", None)
    kinds: list[str] | None = doc("only queries of these kinds (e.g. [fact, forecast]); default: all", None)
    resources: Resources = doc("actors and their resources", default=None)
    effective_cutoff: str | None = doc("vintage cutoff whose held-out perplexity curve is probed; 'auto': the "
                                       "first retrained cutoff, else the middle vintage; null: skip", "auto")
    effective_cutoff_period: str = doc("bucket of the effective-cutoff curve (polars duration: 1mo, 1q, 1y)", "1mo")
    dtype: Literal["auto", "float32", "bfloat16"] = doc(
        "what the neural models compute in: float32; bfloat16 (torch.autocast, weights and every log-softmax stay "
        "float32); auto: bfloat16 where the hardware runs it natively, else float32. Recorded in run.json; results "
        "of one dtype are not reused for another", "float32")

    def __post_init__(self):
        if self.resources is None:
            self.resources = Resources()
        if not self.methods:
            raise ValueError("methods: at least one method is required")
        keys = [m.key for m in self.methods]
        if len(set(keys)) != len(keys):
            raise ValueError(f"methods: two methods share a name ({keys}); give one a `label`")
        cutoff = self.effective_cutoff
        if cutoff not in (None, "none", "auto") and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(cutoff)):
            # checked here, not after the scoring (`off` used to be looked up as a vintage once every pair was scored)
            raise ValueError(f"effective_cutoff: expected 'auto', null (skip) or a vintage cutoff YYYY-MM-DD, "
                             f"got {cutoff!r}")

    def run_id(self, manifest: dict) -> str:
        """Hash of what determines the answers: the spec (less output and resources) and the models."""
        what = {k: v for k, v in asdict(self).items() if k not in ("output", "resources")}
        models = {k: manifest.get(k) for k in ("config_hash", "tokenizer_hash", "cutoffs", "models", "calibration")}
        return short_hash(json.dumps([what, models], sort_keys=True, default=str))
