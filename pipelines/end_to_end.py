"""The whole pipeline from one config: worlds, split; training, backtest and report as they land.

    python -m pipelines.end_to_end --config configs/tiny.yaml --out out/tiny
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from corpora.config import doc, load_yaml, parse_overrides
from corpora.split import DEFAULT_FILTERS, CutoffRule
from backtests.spec import BacktestSpec
from vintage.train_config import TrainConfig


@dataclass
class WorldSpec:
    """One embedded world to generate."""

    name: Literal["synthetic-market", "real-market"] = doc("which world")
    preset: Literal["tiny", "small", "sparse", "frontier", "bench"] = doc("size preset (sparse, frontier: synthetic-market only)",
                                                              "small")
    seed: int = doc("random seed (same seed, identical tables)", 0)


@dataclass
class SplitStage:
    """Split one generated world into point-in-time slices (OUT/split/<world>)."""

    world: Literal["synthetic-market", "real-market"] = doc("which generated world to split", "synthetic-market")
    cutoffs: list[dt.datetime] | None = doc("explicit cutoffs", None)
    cutoff_rule: CutoffRule | None = doc("calendar rule for cutoffs", None)
    filters: dict[str, Any] = doc("leakage filters and their parameters", default=DEFAULT_FILTERS)
    engine: Literal["ray", "polars"] = doc("ray (Ray Data) or polars (one process)", "ray")


@dataclass
class EndToEndConfig:
    """What the end-to-end pipeline runs."""

    worlds: list[WorldSpec] = doc("worlds to generate, each into OUT/world/<name>")
    frontier: str | None = doc("your own pretrained frontier for every stage (a Hugging Face causal LM directory "
                               "with safetensors and its tokenizer): it fills train.frontier, so none is trained "
                               "and its tokenizer is the run's; the backtest finds it in the registry. Checked "
                               "before the worlds are made; unset: the train section says", None)
    split: SplitStage | None = doc("the split stage; omitted: stop after the worlds", None)
    train: TrainConfig | None = doc("training (split, output and probes are filled in: OUT/split/<world>, "
                                    "OUT/models, the world's fact queries); omitted: stop after the split", None)
    backtest: BacktestSpec | None = doc("the backtest (queries, registry and output are filled in: the world's "
                                        "queries, OUT/models, OUT/backtest); omitted: stop after training", None)

    def __post_init__(self):
        if self.frontier is None:
            return
        if self.train is None:
            raise ValueError("frontier: your own frontier serves the training and the backtest; add a train section")
        if self.train.frontier is not None and self.train.frontier != self.frontier:
            raise ValueError(f"frontier: {self.frontier} and train.frontier: {self.train.frontier} disagree; "
                             f"give one of them")
        from dataclasses import replace

        self.train = replace(self.train, frontier=self.frontier)


def run(config: EndToEndConfig, out: Path) -> None:
    from corpora.worlds import generate_world
    from pipelines.cli import print_world_summary

    started = time.perf_counter()
    if config.train is not None and config.train.frontier_dir:  # a bad frontier fails before any work
        from vintage.train_config import check_external_frontier

        info = check_external_frontier(config.train, where="train.frontier")
        print(f"[frontier] {info.path}: {info.architecture}, {info.tokenizer_tokens:,} tokens, context "
              f"{info.context}; not trained: its tokenizer is the run's", flush=True)
    for i, spec in enumerate(config.worlds, 1):
        print(f"[world {i}/{len(config.worlds)}] {spec.name} preset={spec.preset} seed={spec.seed}", flush=True)
        t0 = time.perf_counter()
        world = generate_world(spec.name, spec.preset, spec.seed)
        seconds = time.perf_counter() - t0
        world.info["generation_seconds"] = round(seconds, 3)
        target = out / "world" / spec.name
        world.write(target)
        print_world_summary(world, target, seconds)
    if config.split is not None:
        run_split_stage(config.split, out)
        if config.train is not None:
            run_train_stage(config.train, config.split.world, out)
            if config.backtest is not None:
                run_backtest_stage(config.backtest, config.split.world, out)
    print(f"done in {time.perf_counter() - started:.1f} s; outputs under {out}")


def run_split_stage(stage: SplitStage, out: Path) -> None:
    from corpora.leak_scores import score_split
    from corpora.split import SplitConfig, StaleSplitError, run_split
    from corpora.timeline import cutoff_end
    from corpora.validation import CorpusConfig
    from corpora.worlds import read_world

    world = read_world(out / "world" / stage.world)
    corpus = CorpusConfig(path=str(out / "world" / stage.world / "documents.parquet"),
                          corpus_end=cutoff_end(world.info["corpus_end"]))  # the whole last day
    config = SplitConfig(corpus=corpus, output=str(out / "split" / stage.world), cutoffs=stage.cutoffs,
                         cutoff_rule=stage.cutoff_rule, filters=stage.filters, engine=stage.engine)
    print(f"[split] {stage.world}: {len(config.cutoff_dates())} cutoffs, filters {list(stage.filters)}, "
          f"engine {stage.engine}", flush=True)
    if stage.engine == "ray":
        import ray

        ray.init(ignore_reinit_error=True)
    try:
        result = run_split(config)
    except StaleSplitError as err:  # this pipeline owns OUT/split: a split of an older world is replaced (any
        # other SplitError, such as no valid document, is the user's to read)
        print(f"[split] replacing a stale split ({err})")
        shutil.rmtree(config.output)
        result = run_split(config)
    m = result.manifest
    print(f"[split] {m['documents']:,} documents in {len(m['slices'])} slices → {result.output}")
    print(f"        quarantined {m['quarantined']}; re-dated {m['redated_by_filter']}")
    if world.leaks.num_rows:
        scores = score_split(result.output, world.leaks)
        print("[split] planted leaks handled (recall by kind): " + ", ".join(
            f"{r['kind']} {r['handled']}/{r['planted']}" for r in scores["by_kind"].to_dicts()))
        print("[split] precision by filter: " + ", ".join(
            f"{r['filter']} {r['precision']:.2f}" for r in scores["by_filter"].to_dicts()), flush=True)


def run_train_stage(train: TrainConfig, world: str, out: Path) -> dict:
    from dataclasses import replace

    from vintage.runs import train_registry

    config = replace(train, split=str(out / "split" / world), output=str(out / "models"),
                     probes=train.probes or str(out / "world" / world / "queries.parquet"))
    roles = [f"surrogates ({config.schedule}, {config.surrogate.preset})"]
    if config.frontier_role:
        roles.append(f"frontier ({config.frontier_role.preset})")
    elif config.frontier_dir:
        roles.append(f"no frontier (yours: {config.frontier_dir})")
    if config.retrained:
        roles.append(f"retrained ({config.retrained.preset}) at {config.retrained_cutoffs} "
                     f"seeds {config.retrained.seeds}")
    print(f"[train] {', '.join(roles)}; {config.parallel_runs} runs at once", flush=True)
    t0 = time.perf_counter()
    manifest = train_registry(config)
    print(f"[train] registry {config.output}: {len(manifest['cutoffs'])} vintages, complete={manifest['complete']} "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    if not manifest["complete"]:
        raise SystemExit("[train] some runs failed; rerun to continue from their checkpoints")
    return manifest


def run_backtest_stage(spec: BacktestSpec, world: str, out: Path) -> None:
    from dataclasses import replace

    import polars as pl

    from backtests.metrics import headline
    from backtests.report import latest_run
    from backtests.runner import read_table
    from backtests.workflow import run_and_report

    spec = replace(spec, queries=spec.queries or str(out / "world" / world / "queries.parquet"),
                   registry=spec.registry or str(out / "models"), output=spec.output or str(out / "backtest"))
    print(f"[backtest] {len(spec.methods)} methods: {[m.key for m in spec.methods]}", flush=True)
    report = run_and_report(spec)
    from backtests import storage

    results = latest_run(read_table(storage.join(spec.output, "results")), spec.output)
    with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True, float_precision=3, tbl_width_chars=200,
                   fmt_str_lengths=60):
        print(headline(results, ("kind", "method") if "kind" in results.columns else ("method",)))
    print(f"[backtest] report: {report}; plots beside it", flush=True)


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
