"""What a complete registry gets besides trained models: n-gram counts, the surrogates' fitted temperatures and
each vintage's label-free strength, redone only where something changed."""
from __future__ import annotations

from pathlib import Path

from vintage.registry import Registry
from vintage.surrogates import surrogate_fingerprint
from vintage.train_config import TrainConfig


def finish_registry(config: TrainConfig, registry: Path) -> dict:
    """What a complete registry gets besides trained models: n-gram counts (new slices only), the
    surrogates' confidence-matching temperatures and each vintage's held-out strength (redone where a model
    changed)."""
    if config.ngram is not None:
        from vintage.ngram import count_slices

        count_slices(registry, config.split, config.ngram.order, config.holdout_every, config.ngram.engine,
                     min_count=config.ngram.min_count)
    reg = Registry(registry)
    if config.fit_temperatures and reg.has_frontier():
        kinds = ["neural"] + (["ngram"] if config.ngram is not None else [])
        if stale_temperatures(reg, kinds):
            from vintage.temperature import fit_registry_temperatures

            fit_registry_temperatures(reg, config.split, kinds, holdout_every=config.holdout_every)
    if config.calibrate_strength and reg.has_frontier() and stale_strengths(reg):
        from vintage.strength import calibrate_registry_strength

        calibrate_registry_strength(reg)
    return Registry(registry).manifest


def stale_temperatures(registry, kinds) -> bool:
    """True when a surrogate lacks a fitted temperature or its model changed since the fit."""
    fitted = registry.manifest.get("temperatures", {})
    for kind in kinds:
        for cutoff in registry.cutoffs():
            entry = fitted.get(kind, {}).get(cutoff)
            if entry is None or entry.get("fingerprint") != surrogate_fingerprint(registry, kind, cutoff):
                return True
    return False


def stale_strengths(registry) -> bool:
    """True when a vintage (but the full one) has no calibrated alpha or one measured on other models; a labelled
    calibration (`vintage calibrate`) of the same models is kept."""
    from vintage.registry import model_fingerprint

    frontier = model_fingerprint(registry.frontier_path())
    full = surrogate_fingerprint(registry, "neural", registry.full_cutoff())
    recorded = registry.manifest.get("calibration", {})
    for cutoff in registry.cutoffs()[:-1]:
        prints = recorded.get(cutoff, {}).get("fingerprints", {})
        if prints != {"frontier": frontier, "full": full, "vintage": surrogate_fingerprint(registry, "neural", cutoff)}:
            return True
    return False
