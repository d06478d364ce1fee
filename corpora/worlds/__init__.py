"""Embedded worlds: dated corpora with ground truth that tests, benchmarks and the demo generate offline."""
from __future__ import annotations

from corpora.worlds import real_market, synthetic_market
from corpora.worlds.base import LEAK_SCHEMA, World, read_world

WORLDS = {
    "synthetic-market": synthetic_market,
    "real-market": real_market,
}


def generate_world(name: str, preset: str = "small", seed: int = 0) -> World:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; expected one of {sorted(WORLDS)}")
    return WORLDS[name].generate(preset, seed=seed)


__all__ = ["LEAK_SCHEMA", "WORLDS", "World", "generate_world", "read_world"]
