"""The `vintage` command: one subcommand per stage, each a thin wrapper over the library.

    vintage world --name synthetic-market --preset tiny --seed 0 --out out/world
    vintage validate --config configs/corpora/example.yaml --out out/validated
    vintage split --config configs/split/synthetic_small.yaml
    vintage train --config configs/train/tiny.yaml
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from corpora.config import ConfigError


def _world(args) -> int:
    from corpora.worlds import generate_world

    started = time.perf_counter()
    print(f"generating {args.name} (preset {args.preset}, seed {args.seed}) ...", flush=True)
    world = generate_world(args.name, args.preset, args.seed)
    generated = time.perf_counter() - started
    world.info["generation_seconds"] = round(generated, 3)
    world.write(args.out)
    print_world_summary(world, Path(args.out), generated)
    return 0


def print_world_summary(world, out: Path, seconds: float) -> None:
    s = world.summary()
    print(f"{s['world']} / {s['preset']} / seed {s['seed']}  →  {out}")
    print(f"  documents    {s['documents']:>10,}   ({s['first_published']} .. {s['last_published']})")
    print(f"  word tokens  {s['word_tokens']:>10,}")
    print(f"  events       {s['events']:>10,}")
    print("  queries      " + ", ".join(f"{k} {v:,}" for k, v in s["queries"].items()))
    print("  leaks        " + (", ".join(f"{k} {v:,}" for k, v in s["leaks"].items()) or "none planted"))
    print(f"  generated in {seconds:.2f} s", flush=True)


def _validate(args) -> int:
    import pyarrow.parquet as pq

    from corpora.config import load_yaml, parse_overrides
    from corpora.validation import CorpusConfig, load_corpus

    config = load_yaml(args.config, CorpusConfig, parse_overrides(args.set))
    corpus = load_corpus(config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(corpus.documents, out / "documents.parquet")
    pq.write_table(corpus.quarantine, out / "quarantine.parquet")
    print(corpus.summary())
    print(f"wrote {out / 'documents.parquet'} and {out / 'quarantine.parquet'}")
    return 0


def _split(args) -> int:
    from pipelines.split import main as split_main

    return split_main(["--config", args.config] + [f"--set={pair}" for pair in args.set])


def _train(args) -> int:
    from pipelines.train import main as train_main

    return train_main(["--config", args.config] + [f"--set={pair}" for pair in args.set])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vintage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    world = commands.add_parser("world", help="generate an embedded world (corpus + ground truth)")
    world.add_argument("--name", default="synthetic-market", choices=["synthetic-market", "real-market"])
    world.add_argument("--preset", default="small", choices=["tiny", "small", "bench"])
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--out", required=True, help="directory to write (replaced atomically)")
    world.set_defaults(func=_world)

    validate = commands.add_parser("validate", help="read and validate a corpus; write documents + quarantine")
    validate.add_argument("--config", required=True, help="YAML with a CorpusConfig")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    validate.add_argument("--out", required=True)
    validate.set_defaults(func=_validate)

    split = commands.add_parser("split", help="split a corpus into point-in-time slices (Ray Data)")
    split.add_argument("--config", required=True, help="YAML with a SplitConfig")
    split.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    split.set_defaults(func=_split)

    train = commands.add_parser("train", help="train vintage surrogates into a model registry (Ray Train)")
    train.add_argument("--config", required=True, help="YAML with a TrainConfig")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"vintage {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
