"""A scheduled run after the corpus grows by a period: the split is redone over the grown corpus, only the
new vintage is trained (the chronological run continues from its kept checkpoint), only new queries are
scored, and everything equals a from-scratch run where the two overlap."""
import datetime as dt
import json
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from backtests.runner import read_table, run_backtest
from backtests.spec import BacktestSpec, MethodSpec
from corpora.split import SplitConfig, run_split
from corpora.validation import CorpusConfig
from corpora.worlds import generate_world
from tests.test_training import same_weights, tiny_config
from vintage.runs import train_registry

UTC = dt.timezone.utc
FIRST = [dt.datetime(2017, 6, 30, tzinfo=UTC), dt.datetime(2017, 12, 31, tzinfo=UTC)]
GROWN = FIRST + [dt.datetime(2018, 6, 30, tzinfo=UTC)]
pytestmark = pytest.mark.slow


def split(corpus, out, cutoffs):
    run_split(SplitConfig(corpus=CorpusConfig(path=str(corpus)), output=str(out), cutoffs=cutoffs, engine="polars"))
    return out


def backtest(base, registry, queries, out):
    pq.write_table(queries, base / f"{out.name}-queries.parquet")
    spec = BacktestSpec(queries=str(base / f"{out.name}-queries.parquet"), registry=str(registry), output=str(out),
                        methods=[MethodSpec(name="surrogate")], effective_cutoff=None)
    return run_backtest(spec, engine="local")


def test_a_new_period_trains_one_vintage_and_scores_only_new_queries(ray_local, tmp_path):
    world = generate_world("synthetic-market", "tiny", seed=0)
    docs, queries = world.documents, world.queries.filter(pc.equal(world.queries["kind"], "fact"))
    # period 1's corpus runs two months past its last cutoff: reports that corroborate a leak arrive weeks
    # after it, and without them the retrospective filter cannot catch it (then a later run re-dates the
    # document, the slice's content hash changes and the affected vintages are rightly trained again)
    end_first = dt.datetime(2018, 3, 1, tzinfo=UTC)
    (tmp_path / "corpus").mkdir()
    pq.write_table(docs.filter(pc.less(docs["published_at"], end_first)), tmp_path / "corpus" / "part-1.parquet")

    # period 1: split, train, backtest the queries known so far
    split(tmp_path / "corpus", tmp_path / "split-1", FIRST)
    registry = tmp_path / "models"
    t0 = time.perf_counter()
    first = train_registry(tiny_config(tmp_path, registry, split=str(tmp_path / "split-1")))
    first_seconds = time.perf_counter() - t0
    assert first["complete"] and first["cutoffs"] == ["2017-06-30", "2017-12-31"]
    stamps = {c: (registry / "vintages" / c / "model.safetensors").stat().st_mtime_ns for c in first["cutoffs"]}
    old_queries = queries.filter(pc.less(queries["as_of"], dt.datetime(2018, 7, 1, tzinfo=UTC)))
    one = backtest(tmp_path, registry, old_queries, tmp_path / "bt")

    # period 2: documents appended, a new cutoff
    pq.write_table(docs.filter(pc.greater_equal(docs["published_at"], end_first)), tmp_path / "corpus" / "part-2.parquet")
    split(tmp_path / "corpus", tmp_path / "split-2", GROWN)
    t0 = time.perf_counter()
    second = train_registry(tiny_config(tmp_path, registry, split=str(tmp_path / "split-2")))
    second_seconds = time.perf_counter() - t0
    assert second["complete"] and second["cutoffs"] == ["2017-06-30", "2017-12-31", "2018-06-30"]
    for c, stamp in stamps.items():  # the old vintages were not trained again
        assert (registry / "vintages" / c / "model.safetensors").stat().st_mtime_ns == stamp
    info = {c: second["models"][f"vintages/{c}"] for c in second["cutoffs"]}
    new_tokens = info["2018-06-30"]["tokens_seen"] - info["2017-12-31"]["tokens_seen"]
    assert new_tokens < info["2017-12-31"]["tokens_seen"]  # a fraction of the first run's training
    two = backtest(tmp_path, registry, queries, tmp_path / "bt")
    assert two.skipped == one.scored + one.errors and two.scored + two.errors == queries.num_rows - old_queries.num_rows

    # a from-scratch run on the grown corpus agrees wherever the two overlap
    scratch = tmp_path / "scratch"
    # (with the registry's tokenizer: in production it is the frontier's, fixed across periods)
    train_registry(tiny_config(tmp_path, scratch, split=str(tmp_path / "split-2"), tokenizer=str(registry / "tokenizer")))
    for c in second["cutoffs"]:
        assert same_weights(registry / "vintages" / c, scratch / "vintages" / c), c
    backtest(tmp_path, scratch, queries, tmp_path / "bt-scratch")
    key = ["query_id", "method"]
    mine = read_table(tmp_path / "bt" / "results").sort(key)
    theirs = read_table(tmp_path / "bt-scratch" / "results").sort(key)
    assert mine.select(key).equals(theirs.select(key))
    assert mine["prediction"].equals(theirs["prediction"])
    print(f"first run {first_seconds:.0f} s, scheduled run {second_seconds:.0f} s; "
          f"tokens {info['2017-12-31']['tokens_seen']} then {new_tokens} more")
    (tmp_path / "timings.json").write_text(json.dumps([first_seconds, second_seconds]))
