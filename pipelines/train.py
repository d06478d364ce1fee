"""Train vintage surrogates (and, for embedded worlds, the frontier and retrained gold) into a registry.

    python -m pipelines.train --config configs/train/tiny.yaml
"""
from __future__ import annotations

import argparse
import sys

from corpora.config import load_yaml, parse_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    from vintage.runs import train_registry
    from vintage.train_config import TrainConfig

    config = load_yaml(args.config, TrainConfig, parse_overrides(args.set))
    import ray

    ray.init(ignore_reinit_error=True)  # no address: local, or the cluster under `ray job submit`
    manifest = train_registry(config)
    print(f"registry {config.output}: vintages {manifest['cutoffs']}, complete={manifest['complete']}")
    return 0 if manifest["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
