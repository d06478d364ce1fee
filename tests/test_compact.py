"""Compact vocabularies (issue 39): surrogates over the ids their corpus uses, mapped back to the frontier's ids on
exact values; how each mode treats an id the surrogates do not know (log-prob -inf: the contrast is 0 there); the
temperature fit and the n-gram surrogate over a support."""
import math

import numpy as np
import pytest
import torch

from tests.lm_fixtures import BigramMock, tiny_model, word_tokenizer
from vintage.compact import (CompactLM, CompactVocabulary, corpus_vocabulary, expand_logits, load_causal_lm,
                             worth_compacting)
from vintage.decoding import PointInTimeLM
from vintage.modes import Steering, known_or_frontier, steer
from vintage.ngram import NgramLM, emit_ngrams
from vintage.presets import ModelPreset, build_model
from vintage.temperature import fit_temperature

INF = float("-inf")


def test_the_mapping_on_exact_values(tmp_path):
    vocab = CompactVocabulary((2, 5, 7), size=10)
    assert vocab.rows == 4 and vocab.other == 3
    assert vocab.table().tolist() == [3, 3, 0, 3, 3, 1, 3, 2, 3, 3]  # every other id is OTHER
    assert vocab.to_compact([[5, 2, 9, 7], [0]]) == [[1, 0, 3, 2], [3]]
    vocab.save(tmp_path)
    assert CompactVocabulary.load(tmp_path) == vocab and CompactVocabulary.load(tmp_path / "none") is None
    logits = torch.tensor([[1.0, 2.0, 3.0, 9.0]])  # the OTHER row (9) is never a token: dropped
    assert expand_logits(logits, torch.tensor(vocab.ids), 10).tolist() == [
        [INF, INF, 1.0, INF, INF, 2.0, INF, 3.0, INF, INF]]
    with pytest.raises(ValueError, match="ascending"):
        CompactVocabulary((5, 2), 10)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        CompactVocabulary((2, 10), 10)


def test_the_corpus_vocabulary_and_when_it_pays():
    vocab = corpus_vocabulary([[4, 1, 4], [9]], size=40_000, always=(0, None))
    assert vocab.ids == (0, 1, 4, 9)
    assert worth_compacting("auto", vocab) and worth_compacting("always", vocab)
    assert not worth_compacting("never", vocab)
    assert not worth_compacting("auto", CompactVocabulary((0, 1, 4, 9), 2048))  # a small BPE stays whole
    assert not worth_compacting("auto", CompactVocabulary(tuple(range(30_000)), 40_000))  # saves < half the rows
    with pytest.raises(ValueError, match="auto, always or never"):
        worth_compacting("yes", vocab)


def _compact_pair(tmp_path):
    """A tiny compact GPT-2 over the ids (0, 2, 3, 5, 6) of a 23-token word vocabulary, saved and loaded back."""
    tokenizer = word_tokenizer()
    vocab = CompactVocabulary((0, 2, 3, 5, 6), len(tokenizer))
    inner = build_model(ModelPreset(family="gpt2", n_layer=1, n_embd=16, n_head=2, n_positions=32), vocab.rows,
                        seed=1, eos_token_id=1, pad_token_id=0).eval()
    inner.save_pretrained(tmp_path / "compact", safe_serialization=True)
    vocab.save(tmp_path / "compact")
    return tokenizer, vocab, inner, load_causal_lm(tmp_path / "compact")


def test_a_compact_surrogate_answers_over_the_frontiers_ids(tmp_path):
    tokenizer, vocab, inner, model = _compact_pair(tmp_path)
    assert isinstance(model, CompactLM) and model.config.vocab_size == len(tokenizer)
    ids = torch.tensor([[5, 2, 9, 6]])  # 9 is outside the set: the model reads OTHER there
    with torch.inference_mode():
        out = model(input_ids=ids).logits
        expected = inner(input_ids=torch.tensor([[3, 1, 5, 4]])).logits
    assert out.shape == (1, 4, len(tokenizer))
    assert torch.equal(out[..., list(vocab.ids)], expected[..., :5])
    outside = [i for i in range(len(tokenizer)) if i not in vocab.ids]
    assert torch.isinf(out[..., outside]).all() and (out[..., outside] < 0).all()


def test_generation_with_a_compact_pair_keeps_its_cache_and_never_emits_unknown_ids(tmp_path):
    tokenizer, vocab, _, model = _compact_pair(tmp_path)
    frontier = tiny_model(tokenizer, seed=3)
    lm = PointInTimeLM(frontier, model, model, tokenizer, steering=Steering("switch", margin=-1.0))
    _, cached, scores = lm.generate(["Acme results"], max_new_tokens=4, return_scores=True, stop_at_eos=False)
    _, fresh, _ = lm.generate(["Acme results"], max_new_tokens=4, return_scores=True, stop_at_eos=False,
                              use_cache=False)
    assert torch.equal(cached, fresh)
    # switch everywhere (margin -1): the vintage's answer over its set, the frontier's mass on the rest
    assert torch.allclose(scores.exp().sum(-1), torch.ones(scores.shape[:2]), atol=1e-5)


# -- the modes where the surrogates know nothing (-inf) ---------------------------------------------------------

F = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()  # the frontier
V = torch.tensor([[0.5, 0.25, 0.25, 0.0]]).log()  # the pair knows tokens 0-2 only (token 3: -inf)
R = torch.tensor([[0.25, 0.5, 0.25, 0.0]]).log()


def test_linear_keeps_the_frontiers_log_prob_where_the_pair_knows_nothing():
    out = steer(Steering("linear", alpha=1.0), F, V, R)
    contrast = torch.tensor([[math.log(2), math.log(0.5), 0.0, 0.0]])  # V - R; 0 on token 3
    assert torch.allclose(out, torch.log_softmax(F + contrast, -1), atol=1e-7)
    adaptive = steer(Steering("adaptive", alpha=1.0, margin=0.0, width=1e-9), F, V, R)  # w = 1
    assert torch.allclose(adaptive, out, atol=1e-7) and torch.isfinite(out).all()


def test_rank_never_bans_and_the_gate_never_reads_an_unknown_token():
    # full over vintage: token 1 (x2); token 3 would be NaN if read
    out = steer(Steering("rank", k=2, margin=0.0, plausibility=None), F, V, R)
    assert torch.isinf(out[0, 1]) and torch.isfinite(out[0, [0, 2, 3]]).all()
    assert torch.allclose(out[0, [0, 2, 3]].exp(), torch.tensor([0.4, 0.2, 0.1]) / 0.7)
    gate = steer(Steering("switch", margin=math.log(2) - 1e-6, plausibility=None), F, V, R)
    assert not torch.equal(gate, torch.log_softmax(F, -1))  # fired on token 1's log 2, not on token 3's NaN


def test_a_replacement_leaves_the_frontiers_mass_on_unknown_tokens():
    mixed = known_or_frontier(torch.log_softmax(V, -1), torch.log_softmax(F, -1))
    assert torch.allclose(mixed.exp(), torch.tensor([[0.45, 0.225, 0.225, 0.1]]))  # 0.9 x V, then F's 0.1
    switch = steer(Steering("switch", margin=-1.0, plausibility=None), F, V, R)
    assert torch.allclose(switch, mixed)
    blend = steer(Steering("blend", margin=0.0, width=2 * math.log(2), plausibility=None), F, V, R)  # w = 0.5
    assert torch.allclose(blend.exp(), 0.5 * F.exp() + 0.5 * mixed.exp())
    whole = torch.log_softmax(V.clamp(min=-50), -1)  # a surrogate over the whole vocabulary: no change
    assert torch.equal(known_or_frontier(whole, F), whole)


def test_temperatures_are_fitted_on_the_surrogates_support():
    torch.manual_seed(0)
    frontier, surrogate = torch.randn(64, 6), 3 * torch.randn(64, 6)
    support = [0, 2, 3, 5]
    compact = expand_logits(surrogate[:, support], torch.tensor(support), 6)
    assert fit_temperature(compact, frontier) == pytest.approx(
        fit_temperature(surrogate[:, support], frontier[:, support]), rel=1e-6)


def test_an_ngram_over_a_support_is_the_same_model_over_compact_ids():
    sequences = [[4, 7, 4, 9], [7, 9, 4]]
    support = [4, 7, 9]
    compact = NgramLM(emit_ngrams([[support.index(t) for t in s] for s in sequences], 3), vocab_size=3, order=3)
    wide = NgramLM(emit_ngrams(sequences, 3), vocab_size=12, order=3, support=support)
    with torch.inference_mode():
        narrow = compact(torch.tensor([[0, 1, 0]])).logits
        full = wide(torch.tensor([[4, 7, 4]])).logits
    assert torch.allclose(full[..., support], narrow, atol=1e-6)
    assert torch.isinf(full[..., [0, 1, 2, 3, 5, 6, 8, 10, 11]]).all()
    assert np.isclose(wide.distribution([4, 7]).sum(), 1.0)


def test_a_compact_model_starts_as_the_whole_model_restricted_to_its_rows():
    vocab = CompactVocabulary((0, 2, 3, 5, 6), 23)
    preset = ModelPreset(family="llama", n_layer=1, n_embd=16, n_head=2, n_positions=32, tied=False)
    whole = build_model(preset, 23, seed=4, eos_token_id=2, pad_token_id=0)
    compact = build_model(preset, 23, seed=4, eos_token_id=2, pad_token_id=0, rows=vocab.source_rows())
    assert vocab.source_rows() == [0, 2, 3, 5, 6, 1] and compact.config.vocab_size == 6
    assert (compact.config.eos_token_id, compact.config.pad_token_id) == (1, 0)
    ids = torch.tensor([[5, 2, 6]])
    with torch.inference_mode():
        expected = whole(input_ids=ids).logits[..., list(vocab.source_rows())]
        got = compact(input_ids=torch.tensor(vocab.to_compact(ids.tolist()))).logits
    assert torch.allclose(got, expected, atol=1e-6)
