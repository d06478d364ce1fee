"""N-gram surrogates: Kneser-Ney by hand, normalisation, additive slice counts (local and Ray Data), incremental
recounts, and the model behind PointInTimeLM (batched = one by one, cached = recomputed)."""
import datetime as dt
import math
import random

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from corpora.split import SplitConfig, read_slices, run_split
from corpora.validation import CorpusConfig
from corpora.worlds import generate_world
from tests.corpus_edits import correct_one_text
from tests.lm_fixtures import tiny_model, word_tokenizer
from vintage.decoding import PointInTimeLM
from vintage.modes import Steering
from vintage.ngram import NgramLM, count_slices, emit_ngrams, ngram_fingerprint, vintage_counts
from vintage.holdout import is_holdout, registry_holdout
from vintage.tokenizer import load_tokenizer, train_bpe

UTC = dt.timezone.utc


def test_kneser_ney_by_hand():
    # sequences (0 1) (0 1) (0 2), order 2, vocabulary 4. Bigrams: (BOS 0) x3, (0 1) x2, (0 2) x1.
    model = NgramLM(emit_ngrams([[0, 1], [0, 1], [0, 2]], 2), vocab_size=4, order=2)
    d2 = 1 / (1 + 2 * 1)  # bigram counts: one 1 ((0 2)), one 2 ((0 1)), one 3
    assert model.discounts[2] == pytest.approx(d2)
    # unigram continuation counts: 0, 1 and 2 each follow one distinct token; n1=3, n2=0 → D=1, clamped
    d1 = 0.95
    p_uni = np.array([(1 - d1) / 3 + d1 * 3 / 3 * 0.25] * 3 + [d1 * 3 / 3 * 0.25])
    assert model.distribution([]) == pytest.approx(p_uni)
    # after 0: seen twice as (0 1), once as (0 2): 3 tokens, 2 types
    expected = (d2 * 2 / 3) * p_uni
    expected[1] += (2 - d2) / 3
    expected[2] += (1 - d2) / 3
    assert model.distribution([0]) == pytest.approx(expected)
    assert model.distribution([3]) == pytest.approx(p_uni)  # unseen context: the lower order stands


def test_distribution_sums_to_one_over_the_vocabulary():
    rng = random.Random(0)
    sequences = [[rng.randrange(30) for _ in range(rng.randrange(3, 25))] for _ in range(200)]
    for order in (3, 5):
        model = NgramLM(emit_ngrams(sequences, order), vocab_size=40, order=order)
        for _ in range(50):
            seq = rng.choice(sequences)
            context = seq[: rng.randrange(0, len(seq))] if rng.random() < 0.7 else [rng.randrange(40) for _ in range(4)]
            p = model.distribution(context)
            assert p.sum() == pytest.approx(1.0, abs=1e-9)
            assert (p > 0).all()  # every token of the vocabulary keeps probability: the contrast stays finite
        pruned = NgramLM(emit_ngrams(sequences, order), vocab_size=40, order=order, min_count=2)
        assert pruned.rows < model.rows
        assert pruned.distribution(sequences[0][:3]).sum() == pytest.approx(1.0, abs=1e-9)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny world split at three cutoffs, and a registry holding only a BPE tokenizer."""
    base = tmp_path_factory.mktemp("ngram")
    world = generate_world("synthetic-market", "tiny", seed=0)
    (base / "corpus").mkdir()
    pq.write_table(world.documents, base / "corpus" / "documents.parquet")
    cutoffs = [dt.datetime(2017, 6, 30, tzinfo=UTC), dt.datetime(2017, 12, 31, tzinfo=UTC),
               dt.datetime(2019, 12, 31, tzinfo=UTC)]
    for name, cuts in (("split2", cutoffs[:2]), ("split3", cutoffs)):
        run_split(SplitConfig(corpus=CorpusConfig(path=str(base / "corpus")), output=str(base / name),
                              cutoffs=cuts, engine="polars"))
    tokenizer = train_bpe(read_slices(base / "split3")["text"].to_pylist(), vocab_size=300)
    tokenizer.save_pretrained(base / "tokenizer")
    return base


def fresh_registry(tiny, name):
    root = tiny / name
    root.mkdir()
    load_tokenizer(tiny / "tokenizer").save_pretrained(root / "tokenizer")
    return root


def test_a_corrected_text_under_the_same_id_is_counted_again(tiny, tmp_path):
    import shutil

    split = tmp_path / "split"
    shutil.copytree(tiny / "split2", split)
    root = fresh_registry(tiny, "corrected")
    first = count_slices(root, split, order=3, engine="local")
    before = {c: ngram_fingerprint(root / "ngram", c) for c in first.counted}
    correct_one_text(split, first.counted[-1])
    again = count_slices(root, split, order=3, engine="local")
    assert again.counted == [first.counted[-1]] and again.skipped == first.counted[:-1]
    assert ngram_fingerprint(root / "ngram", first.counted[0]) == before[first.counted[0]]
    assert ngram_fingerprint(root / "ngram", first.counted[-1]) != before[first.counted[-1]]


def test_ngram_counts_hold_out_what_the_registry_was_trained_holding_out(tiny, capsys):
    """`vintage ngram` reads the hold-out from the registry's training config: another value would count
    documents the trained models were validated on (a leak into the n-gram vintages), so it is an error."""
    import json

    from pipelines.cli import main as vintage

    root = fresh_registry(tiny, "holdout")
    (root / "manifest.json").write_text(json.dumps({"config": {"holdout_every": 7, "split": str(tiny / "split2")}}))
    assert vintage(["ngram", "--registry", str(root), "--split", str(tiny / "split2"), "--order", "3",
                    "--engine", "local"]) == 0
    assert json.loads((root / "ngram" / "manifest.json").read_text())["holdout_every"] == 7
    assert vintage(["ngram", "--registry", str(root), "--split", str(tiny / "split2"), "--order", "3",
                    "--engine", "local", "--holdout-every", "20"]) == 2
    assert "trained holding out one document in 7; --holdout-every 20 would count" in capsys.readouterr().err
    bare = fresh_registry(tiny, "holdout-bare")  # no training config yet: the value given, else the default
    assert (registry_holdout(bare), registry_holdout(bare, 9), registry_holdout(root)) == (20, 9, 7)


def test_vintage_counts_are_the_counts_of_the_documents_up_to_the_cutoff(tiny):
    root = fresh_registry(tiny, "additive")
    build = count_slices(root, tiny / "split3", order=3, engine="local")
    tokenizer = load_tokenizer(root / "tokenizer")
    documents = read_slices(tiny / "split3")
    slices = sorted(build.manifest["slices"])
    assert len(slices) == 3 and build.counted == slices
    for cutoff in slices:
        docs = documents.filter(pc.less_equal(documents["slice"], cutoff))
        texts = [t for t, d in zip(docs["text"].to_pylist(), docs["doc_id"].to_pylist()) if not is_holdout(d, 20)]
        ids = [seq + [tokenizer.eos_token_id] for seq in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        assert vintage_counts(root / "ngram", cutoff).equals(emit_ngrams(ids, 3))
    # the vintages grow: every n-gram of an earlier vintage is in the later one with at least its count
    first, last = vintage_counts(root / "ngram", slices[0]), vintage_counts(root / "ngram", slices[-1])
    assert first.num_rows < last.num_rows
    assert sum(first["count"].to_pylist()) < sum(last["count"].to_pylist())


def test_a_grown_corpus_counts_only_its_new_slice_and_fingerprints_follow(tiny):
    root = fresh_registry(tiny, "grown")
    first = count_slices(root, tiny / "split2", order=3, engine="local")
    assert len(first.counted) == 2
    before = {c: ngram_fingerprint(root / "ngram", c) for c in first.counted}
    again = count_slices(root, tiny / "split2", order=3, engine="local")
    assert again.counted == [] and len(again.skipped) == 2
    grown = count_slices(root, tiny / "split3", order=3, engine="local")
    assert grown.counted == ["2019-12-31"] and grown.skipped == first.counted
    assert {c: ngram_fingerprint(root / "ngram", c) for c in first.counted} == before  # old vintages unchanged
    other_order = count_slices(root, tiny / "split3", order=4, engine="local")
    assert len(other_order.counted) == 3  # another order: everything is recounted



@pytest.mark.slow
def test_ray_data_counts_equal_one_process(tiny, ray_local):
    local, distributed = fresh_registry(tiny, "local"), fresh_registry(tiny, "ray")
    count_slices(local, tiny / "split3", order=4, engine="local")
    count_slices(distributed, tiny / "split3", order=4, engine="ray", batch_size=16)
    files = sorted(p.name for p in (local / "ngram" / "slices").glob("*.parquet"))
    assert len(files) == 3
    for name in files:
        a = pq.read_table(local / "ngram" / "slices" / name)
        b = pq.read_table(distributed / "ngram" / "slices" / name)
        assert a.num_rows > 0 and a.equals(b), name


def test_ngram_surrogates_behind_point_in_time():
    tok = word_tokenizer()
    encode = lambda texts: [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]  # noqa: E731
    old = ["Acme 2019q1 results : beat .", "the market was calm .", "Brio 2019q1 results : miss ."]
    new = ["Acme 2019q2 results : miss . Shares fell", "Brio 2019q2 results : beat . Shares rose"]
    vintage = NgramLM(emit_ngrams(encode(old), 5), len(tok), 5)
    full = NgramLM(emit_ngrams(encode(old + new), 5), len(tok), 5)  # the company is 4 tokens back
    frontier = tiny_model(tok, seed=3)
    lm = PointInTimeLM(frontier, vintage, full, tok, alpha=1.0, batch_size=2)
    prompts = ["Acme 2019q2 results :", "Brio 2019q2 results :", "the market", "Acme 2019q1 results :"]
    choices = [[" beat", " miss"], [" beat", " miss"], [" was calm", " fell"], [" beat", " miss"]]
    batched = lm.score(prompts, choices)
    alone = [lm.score([p], [c])[0] for p, c in zip(prompts, choices)]
    for a, b in zip(batched, alone):
        assert a.choice_logprobs == pytest.approx(b.choice_logprobs, abs=1e-5)
    # the full n-gram knows Acme's 2019q2 miss, the vintage does not: the contrast moves toward "beat"
    full_only = PointInTimeLM(full, None, None, tok)
    assert full_only.score(prompts[:1], choices[:1])[0].prediction == 1
    assert batched[0].choice_logprobs[0] - batched[0].choice_logprobs[1] > \
        lm.with_alpha(0).score(prompts[:1], choices[:1])[0].choice_logprobs[0] \
        - lm.with_alpha(0).score(prompts[:1], choices[:1])[0].choice_logprobs[1]
    cached = lm.generate(prompts, max_new_tokens=5, use_cache=True, return_scores=True)
    recomputed = lm.generate(prompts, max_new_tokens=5, use_cache=False, return_scores=True)
    assert cached[0] == recomputed[0]
    assert torch.allclose(cached[2], recomputed[2], atol=1e-5)
    out = full(torch.tensor([[5, 6, 7]]))
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(1, 3))
    assert math.isfinite(float(out.logits.min()))


def test_ngram_gate_with_a_neural_fallback():
    """Switch mode gated by the n-gram pair, the neural vintage's distribution where it fires: exact against
    switch_logprobs on each model's own logits, batched = one by one, cached generation = recomputed."""
    from vintage.modes import switch_logprobs

    tok = word_tokenizer()
    encode = lambda texts: [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]  # noqa: E731
    old = ["Acme 2019q1 results : beat .", "the market was calm .", "Brio 2019q1 results : miss ."]
    new = ["Acme 2019q2 results : miss . Shares fell"]
    vintage = NgramLM(emit_ngrams(encode(old), 5), len(tok), 5)
    full = NgramLM(emit_ngrams(encode(old + new), 5), len(tok), 5)
    frontier, neural_vintage = tiny_model(tok, seed=3), tiny_model(tok, seed=4)
    # full - vintage on " miss": 1.21 nats after "Acme 2019q2 results :" (learnt after the cutoff), 0.96 after
    # "Acme 2019q1 results :" (the backoff shifts: "results : miss" is seen twice); a margin between the two
    lm = PointInTimeLM(frontier, vintage, full, tok, batch_size=2, steering=Steering("switch", margin=1.1),
                       fallback=neural_vintage)
    prompts = ["Acme 2019q2 results :", "Acme 2019q1 results :", "the market"]
    choices = [[" beat", " miss"], [" beat", " miss"], [" was calm", " fell"]]
    batched = lm.score(prompts, choices)
    for prompt, options, together in zip(prompts, choices, batched):
        assert together.choice_logprobs == pytest.approx(lm.score([prompt], [options])[0].choice_logprobs, abs=1e-5)
    with torch.inference_mode():
        for prompt, options, scored in zip(prompts[:2], choices[:2], batched):
            ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
            logits = [m(input_ids=ids).logits[0, -1, : len(tok)] for m in (frontier, vintage, full, neural_vintage)]
            expected = switch_logprobs(*logits[:3], margin=1.1, plausibility=None, fallback=logits[3])
            answer_ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in options]
            assert scored.choice_logprobs == pytest.approx([float(expected[i]) for i in answer_ids], abs=1e-5)
            gate_fired = torch.allclose(expected, F.log_softmax(logits[3].float(), -1))
            # the full n-gram learnt Acme's 2019q2 result after the cutoff: the gate fires there, not on 2019q1
            assert gate_fired == (prompt == prompts[0])
    cached = lm.generate(prompts, max_new_tokens=5, use_cache=True, return_scores=True)
    recomputed = lm.generate(prompts, max_new_tokens=5, use_cache=False, return_scores=True)
    assert cached[0] == recomputed[0]
    assert torch.allclose(cached[2], recomputed[2], atol=1e-5)


def test_over_a_frontiers_vocabulary_the_ngram_spreads_over_the_corpus_tokens_only(tiny):
    """Llama 3's 128k tokenizer: the smoothing's base is the tokens the counts use, shared by every vintage; the
    other ids get -inf (vintage/compact.py), which the modes read as unknown (the frontier's log-prob stands)."""
    import json

    from vintage.pretrained import real_tokenizer

    root = tiny / "llama3"
    root.mkdir()
    load_tokenizer(real_tokenizer("llama3")).save_pretrained(root / "tokenizer")
    count_slices(root, tiny / "split3", order=3, engine="local")
    manifest = json.loads((root / "ngram" / "manifest.json").read_text())
    full = vintage_counts(root / "ngram", "2019-12-31")
    unigrams = full.filter(pc.equal(full["order"], 1))["token"].to_pylist()
    assert manifest["support"] == sorted(set(unigrams)) and len(manifest["support"]) < 128_256 / 50
    (root / "manifest.json").write_text(json.dumps({"cutoffs": ["2017-06-30", "2019-12-31"]}))  # a registry
    early, late = NgramLM.from_registry(root, "2017-06-30"), NgramLM.from_registry(root, "2019-12-31")
    tokens = torch.tensor([[manifest["support"][3], manifest["support"][7]]])
    with torch.inference_mode():
        a, b = early(tokens).logits, late(tokens).logits
    support = torch.tensor(manifest["support"])
    for logits in (a, b):
        assert torch.isinf(logits).sum() == 2 * (128_256 - len(support))
        assert torch.allclose(logits[..., support].exp().sum(-1), torch.ones(1, 2), atol=1e-5)
    assert torch.isfinite(a[..., support]).all() and torch.isfinite(b[..., support]).all()  # one shared support
