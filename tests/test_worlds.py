"""Embedded worlds: determinism, planted-leak labels, and queries consistent with the events."""
import datetime as dt
import re

import pandas as pd
import pyarrow.compute as pc
import pytest

from corpora.worlds import generate_world, read_world
from corpora.worlds.real_market import RELEASE_LAG_DAYS, load_prices
from pipelines.cli import main as vintage

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def small():
    return generate_world("synthetic-market", "small", seed=3)


@pytest.fixture(scope="module")
def real():
    return generate_world("real-market", "tiny", seed=0)


def rows_by(table, key):
    return {row[key]: row for row in table.to_pylist()}


@pytest.mark.parametrize("name", ["synthetic-market", "real-market"])
def test_same_seed_gives_identical_tables(name):
    a, b = generate_world(name, "tiny", seed=7), generate_world(name, "tiny", seed=7)
    for table in ("documents", "queries", "events", "leaks"):
        assert getattr(a, table).equals(getattr(b, table)), table
    c = generate_world(name, "tiny", seed=8)
    assert not c.documents.equals(a.documents)


def test_tiny_generates_in_under_a_second():
    import time

    started = time.perf_counter()
    generate_world("synthetic-market", "tiny", seed=0)
    assert time.perf_counter() - started < 1.0


def test_every_leak_kind_is_planted_and_labelled(small):
    kinds = set(small.leaks["kind"].to_pylist())
    assert kinds == {"misdated", "revised", "retrospective_mention", "anachronism", "exact_duplicate",
                     "near_duplicate", "forward_looking"}
    expected = dict(zip(small.leaks["kind"].to_pylist(), small.leaks["expected"].to_pylist()))
    assert expected["forward_looking"] == "keep"
    assert expected["exact_duplicate"] == expected["near_duplicate"] == "drop"
    assert {expected[k] for k in ("misdated", "revised", "retrospective_mention", "anachronism")} == {"redate"}


def test_leak_labels_match_the_documents(small):
    docs = rows_by(small.documents, "doc_id")
    events = rows_by(small.events, "event_id")
    listed_at = {c: dt.date.fromisoformat(d) for c, d in small.info["listed_at"].items()}
    for leak in small.leaks.to_pylist():
        d = docs[leak["doc_id"]]
        true_kd = leak["true_knowledge_date"]
        event = events.get(leak["event_id"])
        kind = leak["kind"]
        if kind in ("misdated", "retrospective_mention"):
            assert d["published_at"] < true_kd
            assert true_kd.date() == event["report_date"]
            assert event["company"] in d["text"] and event["quarter"] in d["text"]
            assert ("beat" if event["outcome"] == "beat" else "missed") in d["text"]
        elif kind == "revised":
            assert d["updated_at"] == true_kd > d["published_at"]
            assert true_kd.date() >= event["report_date"]
            assert d["text"].endswith(f"results: {event['outcome']}.")
        elif kind == "anachronism":
            named = [c for c in d["entities"] if listed_at[c] > d["published_at"].date()]
            assert named and true_kd.date() == listed_at[named[0]]
        elif kind in ("exact_duplicate", "near_duplicate"):
            original = docs[leak["original_doc_id"]]
            assert d["published_at"] > original["published_at"]
            assert (d["text"] == original["text"]) == (kind == "exact_duplicate")
            words = set(re.findall(r"\w+", original["text"].lower()))
            assert len(set(re.findall(r"\w+", d["text"].lower())) & words) >= 0.9 * len(words)
        elif kind == "forward_looking":
            years = [int(y) for y in re.findall(r"\b(20\d\d)\b", d["text"])]
            assert years and max(years) > d["published_at"].year
            assert true_kd == d["published_at"]


def test_no_unlabelled_document_states_an_outcome_before_it_was_public(small):
    labelled = set(small.leaks["doc_id"].to_pylist())
    events = rows_by(small.events, "event_id")
    pattern = re.compile(r"(\w+) (\d{4}q\d) results: (beat|miss)|(\w+) reported (\d{4}q\d) earnings")
    checked = 0
    for d in small.documents.to_pylist():
        if d["doc_id"] in labelled:
            continue
        for match in pattern.finditer(d["text"]):
            company, quarter = (match.group(1), match.group(2)) if match.group(1) else match.group(4, 5)
            assert d["published_at"].date() >= events[f"{company}-{quarter}"]["report_date"], d
            checked += 1
    assert checked > 700


def test_only_planted_duplicates_repeat_a_text(small):
    texts = small.documents["text"].to_pylist()
    planted = set(small.leaks.filter(pc.equal(small.leaks["kind"], "exact_duplicate"))["doc_id"].to_pylist())
    seen = {}
    for doc_id, text in zip(small.documents["doc_id"].to_pylist(), texts):
        if text in seen:
            assert doc_id in planted or seen[text] in planted, text
        seen[text] = doc_id


def test_queries_agree_with_events(small):
    events = rows_by(small.events, "event_id")
    docs_text = set(small.documents["text"].to_pylist())
    for q in small.queries.to_pylist():
        e = events[q["event_id"]]
        assert q["answer"] == f" {e['outcome']}" and q["answer"] in q["choices"]
        assert q["realized_return"] == e["price_move"]
        if q["kind"] == "forecast":
            assert q["as_of"].date() == e["preview_date"] < e["report_date"]
            preview = q["prompt"].rsplit(f" {e['company']} {e['quarter']} results:", 1)[0]
            assert preview.endswith(f"point to a {e['signal']}.")
            assert preview in docs_text or any(t.startswith(f"{preview} Update:") for t in docs_text)
        else:
            assert q["as_of"].date() == e["report_date"]
    # The signal is informative exactly as configured (a leak-free forecaster's achievable accuracy).
    agreement = pc.mean(pc.equal(small.events["signal"], small.events["outcome"])).as_py()
    assert abs(agreement - small.info["achievable_forecast_accuracy"]) < 0.08
    # Outcomes are coin flips: a company's base rate carries no information.
    assert 0.4 < pc.mean(pc.equal(small.events["outcome"], "beat")).as_py() < 0.6


def test_real_market_dates_respect_publication_lags(real):
    docs = real.documents.to_pylist()
    gdp = [d for d in docs if d["text"].startswith("US real GDP for")]
    assert gdp
    for d in gdp:
        year, quarter = map(int, re.search(r"(\d{4})q(\d)", d["text"]).groups())
        quarter_end = dt.date(year + (quarter == 4), quarter * 3 % 12 + 1, 1) - dt.timedelta(days=1)
        assert (d["published_at"].date() - quarter_end).days == RELEASE_LAG_DAYS["gdp"]
    prices = load_prices("SP500")
    for d in docs:
        match = re.match(r"The S&P 500 monthly recap for (\w+ \d{4})", d["text"])
        if match:
            month = dt.datetime.strptime(match.group(1), "%B %Y")
            last_close = prices[prices.index.to_period("M") == month.strftime("%Y-%m")].index[-1]
            assert d["published_at"].date() > last_close.date()


def test_real_market_answers_come_from_the_series(real):
    prices = load_prices("SP500")
    forecasts = [q for q in real.queries.to_pylist() if q["kind"] == "forecast" and q["asset"] == "SP500"]
    assert len(forecasts) > 20
    for q in forecasts:
        as_of_close_day = prices[prices.index.date < q["as_of"].date()].index[-1]
        base = prices[as_of_close_day]
        horizon_end = as_of_close_day + pd.DateOffset(months=3)
        final = prices[prices.index <= horizon_end].iloc[-1]
        assert q["realized_return"] == pytest.approx(final / base - 1)
        assert q["answer"] == (" yes" if q["realized_return"] > 0 else " no")


def test_world_command_writes_tables_and_summary(tmp_path, capsys):
    out = tmp_path / "w"
    assert vintage(["world", "--name", "synthetic-market", "--preset", "tiny", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "documents" in printed and "misdated" in printed
    assert {p.name for p in out.iterdir()} == {"documents.parquet", "queries.parquet", "events.parquet",
                                               "leaks.parquet", "world.json"}
    again = read_world(out)
    assert again.documents.equals(generate_world("synthetic-market", "tiny", seed=1).documents)
    assert again.info["generation_seconds"] >= 0
    # rewriting replaces the directory atomically, leaving no staging directories behind
    assert vintage(["world", "--name", "synthetic-market", "--preset", "tiny", "--seed", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
