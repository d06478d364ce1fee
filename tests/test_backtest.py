"""Backtest runner and metrics: idempotence, incremental runs, the errors table, Ray actors, report, and every
metric against hand-computed values. The registry is hand-made from tiny random models (no training)."""
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backtests import metrics
from backtests.report import write_report
from backtests.runner import read_table, run_backtest
from backtests.spec import BacktestSpec, MethodSpec, Resources
from corpora.config import ConfigError, load_yaml
from tests.lm_fixtures import tiny_model, word_tokenizer
from vintage.decoding import PointInTimeLM
from vintage.modes import Steering

UTC = dt.timezone.utc
CUTOFFS = ["2019-03-31", "2019-06-30", "2019-09-30"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    tok = word_tokenizer()
    tok.save_pretrained(root / "tokenizer")
    for i, cutoff in enumerate(CUTOFFS):
        model = tiny_model(tok, seed=i)
        model.save_pretrained(root / "vintages" / cutoff)
        tok.save_pretrained(root / "vintages" / cutoff)
    tiny_model(tok, seed=10, n_embd=48).save_pretrained(root / "frontier")
    tok.save_pretrained(root / "frontier")
    tiny_model(tok, seed=20, n_embd=48).save_pretrained(root / "retrained" / "2019-06-30" / "seed=0")
    (root / "manifest.json").write_text(json.dumps({"cutoffs": CUTOFFS, "full": CUTOFFS[-1], "config_hash": "x",
                                                    "config": {"split": "unused"}}))
    return root


def queries(rows):
    table = pa.table({
        "query_id": [r[0] for r in rows], "kind": [r[1] for r in rows],
        "as_of": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
        "prompt": [r[3] for r in rows], "choices": [r[4] for r in rows], "answer": [r[5] for r in rows],
        "realized_return": [r[6] for r in rows]})
    return table


def base_rows():
    d = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    return [
        ("q1", "fact", d(2019, 4, 10), "Acme 2019q1 results :", [" beat", " miss"], " beat", 0.02),
        ("q2", "forecast", d(2019, 7, 2), "Brio 2019q2 results :", [" beat", " miss"], " miss", -0.01),
        ("q3", "fact", d(2019, 3, 31, 12), "Acme 2019q1 results :", [" beat", " miss"], " miss", 0.01),  # early
        ("q4", "fact", d(2019, 8, 1), "Brio 2019q2 results :", [" beat", " "], " beat", None),  # empty choice
    ]


def make_spec(tmp_path, registry, rows, methods=None, **kw) -> BacktestSpec:
    pq.write_table(queries(rows), tmp_path / "queries.parquet")
    methods = methods or [MethodSpec(name="frontier"), MethodSpec(name="surrogate"),
                          MethodSpec(name="point_in_time", alpha=0.5), MethodSpec(name="retrained")]
    return BacktestSpec(queries=str(tmp_path / "queries.parquet"), registry=str(registry),
                        output=str(tmp_path / "out"), methods=methods, effective_cutoff=None, **kw)


def test_results_errors_idempotence_and_increments(tmp_path, registry):
    spec = make_spec(tmp_path, registry, base_rows())
    first = run_backtest(spec, engine="local")
    results = read_table(tmp_path / "out" / "results")
    errors = read_table(tmp_path / "out" / "errors")
    # q1 (vintage 2019-03-31) and q2 (2019-06-30) scored by 4 methods, except retrained exists for 06-30 only
    assert sorted(results.select("query_id", "method").rows()) == sorted(
        [("q1", m) for m in ("frontier", "surrogate", "point_in_time(alpha=0.5)")]
        + [("q2", m) for m in ("frontier", "surrogate", "point_in_time(alpha=0.5)", "retrained")])
    assert set(results.filter(pl.col("query_id") == "q1")["vintage_cutoff"]) == {"2019-03-31"}
    reasons = {(r["query_id"], r["method"]): r["reason"] for r in errors.to_dicts()}
    assert reasons[("q1", "retrained")] == "no_retrained_model"
    assert all(reasons[("q3", m.key)] == "before_first_vintage" for m in spec.methods)
    assert all(reasons[("q4", m.key)] == "untokenisable" for m in spec.methods if m.name != "retrained")
    assert len(reasons) == first.errors == 1 + 4 + 4  # every (query, method) pair is a result or an error
    assert first.scored + first.errors == 4 * 4
    for column in ("method", "vintage_cutoff", "alpha", "choice_logprobs", "prediction", "correct", "run_id",
                   "as_of", "prompt", "answer", "realized_return"):
        assert column in results.columns
    row = results.filter((pl.col("query_id") == "q2") & (pl.col("method") == "frontier")).row(0, named=True)
    assert row["prediction"] == [" beat", " miss"][int(np.argmax(row["choice_logprobs"]))]
    assert row["correct"] == (row["prediction"] == " miss")
    assert row["p_answer"] == pytest.approx(metrics._softmax(row["choice_logprobs"])[1])

    again = run_backtest(spec, engine="local")  # the same spec: nothing new
    assert again.scored == 0 and again.errors == 0 and again.skipped == 16
    assert read_table(tmp_path / "out" / "results").height == results.height

    rows = base_rows() + [("q5", "fact", dt.datetime(2019, 10, 5, tzinfo=UTC), "Acme 2019q2 results :",
                           [" beat", " miss"], " beat", 0.03)]
    more = run_backtest(make_spec(tmp_path, registry, rows), engine="local")  # one new query: only it is scored
    assert more.skipped == 16 and more.scored == 3 and more.errors == 1  # no retrained model at 2019-09-30
    assert read_table(tmp_path / "out" / "results").filter(pl.col("query_id") == "q5").height == 3
    assert more.run_id == first.run_id  # the spec's content (less the query file's rows) did not change


def test_a_backtest_in_bfloat16_is_recorded_and_not_mixed_with_float32(tmp_path, registry):
    """dtype: bfloat16 scores every pair again (its model keys differ from float32's), records the dtype in
    run.json, and answers as float32 does on these queries (log-probs within bf16 rounding)."""
    first = run_backtest(make_spec(tmp_path, registry, base_rows()), engine="local")
    half = run_backtest(make_spec(tmp_path, registry, base_rows(), dtype="bfloat16"), engine="local")
    assert half.scored == first.scored and half.run_id != first.run_id  # (pairs with no vintage: the same errors)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["dtype"] == "bfloat16"
    rows = read_table(tmp_path / "out" / "results")
    by_run = {run: part.sort("query_id", "method") for run, part in
              ((r, rows.filter(pl.col("run_id") == r)) for r in (first.run_id, half.run_id))}
    a, b = by_run[first.run_id], by_run[half.run_id]
    assert a["prediction"].to_list() == b["prediction"].to_list()
    for x, y in zip(a["choice_logprobs"].to_list(), b["choice_logprobs"].to_list()):
        assert x == pytest.approx(y, abs=0.05)


def test_report_writes_tables_and_plots(tmp_path, registry):
    spec = make_spec(tmp_path, registry, base_rows())
    run_backtest(spec, engine="local")
    path = write_report(tmp_path / "out")
    text = Path(path).read_text()
    assert "## Headline" in text and "| fact | frontier |" in text and "Look-ahead gap" in text
    assert (tmp_path / "out" / "equity.png").stat().st_size > 1000
    import duckdb
    import pandas as pd

    files = str(tmp_path / "out" / "results" / "*.parquet")
    assert duckdb.sql(f"select count(*) from read_parquet('{files}')").fetchall()[0][0] == 7
    assert len(pd.concat(pd.read_parquet(f) for f in (tmp_path / "out" / "results").glob("*.parquet"))) == 7


def test_spec_errors_name_the_key(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("queries: q\nregistry: r\noutput: o\nmethods: [{name: point_in_time, alfa: 1}]\n")
    with pytest.raises(ConfigError, match=r"methods\[0\]: unknown key\(s\) \['alfa'\]"):
        load_yaml(path, BacktestSpec)
    path.write_text("queries: q\nregistry: r\noutput: o\nmethods: [{name: oracle}]\n")
    with pytest.raises(ConfigError, match=r"methods\[0\].name: 'oracle' is not one of"):
        load_yaml(path, BacktestSpec)
    path.write_text("queries: q\nregistry: r\noutput: o\nmethods: [{name: frontier, alpha: 2.0}]\n")
    with pytest.raises(ConfigError, match="alpha, plausibility, mode, margin, k, width, gate_probability and "
                                          "confidence apply to point_in_time only"):
        load_yaml(path, BacktestSpec)
    path.write_text("queries: q\nregistry: r\noutput: o\neffective_cutoff: 'off'\nmethods: [{name: frontier}]\n")
    with pytest.raises(ConfigError, match=r"effective_cutoff: expected 'auto', null \(skip\) or a vintage cutoff "
                                          r"YYYY-MM-DD, got 'off'"):
        load_yaml(path, BacktestSpec)  # at load, not after every pair is scored
    path.write_text("queries: q\nregistry: r\noutput: o\neffective_cutoff: '2018-06-30'\nmethods: [{name: frontier}]\n")
    assert load_yaml(path, BacktestSpec).effective_cutoff == "2018-06-30"



def test_ray_actors_give_the_same_rows_as_one_process(tmp_path, registry, ray_local, capfd):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    local = make_spec(tmp_path / "a", registry, base_rows())
    distributed = make_spec(tmp_path / "b", registry, base_rows(), resources=Resources(actors=2, batch_size=2))
    run_backtest(local, engine="local")
    capfd.readouterr()
    run_backtest(distributed, engine="ray")
    console = capfd.readouterr()
    assert "[backtest] scored" in console.out  # our progress line, and none of Ray Data's INFO lines
    assert not [line for line in (console.out + console.err).splitlines() if "Running Dataset" in line
                or "Execution plan" in line or "ray.data" in line and "INFO" in line]
    key = ["query_id", "method"]
    a = read_table(tmp_path / "a" / "out" / "results").sort(key)
    b = read_table(tmp_path / "b" / "out" / "results").sort(key)
    assert a.select(key).equals(b.select(key))
    assert np.allclose(np.concatenate(a["choice_logprobs"].to_list()), np.concatenate(b["choice_logprobs"].to_list()),
                       atol=1e-5)
    assert read_table(tmp_path / "b" / "out" / "errors").height == read_table(tmp_path / "a" / "out" / "errors").height


# -- metrics against hand-computed values --------------------------------------------------------------------

def hand_results():
    lp = lambda p: [math.log(p), math.log(1 - p)]  # noqa: E731  (choice 0 = " beat")
    day = lambda m: dt.datetime(2019, m, 1, tzinfo=UTC)  # noqa: E731
    return pl.DataFrame({
        "query_id": ["a", "b", "c", "d"] * 2,
        "method": ["frontier"] * 4 + ["retrained"] * 4,
        "as_of": [day(1), day(2), day(4), day(5)] * 2,
        "choices": [[" beat", " miss"]] * 8,
        "answer": [" beat", " miss", " beat", " miss"] * 2,
        "choice_logprobs": [lp(0.9), lp(0.2), lp(0.6), lp(0.7), lp(0.5), lp(0.5), lp(0.4), lp(0.3)],
        "p_answer": [0.9, 0.8, 0.6, 0.3, 0.5, 0.5, 0.4, 0.7],
        "correct": [True, True, True, False, True, False, False, True],
        "realized_return": [0.02, -0.01, 0.03, -0.02] * 2,
    })


def test_accuracy_brier_log_loss():
    front = hand_results().filter(pl.col("method") == "frontier")
    assert metrics.accuracy(front) == 0.75
    assert metrics.brier(front) == pytest.approx((0.1 ** 2 + 0.2 ** 2 + 0.4 ** 2 + 0.7 ** 2) / 4)
    assert metrics.log_loss(front) == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.3)) / 4)
    table = metrics.headline(hand_results())
    assert table.filter(pl.col("method") == "retrained")["accuracy"].item() == 0.5


def test_lookahead_gap_overall_and_per_period():
    gap = metrics.lookahead_gap(hand_results())
    assert gap["gap"].item() == pytest.approx(0.75 - 0.5) and gap["n"].item() == 4
    per_q = metrics.lookahead_gap(hand_results(), period="1q")
    assert per_q["gap"].to_list() == pytest.approx([1.0 - 0.5, 0.5 - 0.5])  # Q1: a, b; Q2: c, d


def test_calibration_by_decile():
    cal = metrics.calibration_by_decile(hand_results().filter(pl.col("method") == "frontier"))
    # confidences 0.9, 0.8, 0.6, 0.7 -> deciles 9, 8, 6, 7, one query each
    assert cal["decile"].to_list() == [6, 7, 8, 9] and cal["n"].to_list() == [1, 1, 1, 1]
    assert cal["confidence"].to_list() == pytest.approx([0.6, 0.7, 0.8, 0.9])


def test_strategy_and_risk_analysis():
    trades = metrics.strategy_returns(hand_results().filter(pl.col("method") == "frontier"))
    # p(beat) 0.9, 0.2, 0.6, 0.7 -> long, short, long, long on returns 0.02, -0.01, 0.03, -0.02
    assert trades["position"].to_list() == [1.0, -1.0, 1.0, 1.0]
    assert trades["return"].to_list() == pytest.approx([0.02, 0.01, 0.03, -0.02])
    weighted = metrics.strategy_returns(hand_results().filter(pl.col("method") == "frontier"), "probability")
    assert weighted["position"].to_list() == pytest.approx([0.8, -0.6, 0.2, 0.4])
    r = np.array([0.02, 0.01, 0.03, -0.02])
    risk = metrics.risk_analysis(r, periods_per_year=4)
    assert risk["mean"] == pytest.approx(0.01) and risk["hit_rate"] == 0.75
    assert risk["sharpe"] == pytest.approx(0.01 / r.std(ddof=1) * 2)
    equity = np.cumprod(1 + r)  # 1.02, 1.0302, 1.061106, 1.03988388: drawdown at the end
    assert risk["max_drawdown"] == pytest.approx(equity[-1] / equity[-2] - 1)


def test_forget_quality_is_the_ks_p_value():
    from scipy import stats

    p = metrics.forget_quality(hand_results(), "frontier")
    assert p == pytest.approx(stats.ks_2samp([0.9, 0.8, 0.6, 0.3], [0.5, 0.5, 0.4, 0.7]).pvalue)


def test_a_changed_model_rescoring_only_the_methods_that_use_it(tmp_path, registry):
    import shutil

    copy = tmp_path / "registry"
    shutil.copytree(registry, copy)
    spec = make_spec(tmp_path, copy, base_rows())
    run_backtest(spec, engine="local")
    tiny_model(word_tokenizer(), seed=99).save_pretrained(copy / "vintages" / CUTOFFS[-1])  # the full surrogate
    again = run_backtest(spec, engine="local")
    rows = read_table(tmp_path / "out" / "results")
    # only point_in_time uses the full surrogate: its two answered queries are scored again (and q4's
    # untokenisable error is recorded under the new key), nothing else
    assert again.scored == 2 and again.errors == 1
    assert set(rows.group_by("query_id", "method").len().filter(pl.col("len") > 1)["method"]) == {
        "point_in_time(alpha=0.5)"}


def test_effective_cutoff_curve_by_period():
    from backtests.effective_cutoff import perplexity_by_period

    day = lambda m, d: dt.datetime(2019, m, d, tzinfo=UTC)  # noqa: E731
    docs = pl.DataFrame({"knowledge_date": [day(1, 5), day(1, 20), day(2, 3), day(4, 1)],
                         "text": ["a", "bb", "ccc", "dddd"]})
    mean_length = lambda texts: sum(map(len, texts)) / len(texts)  # noqa: E731  a stand-in "perplexity"
    curve = perplexity_by_period(docs, {"m": mean_length}, "1mo")
    assert curve["documents"].to_list() == [2, 1, 1]
    assert curve["perplexity"].to_list() == [1.5, 3.0, 4.0]
    assert perplexity_by_period(docs, {"m": mean_length}, "1q")["documents"].to_list() == [3, 1]


def test_rank_mode_method_scores_and_is_keyed_apart(tmp_path, registry):
    rank = MethodSpec(name="point_in_time", mode="rank", k=1, plausibility=0.1)
    assert rank.key == "point_in_time(rank,k=1,margin=0.0,mask=0.1)"
    spec = make_spec(tmp_path, registry, base_rows()[:2], methods=[MethodSpec(name="frontier"), rank])
    run_backtest(spec, engine="local")
    rows = read_table(tmp_path / "out" / "results")
    assert sorted(rows["method"].unique().to_list()) == ["frontier", rank.key]
    ranked = rows.filter(pl.col("method") == rank.key)
    assert ranked["alpha"].is_null().all() and ranked["choice_logprobs"].list.len().to_list() == [2, 2]
    with pytest.raises(ValueError, match="apply to point_in_time only"):
        MethodSpec(name="frontier", mode="rank")
    switch = MethodSpec(name="point_in_time", mode="switch", margin=0.1, plausibility=0.3)
    assert switch.key == "point_in_time(switch,margin=0.1,mask=0.3)"
    run_backtest(make_spec(tmp_path, registry, base_rows()[:2], methods=[MethodSpec(name="frontier"), rank, switch]),
                 engine="local")
    switched = read_table(tmp_path / "out" / "results").filter(pl.col("method") == switch.key)
    assert switched.height == 2 and switched["alpha"].is_null().all()


def test_ngram_surrogates_and_matched_confidence_as_methods(tmp_path, registry):
    import shutil

    from vintage.ngram import NgramLM, emit_ngrams
    from vintage.tokenizer import tokenizer_hash

    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    tok = word_tokenizer()
    texts = {"2019-03-31": ["Acme 2019q1 results : beat ."], "2019-06-30": ["Brio 2019q2 results : miss ."],
             "2019-09-30": ["Acme 2019q2 results : beat ."]}
    (root / "ngram" / "slices").mkdir(parents=True)
    for cutoff, docs in texts.items():
        ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in docs]
        pq.write_table(emit_ngrams(ids, 5), root / "ngram" / "slices" / f"{cutoff}.parquet")
    (root / "ngram" / "manifest.json").write_text(json.dumps({
        "order": 5, "min_count": 1, "tokenizer_hash": tokenizer_hash(tok), "vocab_size": len(tok),
        "slices": {c: {"content_hash": c} for c in texts}}))
    methods = [MethodSpec(name="surrogate", surrogate="ngram"), MethodSpec(name="point_in_time", alpha=1.0),
               MethodSpec(name="point_in_time", alpha=1.0, confidence="matched"),
               MethodSpec(name="point_in_time", alpha=1.0, surrogate="ngram")]
    hybrid = MethodSpec(name="point_in_time", mode="switch", margin=0.1, surrogate="ngram", fallback="neural")
    assert hybrid.key == "point_in_time(switch,margin=0.1,ngram,fallback=neural)"
    methods.append(hybrid)
    with pytest.raises(ValueError, match="fallback applies to point_in_time with mode: blend or switch only"):
        MethodSpec(name="point_in_time", alpha=1.0, fallback="neural")
    spec = make_spec(tmp_path, root, base_rows(), methods=methods)
    with pytest.raises(ValueError, match="no fitted neural temperatures .* run `vintage fit-temperatures"):
        run_backtest(spec, engine="local")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["temperatures"] = {"neural": {c: {"temperature": 3.0} for c in CUTOFFS}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    run_backtest(spec, engine="local")
    results = read_table(tmp_path / "out" / "results")
    assert set(results["method"]) == {"surrogate(ngram)", "point_in_time(alpha=1.0)",
                                      "point_in_time(alpha=1.0,matched)", "point_in_time(alpha=1.0,ngram)", hybrid.key}
    q2 = {r["method"]: r["choice_logprobs"] for r in results.filter(pl.col("query_id") == "q2").to_dicts()}
    # the hybrid row: n-gram pair as the gate, the neural vintage where it fires (also from_registry's options)
    direct = PointInTimeLM.from_registry(root, "2019-07-02", surrogate="ngram", fallback="neural",
                                         steering=Steering("switch", margin=0.1))
    assert direct.vintage_cutoff == "2019-06-30" and type(direct.fallback).__name__ == "GPT2LMHeadModel"
    assert q2[hybrid.key] == pytest.approx(
        direct.score(["Brio 2019q2 results :"], [[" beat", " miss"]])[0].choice_logprobs, abs=1e-5)
    assert q2["point_in_time(alpha=1.0)"] != pytest.approx(q2["point_in_time(alpha=1.0,matched)"])
    # the n-gram surrogate row is what the n-gram vintage (the sum of the slices up to 2019-06-30) gives
    direct = PointInTimeLM(NgramLM(emit_ngrams(
        [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
         for t in texts["2019-03-31"] + texts["2019-06-30"]], 5), len(tok), 5), None, None, tok)
    expected = direct.score(["Brio 2019q2 results :"], [[" beat", " miss"]])[0].choice_logprobs
    assert q2["surrogate(ngram)"] == pytest.approx(expected, abs=1e-5)
    assert q2["surrogate(ngram)"][1] > q2["surrogate(ngram)"][0]  # it read "Brio 2019q2 results : miss"
    # new temperatures rescore the matched method only
    manifest["temperatures"]["neural"]["2019-06-30"]["temperature"] = 2.0
    (root / "manifest.json").write_text(json.dumps(manifest))
    rerun = run_backtest(spec, engine="local")
    assert rerun.scored == 1  # q2 (vintage 2019-06-30) under the matched method


def test_outputs_on_a_filesystem_uri(tmp_path, registry):
    """`output` as a pyarrow filesystem URI (s3://, gs://, ... take the same path through pyarrow.fs; file://
    here): results, errors, run.json and the report with its plots land there, and a rerun reads them back."""
    spec = make_spec(tmp_path, registry, base_rows())
    spec.output = f"file://{tmp_path / 'bucket' / 'backtest'}"
    first = run_backtest(spec, engine="local")
    assert first.scored == 7 and first.output == spec.output
    assert run_backtest(spec, engine="local").skipped == 16  # read back through the filesystem
    report = write_report(spec.output)
    assert report == spec.output + "/report.md"
    landed = tmp_path / "bucket" / "backtest"
    assert (landed / "report.md").read_text().startswith("# Backtest report")
    assert (landed / "equity.png").stat().st_size > 1000 and (landed / "run.json").exists()
    assert pl.read_parquet(landed / "results" / "*.parquet").height == 7
    assert not list(landed.rglob(".*.tmp"))  # no temporary file left behind
    from backtests.workflow import run_and_report  # the pipelines' entry point, on a URI too

    spec.output = f"file://{tmp_path / 'bucket' / 'again'}"
    assert run_and_report(spec, engine="local") == spec.output + "/report.md"
    assert (tmp_path / "bucket" / "again" / "report.md").exists()
