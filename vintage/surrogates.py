"""Surrogate kinds behind one registry of loaders: `@surrogate("neural")`, `@surrogate("ngram")`.

A kind says how its vintage at a cutoff is loaded from a model registry and what it is (a fingerprint that
changes when the model does: fitted temperatures, calibrations and backtest caches carry it). Adding a
kind is one decorated class here; decoding, backtests, serving and temperature fitting take any kind.
"""
from __future__ import annotations

from typing import Callable

from vintage.registry import Registry, RegistryError, model_fingerprint


class SurrogateKind:
    """How one kind of surrogate is loaded and identified."""

    name = ""

    def load(self, registry: Registry, cutoff: str, **kwargs):
        raise NotImplementedError

    def fingerprint(self, registry: Registry, cutoff: str) -> str:
        raise NotImplementedError


KINDS: dict[str, SurrogateKind] = {}


def surrogate(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in KINDS:
            raise ValueError(f"surrogate kind {name!r} registered twice")
        cls.name = name
        KINDS[name] = cls()
        return cls
    return decorate


def kind(name: str) -> SurrogateKind:
    if name not in KINDS:
        raise ValueError(f"surrogate kind must be one of {sorted(KINDS)}, got {name!r}")
    return KINDS[name]


def load_surrogate(registry: Registry, kind_name: str, cutoff: str, **kwargs):
    """The `kind_name` surrogate of `registry` at `cutoff`, in eval mode."""
    return kind(kind_name).load(registry, cutoff, **kwargs)


def surrogate_fingerprint(registry: Registry, kind_name: str, cutoff: str) -> str:
    """What the `kind_name` surrogate at `cutoff` is: it changes exactly when the model does."""
    return kind(kind_name).fingerprint(registry, cutoff)


@surrogate("neural")
class Neural(SurrogateKind):
    """The trained network of vintages/CUTOFF/ (safetensors only; `kwargs` go to `from_pretrained`)."""

    def load(self, registry: Registry, cutoff: str, **kwargs):
        from vintage.compact import load_causal_lm

        return load_causal_lm(registry.vintage_path(cutoff), **kwargs)

    def fingerprint(self, registry: Registry, cutoff: str) -> str:
        return model_fingerprint(registry.vintage_path(cutoff))


@surrogate("ngram")
class Ngram(SurrogateKind):
    """The n-gram counts of ngram/ summed to the vintage (vintage/ngram.py); no training."""

    def load(self, registry: Registry, cutoff: str, compute: str = "float32", **kwargs):
        """`compute` is accepted and has no effect: the counts are exact, no forward pass runs in a dtype."""
        from vintage.ngram import NgramLM

        if kwargs:
            raise RegistryError(f"the ngram surrogate takes no loading options, got {sorted(kwargs)}")
        return NgramLM.from_registry(registry, cutoff)

    def fingerprint(self, registry: Registry, cutoff: str) -> str:
        from vintage.ngram import ngram_fingerprint

        return ngram_fingerprint(registry.root / "ngram", cutoff)
