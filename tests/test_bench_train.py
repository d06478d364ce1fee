"""bench/train.py's comparison at matched memorisation: the independent runs' cost-accuracy curve read at
each chain's accuracy."""
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "train.py")
    module = importlib.util.module_from_spec(spec)
    environment = dict(os.environ)
    spec.loader.exec_module(module)  # the bench sets thread and progress-bar defaults for itself
    os.environ.clear()
    os.environ.update(environment)
    return module


def _run(accuracy: float, tokens: float | None = None, wall: float | None = None) -> dict:
    run = {"fact_accuracy": {"2016-09-30": accuracy - 0.02, "2019-03-31": accuracy + 0.02}}
    if tokens is not None:
        run.update(token_ratio=tokens, wall_ratio=wall)
    return run


def _round(chain: float, shift: float = 0.0) -> dict:
    return {"independent": _run(0.90 + shift), "independent 20 epochs": _run(0.70 + shift, 0.5, 0.45),
            "independent 30 epochs": _run(0.80 + shift, 0.75, 0.70), "chronological": _run(chain, 0.4, 0.35)}


def test_chain_cost_is_read_off_the_independent_curve_at_its_accuracy(bench):
    rounds = [_round(0.85, -0.01), _round(0.85, 0.01)]  # seeds average to the curve 0.70 / 0.80 / 0.90
    row = bench.matched(rounds)["chronological"]
    assert row["accuracy"] == pytest.approx(0.85)
    # halfway between the 30-epoch (0.75 of the tokens, 0.80) and the full run (1.0, 0.90)
    assert row["independent_token_ratio"] == pytest.approx(0.875)
    assert row["independent_wall_ratio"] == pytest.approx(0.85)
    assert row["matched_token_ratio"] == pytest.approx(0.4 / 0.875)
    assert row["matched_wall_ratio"] == pytest.approx(0.35 / 0.85)
    assert row["bound"] == ""


def test_below_the_cheapest_cap_the_ratio_is_a_lower_bound_and_above_the_best_there_is_none(bench):
    low = bench.matched([_round(0.60)])["chronological"]
    assert low["bound"] == "at least"
    assert low["matched_token_ratio"] == pytest.approx(0.4 / 0.5)
    high = bench.matched([_round(0.95)])["chronological"]
    assert "matched_token_ratio" not in high and "never" in high["bound"]


def test_a_cap_that_memorised_less_than_a_cheaper_one_does_not_bend_the_curve_back(bench):
    rounds = [_round(0.75)]
    rounds[0]["independent 25 epochs"] = _run(0.60, 0.62, 0.58)  # noise: both worse than 20 epochs
    rounds[0]["independent 30 epochs"] = _run(0.65, 0.75, 0.70)
    row = bench.matched(rounds)["chronological"]
    # the curve is the running maximum: 0.70 at 0.5 of the tokens, then 0.90 at 1.0
    assert row["independent_token_ratio"] == pytest.approx(0.5 + 0.5 * 0.05 / 0.20)


def test_the_interval_over_seeds_holds_the_pooled_ratio_and_narrows_to_it_when_seeds_agree(bench):
    same = bench.matched_interval([_round(0.85)] * 3, draws=200)["chronological"]
    pooled = bench.matched([_round(0.85)])["chronological"]
    assert same["token"] == pytest.approx((pooled["matched_token_ratio"],) * 2)
    assert same["wall"] == pytest.approx((pooled["matched_wall_ratio"],) * 2)
    rounds = [_round(0.82), _round(0.85), _round(0.88)]
    low, high = bench.matched_interval(rounds, draws=500)["chronological"]["token"]
    # no resample's chain is worse than three 0.82 seeds or better than three 0.88 seeds
    worst = bench.matched([_round(0.82)])["chronological"]["matched_token_ratio"]
    best = bench.matched([_round(0.88)])["chronological"]["matched_token_ratio"]
    assert best <= low < bench.matched(rounds)["chronological"]["matched_token_ratio"] < high <= worst


def test_a_resample_beyond_every_cap_counts_at_its_plain_ratio(bench):
    interval = bench.matched_interval([_round(0.95)] * 3, draws=50)["chronological"]
    assert interval["token"] == pytest.approx((0.4, 0.4)) and interval["wall"] == pytest.approx((0.35, 0.35))


def test_rounds_of_separate_invocations_combine_and_mismatches_are_refused(bench, tmp_path):
    import json

    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"seeds": [1, 2], "schedules": [_round(0.84), _round(0.86)]}))
    b.write_text(json.dumps({"seeds": [3], "schedules": [_round(0.88)]}))
    combined = bench.combine_rounds([a, b])
    assert combined["seeds"] == [1, 2, 3] and combined["schedules"][2] == _round(0.88)
    with pytest.raises(SystemExit, match="seed 1 appears twice"):
        bench.combine_rounds([a, a])
    other = _round(0.88)
    other["chronological replay=1"] = other.pop("chronological")
    c.write_text(json.dumps({"seeds": [4], "schedules": [other]}))
    with pytest.raises(SystemExit, match="combine the outputs of one command only"):
        bench.combine_rounds([a, c])
    with pytest.raises(SystemExit, match="not a bench/train.py output"):
        bench.combine_rounds([tmp_path / "missing.json"])


@pytest.mark.parametrize("cutoffs, message", [
    (["2016-06-30", "2017-13-01", "2019-03-31"], "expected dates YYYY-MM-DD, got '2017-13-01'"),
    (["2016-06-30", "2018-03-31"], "ending at the corpus end 2019-03-31"),
    (["2016-06-30", "2016-06-30", "2019-03-31"], "expected distinct dates"),
])
def test_bad_cutoffs_stop_before_anything_trains(cutoffs, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"), "--cutoffs", *cutoffs],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
