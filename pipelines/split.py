"""Split a corpus into point-in-time slices (Ray Data).

    python -m pipelines.split --config configs/split/synthetic_small.yaml
    python -m pipelines.split --config configs/split/synthetic_small.yaml --set output=out/split2 --set engine=polars
    python -m pipelines.split --config configs/split/synthetic_small.yaml --dry-run   # the audit, nothing written
"""
from __future__ import annotations

import argparse
import sys

from corpora.config import load_yaml, parse_overrides
from corpora.split import SplitConfig, run_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--dry-run", action="store_true", help="print the audit; write no slices")
    args = parser.parse_args(argv)
    config = load_yaml(args.config, SplitConfig, parse_overrides(args.set))
    if config.engine == "ray":
        import ray

        # no address: local, or the cluster under `ray job submit`; one thread per worker (polars would
        # otherwise start a thread per core in every task)
        ray.init(ignore_reinit_error=True,
                 runtime_env={"env_vars": {"POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1"}})
    result = run_split(config, dry_run=args.dry_run)
    m = result.manifest
    where = "dry run, nothing written" if args.dry_run else f"→ {result.output}"
    print(f"split {where}: {m['documents']:,} documents in {len(m['slices'])} slices; "
          f"quarantined {m['quarantined']}; re-dated {m['redated_by_filter']}")
    if not args.dry_run and not result.skipped:
        print(f"audit: {result.output / 'audit.parquet'}, {result.output / 'audit_moves.parquet'}"
              + (f", {result.output / 'audit_shifts.png'}" if (result.output / 'audit_shifts.png').exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
