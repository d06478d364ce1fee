"""The split: slices obey the knowledge-date invariant, nothing is lost, reruns and bad input, both engines."""
import datetime as dt
import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpora.config import ConfigError
from corpora.leak_scores import score_split
from corpora.split import (SplitConfig, SplitError, calendar_cutoffs, read_slices, run_split)
from corpora.timeline import cutoff_end
from corpora.validation import CorpusConfig
from corpora.worlds import generate_world

UTC = dt.timezone.utc


def write_corpus(world, directory, parts=1):
    directory.mkdir(parents=True, exist_ok=True)
    docs = world.documents
    step = -(-docs.num_rows // parts)
    for i in range(parts):
        pq.write_table(docs.slice(i * step, step), directory / f"part-{i}.parquet")
    return directory


def split_config(corpus_dir, output, engine="polars", **kwargs):
    kwargs.setdefault("cutoff_rule", None)
    if kwargs["cutoff_rule"] is None and "cutoffs" not in kwargs:
        kwargs["cutoffs"] = [dt.datetime(2017, 6, 30, tzinfo=UTC), dt.datetime(2017, 12, 31, tzinfo=UTC),
                             dt.datetime(2018, 6, 30, tzinfo=UTC), dt.datetime(2019, 12, 31, tzinfo=UTC)]
    return SplitConfig(corpus=CorpusConfig(path=str(corpus_dir)), output=str(output), engine=engine, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    world = generate_world("synthetic-market", "tiny", seed=0)
    return world, write_corpus(world, tmp_path_factory.mktemp("tiny") / "corpus", parts=3)


def check_invariants(output, input_ids):
    slices = read_slices(output)
    manifest = json.loads((output / "manifest.json").read_text())
    cutoffs = [dt.date.fromisoformat(c) for c in manifest["cutoffs"]]
    bounds = {c.isoformat(): (cutoff_end(p) if p else None, cutoff_end(c)) for p, c in zip([None] + cutoffs, cutoffs)}
    for row in slices.select(["doc_id", "published_at", "updated_at", "knowledge_date", "slice"]).to_pylist():
        low, high = bounds[row["slice"]]
        assert row["knowledge_date"] <= high and (low is None or row["knowledge_date"] > low), row
        assert row["knowledge_date"] >= row["published_at"]
        assert row["updated_at"] is None or row["knowledge_date"] >= row["updated_at"]
    quarantined = pq.read_table(output / "quarantine.parquet")["doc_id"].to_pylist()
    kept = slices["doc_id"].to_pylist()
    assert len(kept) == len(set(kept)), "a document written twice"
    assert sorted(kept + quarantined) == sorted(input_ids), "a document lost or invented"
    return slices


def test_split_keeps_the_invariant_and_loses_nothing(tiny, tmp_path):
    world, corpus = tiny
    result = run_split(split_config(corpus, tmp_path / "out"))
    check_invariants(tmp_path / "out", world.documents["doc_id"].to_pylist())
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "slices", "quarantine.parquet", "leakage_report.parquet", "manifest.json", "audit.parquet",
        "audit_moves.parquet", "audit_shifts.png"}
    assert sorted(p.name for p in (tmp_path / "out" / "slices").iterdir()) == [
        "slice=2017-06-30", "slice=2017-12-31", "slice=2018-06-30", "slice=2019-12-31"]
    report = pq.read_table(tmp_path / "out" / "leakage_report.parquet").to_pylist()
    assert {r["filter"] for r in report} == {"revision", "retrospective", "anachronism", "duplicates"}
    assert all(r["documents"] >= len(r["example_ids"]) > 0 for r in report)
    assert result.manifest["documents"] + sum(result.manifest["quarantined"].values()) == world.documents.num_rows


def test_filters_catch_the_planted_leaks_of_the_small_world(tmp_path):
    world = generate_world("synthetic-market", "small", seed=1)
    corpus = write_corpus(world, tmp_path / "corpus")
    run_split(split_config(corpus, tmp_path / "out",
                           cutoffs=[dt.datetime(2017, 12, 31, tzinfo=UTC), dt.datetime(2019, 12, 31, tzinfo=UTC)]))
    scores = score_split(tmp_path / "out", world.leaks)
    by_kind = {r["kind"]: r for r in scores["by_kind"].to_dicts()}
    assert set(by_kind) == {"misdated", "revised", "retrospective_mention", "anachronism", "exact_duplicate",
                            "near_duplicate", "forward_looking"}
    for kind, row in by_kind.items():
        assert row["recall"] >= 0.95, (kind, row)  # forward_looking: share left untouched
    for row in scores["by_filter"].to_dicts():
        assert row["precision"] >= 0.95, row


@pytest.mark.parametrize("preset, seed", [("tiny", 1), ("sparse", 0), ("sparse", 2)])
def test_filters_catch_the_planted_leaks_at_every_density(tmp_path, preset, seed):
    # sparse: long documents of prose noise, about one a month per company, no entities column, plans dated
    # after their document ("postponed until", "will be held on"): names and dates come from the text
    world = generate_world("synthetic-market", preset, seed=seed)
    corpus = write_corpus(world, tmp_path / "corpus")
    ends = world.info["quarter_ends"]
    cutoffs = [dt.datetime.fromisoformat(c).replace(tzinfo=UTC) for c in ends[3::4] + [world.info["corpus_end"]]]
    run_split(split_config(corpus, tmp_path / "out", cutoffs=cutoffs, audit_plot=False))
    scores = score_split(tmp_path / "out", world.leaks)
    by_kind = {r["kind"]: r for r in scores["by_kind"].to_dicts()}
    assert {"misdated", "revised", "retrospective_mention", "anachronism", "exact_duplicate", "near_duplicate",
            "forward_looking"} <= set(by_kind)
    if preset == "sparse":
        assert by_kind["dated_plan"]["planted"] > 50 and world.documents["entities"].null_count == world.documents.num_rows
    for kind, row in by_kind.items():
        assert row["recall"] >= 0.95, (kind, row)
    for kind in ("forward_looking", "dated_plan"):  # non-leaks: none moved
        assert by_kind.get(kind, {"recall": 1.0})["recall"] == 1.0
    for row in scores["by_filter"].to_dicts():
        assert row["precision"] >= 0.95, row


def test_rerun_is_a_noop_and_other_config_or_input_is_refused(tiny, tmp_path):
    world, corpus = tiny
    config = split_config(corpus, tmp_path / "out")
    first = run_split(config)
    mtime = (tmp_path / "out" / "manifest.json").stat().st_mtime_ns
    again = run_split(config)
    assert again.skipped and (tmp_path / "out" / "manifest.json").stat().st_mtime_ns == mtime
    assert again.manifest == first.manifest
    other = split_config(corpus, tmp_path / "out", filters={"revision": {}})
    with pytest.raises(SplitError, match="different config"):
        run_split(other)
    changed = tmp_path / "changed"
    shutil.copytree(corpus, changed)
    pq.write_table(world.documents.slice(0, 10), changed / "part-0.parquet")
    with pytest.raises(SplitError, match="different input"):
        run_split(split_config(changed, tmp_path / "out"))


def test_a_killed_run_leaves_nothing_that_looks_finished(tiny, tmp_path, monkeypatch):
    import corpora.split_polars
    import corpora.split_ray

    _, corpus = tiny

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed midway")

    for engine in (corpora.split_polars, corpora.split_ray):  # after the slices, before the report
        monkeypatch.setattr(engine, "write_outputs", crash)
    with pytest.raises(KeyboardInterrupt):
        run_split(split_config(corpus, tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []  # neither output nor staging directory
    monkeypatch.undo()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stray.txt").write_text("half a split")
    with pytest.raises(SplitError, match="holds no finished split"):
        run_split(split_config(corpus, tmp_path / "out"))


def test_bad_configuration_is_named(tiny, tmp_path):
    _, corpus = tiny
    with pytest.raises(ConfigError, match="strictly increasing: 2017-01-31 follows 2017-06-30"):
        run_split(split_config(corpus, tmp_path / "a", cutoffs=[dt.datetime(2017, 6, 30, tzinfo=UTC),
                                                                 dt.datetime(2017, 1, 31, tzinfo=UTC)]))
    with pytest.raises(ConfigError, match="unknown filter 'dedup'"):
        run_split(split_config(corpus, tmp_path / "b", filters={"dedup": {}}))
    with pytest.raises(ValueError, match="exactly one of cutoffs"):
        SplitConfig(corpus=CorpusConfig(path=str(corpus)), output=str(tmp_path / "c"))
    empty = tmp_path / "bad.jsonl"
    empty.write_text('{"doc_id": "a", "published_at": "2020-01-01", "text": "naive date"}\n')
    with pytest.raises(Exception, match="every row is bad|no valid document"):
        run_split(split_config(empty, tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_calendar_cutoffs():
    assert calendar_cutoffs("quarter", dt.date(2019, 1, 1), dt.date(2019, 12, 31)) == [
        dt.date(2019, 3, 31), dt.date(2019, 6, 30), dt.date(2019, 9, 30), dt.date(2019, 12, 31)]
    assert calendar_cutoffs("year", dt.date(2018, 6, 1), dt.date(2020, 12, 31)) == [
        dt.date(2018, 12, 31), dt.date(2019, 12, 31), dt.date(2020, 12, 31)]
    assert calendar_cutoffs("month", dt.date(2020, 1, 15), dt.date(2020, 3, 31))[0] == dt.date(2020, 1, 31)


def test_ray_engine_equals_polars_engine(ray_local, tiny, tmp_path, capfd):
    import ray.data

    world, corpus = tiny
    polars_out = run_split(split_config(corpus, tmp_path / "polars")).output
    capfd.readouterr()
    before = ray.data.DataContext.get_current().shuffle_strategy
    ray_result = run_split(split_config(corpus, tmp_path / "ray", engine="ray", batch_size=64,
                                        shuffle="hash_shuffle"))
    console = capfd.readouterr()
    # one line per stage on the console; Ray Data's INFO lines stay in its log files; its settings restored
    stage_lines = [line for line in console.out.splitlines() if line.startswith("[split:ray]")]
    assert [line.split()[1] for line in stage_lines] == [f"{k}/6" for k in range(1, 7)]
    assert "Execution plan" not in console.out + console.err and "INFO" not in console.out + console.err
    assert ray.data.DataContext.get_current().shuffle_strategy == before
    assert ray_result.manifest["documents"] > 0
    assert ray_result.manifest["rows_read"] == world.documents.num_rows
    a, b = read_slices(polars_out), read_slices(ray_result.output)
    assert a.equals(b)
    for name in ("quarantine.parquet", "leakage_report.parquet"):
        qa, qb = pq.read_table(polars_out / name), pq.read_table(ray_result.output / name)
        key = [(c, "ascending") for c in qa.column_names if c != "example_ids"]
        assert qa.sort_by(key).equals(qb.sort_by(key)), name


# --- property: the invariant holds over random corpora and filter configurations -------------------------

ENTITIES = ["Acme", "Brio", "Cobalt", "Dyna"]
START = dt.datetime(2020, 1, 1, tzinfo=UTC)


@st.composite
def corpora_and_configs(draw):
    n = draw(st.integers(1, 40))
    rows = []
    for i in range(n):
        published = START + dt.timedelta(days=draw(st.integers(0, 700)), hours=draw(st.integers(0, 23)))
        entity = draw(st.sampled_from(ENTITIES))
        mention = START + dt.timedelta(days=draw(st.integers(0, 800)))
        period = f"{draw(st.integers(2020, 2021))}q{draw(st.integers(1, 4))}"
        text = draw(st.sampled_from([
            f"{entity} {period} results: beat.",
            f"On {mention:%B} {mention.day}, {mention.year}, {entity} reported results that beat estimates.",
            f"{entity} expects {mention.year} revenue to grow.",
            f"Traders compared {entity} with {draw(st.sampled_from(ENTITIES))}.",
            f"Markets were calm as traders watched {entity}.",
        ]))
        if rows and draw(st.booleans()):
            text = draw(st.sampled_from([rows[-1]["text"], "(Syndicated) " + rows[-1]["text"]]))
        updated = None
        if draw(st.integers(0, 4)) == 0:
            updated = published + dt.timedelta(days=draw(st.integers(-30, 120)))
        rows.append(dict(doc_id=f"d{i}", published_at=published, text=text, updated_at=updated,
                         entities=[entity]))
    names = draw(st.permutations(["revision", "retrospective", "anachronism", "duplicates"]))
    names = names[:draw(st.integers(0, 4))]
    params = {
        "revision": {},
        "retrospective": {"min_support": draw(st.integers(1, 4)), "window_days": draw(st.floats(0, 10))},
        "anachronism": {"min_support": draw(st.integers(1, 3)), "min_mentions": draw(st.integers(1, 4)),
                        "burn_in_days": draw(st.floats(0, 100)),
                        "burn_in_docs": draw(st.integers(0, 20)), "window_docs": draw(st.integers(0, 10)),
                        "min_share": draw(st.floats(0.05, 1.0)), "terms": draw(st.sampled_from(
                            ["entities", "names", "both"]))},
        "duplicates": {"near": draw(st.booleans()), "containment": draw(st.floats(0.5, 1.0))},
    }
    last = draw(st.integers(100, 900))
    cuts = sorted(draw(st.sets(st.integers(0, last), min_size=1, max_size=5)))
    cutoffs = [START + dt.timedelta(days=c) for c in cuts]
    return rows, {name: params[name] for name in names}, cutoffs


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpora_and_configs())
def test_property_knowledge_dates_only_move_later_and_slices_hold(tmp_path_factory, case):
    rows, filters, cutoffs = case
    base = tmp_path_factory.mktemp("prop")
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("doc_id", pa.string()), ("published_at", pa.timestamp("us", tz="UTC")), ("text", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")), ("entities", pa.list_(pa.string()))]))
    pq.write_table(table, base / "c.parquet")
    config = SplitConfig(corpus=CorpusConfig(path=str(base / "c.parquet")), output=str(base / "out"),
                         cutoffs=cutoffs, filters=filters, engine="polars", batch_size=7, audit_plot=False)
    run_split(config)
    slices = check_invariants(base / "out", [r["doc_id"] for r in rows])
    quarantine = pq.read_table(base / "out" / "quarantine.parquet")
    reasons = set(quarantine["reason"].to_pylist())
    assert reasons <= {"exact_duplicate", "near_duplicate", "after_last_cutoff"}
    if "duplicates" not in filters:
        assert reasons <= {"after_last_cutoff"}
    # every document after the last cutoff is quarantined as such, never silently dropped
    late = pc.sum(pc.greater(slices["knowledge_date"], cutoff_end(cutoffs[-1].date()))).as_py()
    assert not late


# --- property: a clean corpus of any density, no term repeated, no planted leak: nothing moves ---------------

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "xe", "zu"]


@st.composite
def clean_corpora(draw):
    """Documents at random gaps (minutes to years), each with its own made-up name and its own dates (all on or
    before the document's day, or plans ahead of it): no term repeats, nothing leaks."""
    n = draw(st.integers(2, 30))
    gap = draw(st.sampled_from([dt.timedelta(minutes=7), dt.timedelta(hours=5), dt.timedelta(days=1),
                                dt.timedelta(days=30), dt.timedelta(days=365)]))
    rows, at = [], START
    for i in range(n):
        at = at + gap * draw(st.floats(0.1, 3.0))
        name = "".join(draw(st.permutations(_SYLLABLES))[:4]).capitalize() + f"x{i}"
        earlier = at - dt.timedelta(days=draw(st.integers(0, 3000)))
        later = at + dt.timedelta(days=draw(st.integers(1, 3000)))
        text = draw(st.sampled_from([
            f"On {earlier:%B} {earlier.day}, {earlier.year}, the board of {name} reported results.",
            f"Traders said {name} will report on {later:%B} {later.day}, {later.year}.",
            f"The vote at {name} was postponed until {later:%B} {later.day}, {later.year}.",
            f"Analysts expect {name} to grow in {later.year}; it employs {draw(st.integers(1900, 2100))} people.",
        ]))
        rows.append(dict(doc_id=f"d{i}", published_at=at, text=text, updated_at=None,
                         entities=draw(st.sampled_from([None, [name]]))))
    return rows


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(clean_corpora())
def test_property_a_clean_corpus_without_repeated_terms_is_never_redated(tmp_path_factory, rows):
    base = tmp_path_factory.mktemp("clean")
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("doc_id", pa.string()), ("published_at", pa.timestamp("us", tz="UTC")), ("text", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")), ("entities", pa.list_(pa.string()))]))
    pq.write_table(table, base / "c.parquet")
    last = max(r["published_at"] for r in rows)
    config = SplitConfig(corpus=CorpusConfig(path=str(base / "c.parquet")), output=str(base / "out"),
                         cutoffs=[last + dt.timedelta(days=1)], engine="polars")
    result = run_split(config)
    slices = check_invariants(base / "out", [r["doc_id"] for r in rows])
    assert result.manifest["redated_by_filter"] == {"revision": 0, "retrospective": 0, "anachronism": 0,
                                                    "duplicates": 0}
    assert pc.all(pc.equal(slices["knowledge_date"], slices["published_at"])).as_py()


# --- the audit a person reads -------------------------------------------------------------------------------

def test_the_audit_counts_each_filters_moves_and_lists_the_largest_with_evidence(tiny, tmp_path, capsys):
    world, corpus = tiny
    result = run_split(split_config(corpus, tmp_path / "out"))
    summary = {r["filter"]: r for r in pq.read_table(tmp_path / "out" / "audit.parquet").to_pylist()}
    slices = read_slices(tmp_path / "out")
    for name, count in result.manifest["redated_by_filter"].items():
        moved = [r for r in slices.to_pylist() if name in r["redated_by"]]
        assert summary.get(name, {"moved": 0})["moved"] >= count == len(moved)  # + moved, then quarantined
    moves = pq.read_table(tmp_path / "out" / "audit_moves.parquet").to_pylist()
    anachronism = [m for m in moves if m["filter"] == "anachronism"]
    assert anachronism and all(m["evidence"].startswith("anachronism: names '") for m in anachronism)
    shifts = [m["shift_days"] for m in anachronism]
    assert shifts == sorted(shifts, reverse=True) and max(shifts) == summary["anachronism"]["max_shift_days"]
    assert all(m["knowledge_date"] - m["published_at"] == dt.timedelta(days=m["shift_days"]) for m in moves)
    assert (tmp_path / "out" / "audit_shifts.png").stat().st_size > 10_000
    assert "anachronism" in capsys.readouterr().out  # the per-filter lines are printed


def test_a_split_that_moves_much_of_the_corpus_warns_loudly(tmp_path, capsys):
    # every later document is an exact revision far in the future: revision moves 90% by 10 years
    rows = [dict(doc_id=f"d{i}", published_at=START + dt.timedelta(days=i), text=f"Note {i} about Acme.",
                 updated_at=START + dt.timedelta(days=3650) if i else None) for i in range(10)]
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("doc_id", pa.string()), ("published_at", pa.timestamp("us", tz="UTC")), ("text", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC"))]))
    pq.write_table(table, tmp_path / "c.parquet")
    config = SplitConfig(corpus=CorpusConfig(path=str(tmp_path / "c.parquet")), output=str(tmp_path / "out"),
                         cutoffs=[START + dt.timedelta(days=4000)], engine="polars", audit_plot=False)
    result = run_split(config)
    err = capsys.readouterr().err
    assert "WARNING: filter 'revision' moved 9 of 10 documents (90.0%; warn_fraction 10%), the largest by 10.0 " \
           "years" in err
    assert result.manifest["audit"]["warnings"] == [line for line in err.splitlines() if line.startswith("WARNING")]
    quiet = run_split(SplitConfig(**{**config.__dict__, "output": str(tmp_path / "out2"), "warn_fraction": 0.95,
                                     "warn_shift_years": 11.0}))
    assert quiet.manifest["audit"]["warnings"] == [] and "WARNING" not in capsys.readouterr().err


def test_a_dry_run_prints_the_audit_and_writes_nothing(tiny, tmp_path, capsys):
    world, corpus = tiny
    result = run_split(split_config(corpus, tmp_path / "out"), dry_run=True)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert "anachronism: the 4 largest moves" in out and "first corroborated on" in out
    assert result.manifest["dry_run"] and result.audit.summary.num_rows >= 3


def test_the_dropping_filter_is_credited_whatever_the_filter_order(tmp_path):
    # the later copy is both a duplicate (dropped) and a past-tense mention of a later date (re-dated): with
    # duplicates first, the retrospective filter's evidence must not take the credit for the drop
    text = "On March 3, 2021, Acme reported results that beat estimates."
    rows = [dict(doc_id="a", published_at=dt.datetime(2021, 1, 5, tzinfo=UTC), text=text),
            dict(doc_id="b", published_at=dt.datetime(2021, 1, 6, tzinfo=UTC), text=text)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for order in (["duplicates", "retrospective"], ["retrospective", "duplicates"]):
        out = tmp_path / "-".join(order)
        run_split(SplitConfig(corpus=CorpusConfig(path=str(tmp_path / "c.parquet")), output=str(out),
                              cutoffs=[dt.datetime(2021, 12, 31, tzinfo=UTC)], engine="polars",
                              filters={name: {} for name in order}, audit_plot=False))
        report = pq.read_table(out / "leakage_report.parquet").to_pylist()
        assert [(r["filter"], r["action"], r["example_ids"]) for r in report if r["action"] == "dropped"] == [
            ("duplicates", "dropped", ["b"])]
        (quarantined,) = pq.read_table(out / "quarantine.parquet").to_pylist()
        assert quarantined["doc_id"] == "b" and quarantined["detail"] == "duplicates: copy of a"


def test_the_pipeline_replaces_only_a_stale_split(tmp_path, monkeypatch):
    """end_to_end owns OUT/split: another or an unfinished split there is replaced; any other SplitError (no
    valid document) reaches the user as it is (it used to be taken for a stale split, and removing a
    directory that was never written hid it behind a FileNotFoundError)."""
    import corpora.split
    from pipelines.end_to_end import SplitStage, run_split_stage

    generate_world("synthetic-market", "tiny", seed=0).write(tmp_path / "world" / "synthetic-market")
    stage = SplitStage(cutoffs=[dt.datetime(2017, 12, 31, tzinfo=dt.timezone.utc)], engine="polars")
    stale = tmp_path / "split" / "synthetic-market"
    stale.mkdir(parents=True)
    (stale / "leftover.parquet").write_text("an unfinished split")
    run_split_stage(stage, tmp_path)  # replaced
    assert (stale / "manifest.json").exists() and not (stale / "leftover.parquet").exists()

    def no_valid_document(config, dry_run=False):
        raise SplitError(f"{config.corpus.path}: no valid document after validation")

    shutil.rmtree(stale)
    monkeypatch.setattr(corpora.split, "run_split", no_valid_document)
    with pytest.raises(SplitError, match="no valid document after validation"):
        run_split_stage(stage, tmp_path)
