"""Every quarantine reason, the column mapping for each reader, and the all-bad corpus error."""
import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpora.readers import CorpusReadError
from corpora.schema import DOCUMENT_SCHEMA, SchemaError
from corpora.validation import ColumnMapping, CorpusConfig, CorpusValidationError, load_corpus

UTC = dt.timezone.utc
MAPPING = ColumnMapping(doc_id="id", published_at="ts", text="body", updated_at="rev", source="outlet",
                        entities="tickers")


def config(path, **kwargs):
    kwargs.setdefault("columns", MAPPING)
    kwargs.setdefault("corpus_end", dt.datetime(2030, 1, 1, tzinfo=UTC))
    return CorpusConfig(path=str(path), **kwargs)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reasons(corpus):
    return dict(zip(corpus.quarantine["doc_id"].to_pylist(), corpus.quarantine["reason"].to_pylist()))


GOOD = {"id": "ok", "ts": "2020-01-02T10:00:00+00:00", "body": "A fine document.", "outlet": "Wire",
        "tickers": "AAA|BBB"}


@pytest.mark.parametrize("row, reason", [
    ({"id": "a", "ts": None, "body": "x"}, "missing_date"),
    ({"id": "b", "ts": "   ", "body": "x"}, "missing_date"),
    ({"id": "c", "ts": "last tuesday", "body": "x"}, "unparseable_date"),
    ({"id": "d", "ts": "2020-13-45T00:00:00+00:00", "body": "x"}, "unparseable_date"),
    ({"id": "e", "ts": "2020-01-02T10:00:00+00:00", "rev": "soon", "body": "x"}, "unparseable_date"),
    ({"id": "f", "ts": "2020-01-02T10:00:00", "body": "x"}, "naive_timestamp"),
    ({"id": "g", "ts": "2031-01-01T00:00:00+00:00", "body": "x"}, "after_corpus_end"),
    ({"id": "h", "ts": "2020-01-02T10:00:00+00:00", "rev": "2035-01-01T00:00:00Z", "body": "x"}, "after_corpus_end"),
    ({"id": "i", "ts": "1066-10-14T00:00:00+00:00", "body": "x"}, "too_early"),
    ({"id": "j", "ts": "2020-01-02T10:00:00+00:00", "body": ""}, "empty_text"),
    ({"id": "k", "ts": "2020-01-02T10:00:00+00:00", "body": " \n\t "}, "empty_text"),
    ({"id": "l", "ts": "2020-01-02T10:00:00+00:00", "body": None}, "empty_text"),
    ({"id": "", "ts": "2020-01-02T10:00:00+00:00", "body": "x"}, "missing_doc_id"),
])
def test_each_reason_is_quarantined_with_its_row(tmp_path, row, reason):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, row])
    corpus = load_corpus(config(path, earliest=dt.datetime(1900, 1, 1, tzinfo=UTC)))
    assert corpus.documents["doc_id"].to_pylist() == ["ok"]
    q = corpus.quarantine.to_pylist()
    assert [r["reason"] for r in q] == [reason]
    assert q[0]["row"] == 1 and q[0]["source_file"] == str(path)
    assert json.loads(q[0]["original"]) == {k: row.get(k) for k in sorted(set(GOOD) | set(row))} | row
    assert q[0]["detail"]  # names the field and the value


def test_a_historical_corpus_is_valid_unless_the_user_sets_earliest(tmp_path):
    old = {"id": "hastings", "ts": "1066-10-14T00:00:00+00:00", "body": "A battle."}
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, old])
    assert load_corpus(config(path)).documents["doc_id"].to_pylist() == ["ok", "hastings"]
    bounded = load_corpus(config(path, earliest=dt.datetime(1900, 1, 1, tzinfo=UTC)))
    (detail,) = bounded.quarantine["detail"].to_pylist()
    assert "before earliest 1900-01-01" in detail and "lower corpus.earliest, or remove it" in detail


def test_duplicate_doc_id_keeps_the_first(tmp_path):
    first = dict(GOOD, body="first copy")
    second = dict(GOOD, body="second copy")
    corpus = load_corpus(config(write_jsonl(tmp_path / "c.jsonl", [first, second])))
    assert corpus.documents["text"].to_pylist() == ["first copy"]
    assert corpus.quarantine["reason"].to_pylist() == ["duplicate_doc_id"]
    assert corpus.quarantine["row"].to_pylist() == [1]


def test_a_bad_first_copy_does_not_make_the_good_second_a_duplicate(tmp_path):
    rows = [dict(GOOD, body=""), dict(GOOD, body="the good one")]
    corpus = load_corpus(config(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert corpus.documents["text"].to_pylist() == ["the good one"]
    assert corpus.quarantine["reason"].to_pylist() == ["empty_text"]


def test_duplicate_across_files_keeps_the_first_file(tmp_path):
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [dict(GOOD, body="from a")])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", [dict(GOOD, body="from b"), dict(GOOD, id="other")])
    corpus = load_corpus(config(tmp_path / "corpus"))
    assert sorted(corpus.documents["text"].to_pylist()) == ["A fine document.", "from a"]
    (q,) = corpus.quarantine.to_pylist()
    assert q["reason"] == "duplicate_doc_id" and q["source_file"].endswith("b.jsonl")


def test_invalid_utf8_in_csv_cell_and_jsonl_line(tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_bytes(b"id,ts,body\nok,2020-01-02T10:00:00+00:00,fine\nbad,2020-01-02T10:00:00+00:00,caf\xe9\n")
    corpus = load_corpus(config(csv_path))
    assert corpus.documents["doc_id"].to_pylist() == ["ok"]
    assert reasons(corpus) == {"bad": "invalid_utf8"}
    assert json.loads(corpus.quarantine["original"][0].as_py())["body"] == "caf\\xe9"  # bytes kept, escaped

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"id": "bad", "body": "caf\xe9"}\n' + b"{not json\n")
    corpus = load_corpus(config(jsonl))
    assert corpus.quarantine["reason"].to_pylist() == ["invalid_utf8", "unparseable_row"]
    assert corpus.quarantine["row"].to_pylist() == [1, 2]


def test_invalid_utf8_in_parquet_binary_column(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["ok", "bad"], "ts": ["2020-01-02T10:00:00Z"] * 2,
                             "body": pa.array([b"fine", b"\xff\xfe"], pa.binary())}), path)
    assert reasons(load_corpus(config(path))) == {"bad": "invalid_utf8"}


def test_naive_policy_is_explicit(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [dict(GOOD, ts="2020-01-02T10:00:00"), dict(GOOD, id="z")])
    rejected = load_corpus(config(path, naive_timestamps="reject"))
    assert reasons(rejected) == {"ok": "naive_timestamp"}
    assumed = load_corpus(config(path, naive_timestamps="assume_utc"))
    assert assumed.quarantine.num_rows == 0
    assert assumed.documents["published_at"][0].as_py() == dt.datetime(2020, 1, 2, 10, tzinfo=UTC)


def test_timezones_are_converted_to_utc(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [dict(GOOD, ts="2020-01-02T10:00:00-05:00")])
    corpus = load_corpus(config(path))
    assert corpus.documents["published_at"][0].as_py() == dt.datetime(2020, 1, 2, 15, tzinfo=UTC)


def test_all_bad_corpus_is_an_error_that_says_so(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [dict(GOOD, ts="2020-01-02"), dict(GOOD, id="b", ts="2020-01-03")])
    with pytest.raises(CorpusValidationError, match=r"every row is bad.*naive_timestamp=2.*assume_utc"):
        load_corpus(config(path))


def _user_rows():
    return [
        {"id": "n1", "ts": "2020-01-02T10:00:00+00:00", "body": "First.", "rev": "2020-02-01T00:00:00+00:00",
         "outlet": "Wire", "tickers": "AAA|BBB"},
        {"id": "n2", "ts": "2020-01-03T11:30:00+00:00", "body": "Second, with a comma.", "rev": None,
         "outlet": "Tape", "tickers": "CCC"},
    ]


def test_column_mapping_reads_the_same_corpus_from_every_format(tmp_path):
    rows = _user_rows()
    write_jsonl(tmp_path / "c.jsonl", rows)
    import csv

    with open(tmp_path / "c.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    pq.write_table(pa.table({
        "id": [r["id"] for r in rows],
        "ts": pa.array([dt.datetime.fromisoformat(r["ts"]) for r in rows], pa.timestamp("ms", tz="UTC")),
        "body": [r["body"] for r in rows],
        "rev": pa.array([None if r["rev"] is None else dt.datetime.fromisoformat(r["rev"]) for r in rows],
                        pa.timestamp("ns", tz="Europe/London")),
        "outlet": [r["outlet"] for r in rows],
        "tickers": [r["tickers"].split("|") for r in rows],
    }), tmp_path / "c.parquet")
    tables = [load_corpus(config(tmp_path / f"c.{fmt}")).documents for fmt in ("jsonl", "csv", "parquet")]
    assert tables[0].schema == DOCUMENT_SCHEMA
    assert tables[0].to_pylist()[0] == {
        "doc_id": "n1", "published_at": dt.datetime(2020, 1, 2, 10, tzinfo=UTC), "text": "First.",
        "updated_at": dt.datetime(2020, 2, 1, tzinfo=UTC), "source": "Wire", "entities": ["AAA", "BBB"]}
    for table in tables[1:]:
        assert table.equals(tables[0])


def test_a_mapped_column_missing_from_the_file_is_named(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "when": "2020-01-01T00:00:00Z", "body": "t"}])
    with pytest.raises(SchemaError, match=r"no column 'ts' for field 'published_at'.*columns.published_at"):
        load_corpus(config(path))


def test_unknown_suffix_and_missing_path_are_named(tmp_path):
    with pytest.raises(CorpusReadError, match="no such file"):
        load_corpus(config(tmp_path / "nope.csv"))
    (tmp_path / "c.txt").write_text("hello")
    with pytest.raises(CorpusReadError, match="set format"):
        load_corpus(config(tmp_path / "c.txt"))
