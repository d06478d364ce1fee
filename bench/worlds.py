"""Sizes and generation times of every preset of both embedded worlds.

    python bench/worlds.py                 # all presets (bench takes ~30 s)
    python bench/worlds.py --presets tiny small
"""
from __future__ import annotations

import argparse
import time

from corpora.worlds import generate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "bench"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| world | preset | documents | word tokens | events | queries | leaks | first .. last | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for name in ("synthetic-market", "real-market"):
        for preset in args.presets:
            started = time.perf_counter()
            world = generate_world(name, preset, args.seed)
            seconds = time.perf_counter() - started
            s = world.summary()
            print(f"| {name} | {preset} | {s['documents']:,} | {s['word_tokens']:,} | {s['events']:,} | "
                  f"{sum(s['queries'].values()):,} | {sum(s['leaks'].values()):,} | "
                  f"{s['first_published']} .. {s['last_published']} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
