"""Run a backtest spec: score the queries with every method (Ray Data actors), probe the effective cutoff,
write the report.

    python -m pipelines.backtest --config configs/backtest/demo.yaml
"""
from __future__ import annotations

import argparse
import sys

from corpora.config import load_yaml, parse_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    args = parser.parse_args(argv)
    from backtests.spec import BacktestSpec
    from backtests.workflow import run_and_report

    spec = load_yaml(args.config, BacktestSpec, parse_overrides(args.set))
    import ray

    ray.init(ignore_reinit_error=True)  # no address: local, or the cluster under `ray job submit`
    run_and_report(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
