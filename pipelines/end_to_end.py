"""The whole pipeline from one config: worlds now; split, training, backtest and report as they land.

    python -m pipelines.end_to_end --config configs/tiny.yaml --out out/tiny
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corpora.config import doc, load_yaml, parse_overrides


@dataclass
class WorldSpec:
    """One embedded world to generate."""

    name: Literal["synthetic-market", "real-market"] = doc("which world")
    preset: Literal["tiny", "small", "bench"] = doc("size preset", "small")
    seed: int = doc("random seed (same seed, identical tables)", 0)


@dataclass
class EndToEndConfig:
    """What the end-to-end pipeline runs."""

    worlds: list[WorldSpec] = doc("worlds to generate, each into OUT/world/<name>")


def run(config: EndToEndConfig, out: Path) -> None:
    from corpora.worlds import generate_world
    from pipelines.cli import print_world_summary

    started = time.perf_counter()
    for i, spec in enumerate(config.worlds, 1):
        print(f"[world {i}/{len(config.worlds)}] {spec.name} preset={spec.preset} seed={spec.seed}", flush=True)
        t0 = time.perf_counter()
        world = generate_world(spec.name, spec.preset, spec.seed)
        seconds = time.perf_counter() - t0
        world.info["generation_seconds"] = round(seconds, 3)
        target = out / "world" / spec.name
        world.write(target)
        print_world_summary(world, target, seconds)
    print(f"done in {time.perf_counter() - started:.1f} s; outputs under {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_yaml(args.config, EndToEndConfig, parse_overrides(args.set))
    run(config, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
