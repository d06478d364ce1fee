"""`vintage probe-cutoff`: the knee of synthetic curves (a known step, and none), the effective cutoff of a gold
model retrained on the tiny world up to 2017-12-31 (found within a quarter of it, and the frontier's not
there), and the command's outputs. The models are trained here in-process (seconds, no Ray Train): the
frontier preset on every training document, and from scratch on those up to the cutoff (the gold)."""
import datetime as dt
import json
import shutil

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from backtests.cutoff_probe import ProbeCutoffConfig, find_knee, knee_with_interval, probe_cutoff
from backtests.spec import MethodSpec
from corpora.split import SplitConfig, read_slices, run_split
from corpora.validation import CorpusConfig
from corpora.worlds import generate_world
from pipelines.cli import main
from vintage.presets import build_model
from vintage.holdout import is_holdout
from vintage.tokenizer import train_bpe
from vintage.windows import pack

UTC = dt.timezone.utc
CUTOFF = "2017-12-31"
HOLDOUT_EVERY = 4  # a quarter of the tiny world held out: about ten documents a quarter to probe


def test_knee_of_a_step_and_of_a_flat_curve():
    rng = np.random.default_rng(0)
    step = np.r_[np.full(6, 3.0), np.full(5, 3.8)] + rng.normal(0, 0.05, 11)
    assert find_knee(step) == (6, pytest.approx(0.8, abs=0.1))
    # per window: a step of 0.5 nats per token after period 5 of 10, four windows of 20 tokens a period
    period_of = np.repeat(np.arange(10), 4)
    tokens = np.full(40, 20.0)
    nll = (3.0 + 0.5 * (period_of >= 5) + rng.normal(0, 0.1, 40)) * tokens
    low = -(6.0 + rng.normal(0, 0.1, 40))  # Min-K% flat: no knee
    knee = knee_with_interval(nll, tokens, period_of, resamples=60)
    assert knee["break_index"] == 5 and knee["low_index"] >= 4 and knee["high_index"] <= 6
    assert knee["rise"] == pytest.approx(0.5, abs=0.1) and knee["p_value"] < 0.05
    flat = knee_with_interval(-low, np.ones(40), period_of, resamples=60)
    assert flat["p_value"] > 0.05  # the best split of noise is not significant
    with pytest.raises(ValueError, match="at least 4 periods"):
        find_knee([1.0, 2.0, 3.0])


def _train(windows: list[list[int]], tokenizer, seed: int, epochs: int = 25):
    """The tiny preset trained from scratch on `windows` (next-token loss, AdamW)."""
    model = build_model("tiny", len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(windows))
        for start in range(0, len(order), 16):
            batch = [windows[i] for i in order[start:start + 16]]
            width = max(map(len, batch))
            ids = torch.tensor([w + [tokenizer.pad_token_id] * (width - len(w)) for w in batch])
            labels = torch.tensor([w + [-100] * (width - len(w)) for w in batch])
            loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    """The tiny world's split (quarterly), and a registry: frontier and full surrogate trained on every
    training document, vintage 2017-12-31 and its retrained gold on those known by the cutoff."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("probe")
    world = generate_world("synthetic-market", "tiny", seed=0)
    (base / "corpus").mkdir()
    pq.write_table(world.documents, base / "corpus" / "documents.parquet")
    run_split(SplitConfig(corpus=CorpusConfig(path=str(base / "corpus")), output=str(base / "split"),
                          cutoffs=[dt.datetime(2017, 12, 31, tzinfo=UTC), dt.datetime(2019, 12, 31, tzinfo=UTC)],
                          engine="polars"))
    docs = read_slices(base / "split")
    tokenizer = train_bpe(docs["text"].to_pylist(), vocab_size=400)
    train = [(s, t) for s, t, d in zip(docs["slice"].to_pylist(), docs["text"].to_pylist(), docs["doc_id"].to_pylist())
             if not is_holdout(d, HOLDOUT_EVERY)]
    ids = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    everything = pack(ids([t for _, t in train]), 64, tokenizer.eos_token_id)
    known = pack(ids([t for s, t in train if s <= CUTOFF]), 64, tokenizer.eos_token_id)
    frontier, gold = _train(everything, tokenizer, seed=1), _train(known, tokenizer, seed=2)
    root = base / "models"
    for path, model in [("frontier", frontier), ("vintages/2019-12-31", frontier), (f"vintages/{CUTOFF}", gold),
                        (f"retrained/{CUTOFF}/seed=0", gold)]:
        model.save_pretrained(root / path)
        tokenizer.save_pretrained(root / path)
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "manifest.json").write_text(json.dumps({
        "cutoffs": [CUTOFF, "2019-12-31"], "full": "2019-12-31",
        "config": {"split": str(base / "split"), "holdout_every": HOLDOUT_EVERY}}))
    return base


def quarter_apart(a: dt.date, b: dt.date) -> bool:
    return abs((a - b).days) <= 92


def test_the_gold_models_effective_cutoff_is_its_true_cutoff(tiny_registry, tmp_path):
    result = probe_cutoff(ProbeCutoffConfig(corpus=str(tiny_registry / "split"), out=str(tmp_path), period="1q",
                                            registry=str(tiny_registry / "models"), as_of="2018-01-15",
                                            window=32, threads=1, resamples=60))
    cutoffs = result["cutoffs"]
    with pl.Config(tbl_rows=20, tbl_width_chars=200):
        print(cutoffs)
    true = dt.date.fromisoformat(CUTOFF)
    for metric in ("perplexity", "perplexity_ratio"):
        gold = cutoffs.filter(pl.col("model") == "retrained", pl.col("metric") == metric).row(0, named=True)
        assert gold["stated_cutoff"] == CUTOFF and gold["knee"], gold
        assert quarter_apart(gold["cutoff"], true) and gold["low"] <= true <= gold["high"], gold
        assert gold["rise"] > 0.1  # nats per token: the gold never read what came after
        assert not quarter_apart(gold["cutoff"], dt.date(2018, 9, 30))  # a wrong true cutoff would fail
    frontier = cutoffs.filter(pl.col("model") == "frontier", pl.col("metric") == "perplexity").row(0, named=True)
    assert not (frontier["knee"] and quarter_apart(frontier["cutoff"], true)), frontier  # it read everything
    curves = pl.read_parquet(tmp_path / "probe_cutoff.parquet")
    recommended = MethodSpec(name="point_in_time").key  # probe-cutoff's point_in_time: the recommended method
    assert set(curves["model"]) == {"frontier", "surrogate", recommended, "retrained"}
    assert curves["period"].n_unique() >= 8 and (curves["windows"] > 0).all()
    assert (curves["min_k_prob"] < 0).all() and (curves["perplexity"] > 1).all()
    assert curves.filter(pl.col("model") == "frontier")["perplexity_ratio"].is_null().all()
    assert set(cutoffs.filter(pl.col("model") == "frontier")["metric"]) == {"perplexity", "min_k_prob"}


def test_the_command_writes_tables_and_a_plot(tiny_registry, tmp_path, capsys):
    """From a split YAML config, the frontier alone (every document probed: its training data is unknown)."""
    config = tmp_path / "split.yaml"
    config.write_text(f"corpus: {{path: {tiny_registry / 'corpus'}}}\noutput: {tiny_registry / 'split'}\n"
                      f"cutoffs: [2017-12-31, 2019-12-31]\n")
    out = tmp_path / "out"
    code = main(["probe-cutoff", "--frontier", str(tiny_registry / "models" / "frontier"), "--corpus", str(config),
                 "--period", "1q", "--since", "2017-04-01", "--window", "32", "--threads", "1", "--resamples", "50",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "every document" in printed and "since 2017-04-01" in printed and "frontier" in printed
    first = pl.read_parquet(out / "probe_cutoff.parquet")["period"].min()
    assert first.date() == dt.date(2017, 4, 1)
    for name in ("probe_cutoff.parquet", "probe_windows.parquet", "effective_cutoffs.parquet", "probe_cutoff.png"):
        assert (out / name).stat().st_size > 0, name
    assert set(pl.read_parquet(out / "effective_cutoffs.parquet")["metric"]) == {"perplexity", "min_k_prob"}  # no ratio
    assert main(["probe-cutoff", "--registry", str(tiny_registry / "models"), "--corpus", str(config),
                 "--out", str(out)]) == 2
    assert "--as-of together" in capsys.readouterr().err
    bad = ["probe-cutoff", "--frontier", "x", "--corpus", str(config), "--out", str(out)]
    assert main(bad + ["--since", "2017/04"]) == 2
    assert "--since '2017/04' is not a date" in capsys.readouterr().err
    assert main(bad + ["--period", "1z"]) == 2
    assert "--period '1z' is not a calendar period" in capsys.readouterr().err
    shutil.rmtree(out)
