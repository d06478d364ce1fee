"""Point-in-time decoding: exact arithmetic, caches, batching, alpha=0, the mask, vocabularies, the registry."""
import datetime as dt
import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.lm_fixtures import BigramMock, tiny_model, word_tokenizer
from vintage import recommended
from vintage.calibration import Probe, calibrate_alpha
from vintage.decoding import PointInTimeLM
from vintage.logits_processor import PointInTimeLogitsProcessor
from vintage.modes import Steering, Temperatures, combine_logprobs
from vintage.vocabulary import VocabularyMismatch
from vintage.registry import Registry, RegistryError

torch.set_num_threads(1)


def log_softmax(xs):
    m = max(xs)
    z = math.log(sum(math.exp(x - m) for x in xs)) + m
    return [x - z for x in xs]


def test_combination_matches_hand_computation():
    f, v, u = [2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]
    alpha = 0.5
    raw = [a + alpha * (b - c) for a, b, c in zip(log_softmax(f), log_softmax(v), log_softmax(u))]
    expected = log_softmax(raw)
    got = combine_logprobs(torch.tensor(f), torch.tensor(v), torch.tensor(u), alpha)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(got.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_alpha_zero_is_the_frontier_alone_and_temperature_scales_logits():
    torch.manual_seed(0)
    f, v, u = torch.randn(4, 7), torch.randn(4, 7), torch.randn(4, 7)
    assert torch.equal(combine_logprobs(f, v, u, 0.0), F.log_softmax(f, -1))
    t = Temperatures(frontier=2.0, vintage=0.5, full=3.0)
    assert torch.allclose(combine_logprobs(f, v, u, 0.7, t), combine_logprobs(f / 2, v / 0.5, u / 3, 0.7), atol=1e-6)


def test_plausibility_mask_keeps_the_frontier_outside_the_plausible_set():
    f = torch.tensor([3.0, 2.9, -2.0, -3.0])  # tokens 2 and 3 are implausible at beta = 0.1
    v, u = torch.tensor([0.0, 5.0, 9.0, 0.0]), torch.tensor([5.0, 0.0, 0.0, 9.0])
    out = combine_logprobs(f, v, u, 1.0, plausibility=0.1)
    lp_f = F.log_softmax(f, -1)
    # outside the set: the frontier's relative log-probs untouched, nothing -inf
    assert float(out[2] - out[3]) == pytest.approx(float(lp_f[2] - lp_f[3]), abs=1e-5)
    assert torch.isfinite(out).all()
    # inside it the contrast reorders: token 1 (vintage-favoured) overtakes token 0 (full-favoured)
    assert out[1] > out[0]
    unmasked = combine_logprobs(f, v, u, 1.0)
    assert unmasked[2] > out[2]  # without the mask the implausible token 2 would be boosted
    with pytest.raises(ValueError, match="plausibility"):
        combine_logprobs(f, v, u, 1.0, plausibility=0.0)


def mock_lm(alpha=0.5, **kwargs):
    tok = word_tokenizer()
    torch.manual_seed(1)
    tables = [torch.randn(len(tok), len(tok)) for _ in range(3)]
    return PointInTimeLM(BigramMock(tables[0]), BigramMock(tables[1]), BigramMock(tables[2]), tok, alpha=alpha,
                         **kwargs), tok, tables


def test_score_is_exact_with_known_logits():
    lm, tok, (tf, tv, tu) = mock_lm(alpha=0.5)
    (scored,) = lm.score(["Acme 2019q1 results :"], [[" beat .", " miss"]])
    ids = tok("Acme 2019q1 results : beat .", add_special_tokens=False)["input_ids"]
    expected = []
    for prev, nxt in zip(ids[3:5], ids[4:6]):  # ":" predicts "beat", "beat" predicts "."
        expected.append(float(combine_logprobs(tf[prev], tv[prev], tu[prev], 0.5)[nxt]))
    assert scored.token_logprobs[0] == pytest.approx(expected, abs=1e-5)
    assert scored.choice_logprobs[0] == pytest.approx(sum(expected), abs=1e-5)
    miss = tok(" miss", add_special_tokens=False)["input_ids"][0]
    colon = ids[3]
    expected_miss = float(combine_logprobs(tf[colon], tv[colon], tu[colon], 0.5)[miss])
    assert scored.choice_logprobs[1] == pytest.approx(expected_miss, abs=1e-5)
    assert scored.prediction == (0 if sum(expected) > expected_miss else 1)  # from the hand-computed values
    assert scored.probabilities() == pytest.approx(torch.softmax(torch.tensor([sum(expected), expected_miss]), 0).tolist(),
                                                   abs=1e-6)


def test_empty_choice_is_an_error_naming_the_query():
    lm, _, _ = mock_lm()
    with pytest.raises(ValueError, match=r"query 1: a choice is empty after tokenisation"):
        lm.score(["Acme results :", "Brio results :"], [[" beat"], ["", " miss"]])


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def real_lm(request):
    tok = word_tokenizer()
    frontier = tiny_model(tok, request.param, seed=0, n_embd=48, n_layer=2)
    full, vintage = tiny_model(tok, request.param, seed=1), tiny_model(tok, request.param, seed=2)
    return PointInTimeLM(frontier, vintage, full, tok, alpha=0.7, plausibility=0.05, batch_size=3)


PROMPTS = ["Acme 2019q1 results :", "Brio preview points to a", "the market was calm . Acme 2019q2 results :"]
CHOICES = [[" beat", " miss"], [" beat .", " miss"], [" beat", " miss .", " rose"]]


def test_batched_scores_equal_one_by_one(real_lm):
    together = real_lm.score(PROMPTS, CHOICES)
    for prompt, choices, batched in zip(PROMPTS, CHOICES, together):
        (alone,) = real_lm.score([prompt], [choices])
        assert batched.choice_logprobs == pytest.approx(alone.choice_logprobs, abs=1e-4)


def test_generation_with_caches_equals_full_recomputation(real_lm):
    cached, ids_a, scores_a = real_lm.generate(PROMPTS, max_new_tokens=6, return_scores=True)
    full, ids_b, scores_b = real_lm.generate(PROMPTS, max_new_tokens=6, use_cache=False, return_scores=True)
    assert torch.equal(ids_a, ids_b) and cached == full
    assert torch.allclose(scores_a, scores_b, atol=1e-4)


def test_overlapped_surrogates_generate_what_in_process_ones_do():
    """overlap=True: the surrogates (and their KV caches) live in a child process; same tokens, same scores,
    for the linear contrast and for switch mode with a fallback (one process, started once: seconds)."""
    tok = word_tokenizer()
    real_lm = PointInTimeLM(tiny_model(tok, "gpt2", seed=0, n_embd=48, n_layer=2), tiny_model(tok, "gpt2", seed=2),
                            tiny_model(tok, "gpt2", seed=1), tok, alpha=0.7, plausibility=0.05, batch_size=3)
    hybrid = PointInTimeLM(real_lm.frontier, real_lm.vintage, real_lm.full, real_lm.tokenizer,
                           batch_size=3, steering=Steering("switch", margin=0.2, plausibility=0.05),
                           fallback=real_lm.vintage, overlap=True)
    linear = hybrid.with_settings(mode="linear", alpha=0.7, fallback=None)  # the same process, fallback unused
    try:
        expected = real_lm.with_settings(mode="switch", margin=0.2, fallback=real_lm.vintage)
        assert hybrid.generate(PROMPTS, max_new_tokens=5) == expected.generate(PROMPTS, max_new_tokens=5)
        texts, ids, scores = linear.generate(PROMPTS, max_new_tokens=6, return_scores=True)
        expected = real_lm.generate(PROMPTS, max_new_tokens=6, return_scores=True)
        assert texts == expected[0] and torch.equal(ids, expected[1])
        assert torch.allclose(scores, expected[2], atol=1e-5)
        sample = dict(max_new_tokens=5, greedy=False, seed=3, top_k=4)
        assert linear.generate(PROMPTS, **sample) == real_lm.generate(PROMPTS, **sample)
        assert linear._worker is hybrid._worker
        process = hybrid._worker._process
    finally:
        hybrid.close()
    process.join(timeout=10)
    assert not process.is_alive()


def test_batched_generation_equals_one_by_one(real_lm):
    together = real_lm.generate(PROMPTS, max_new_tokens=5)
    assert together == [real_lm.generate([p], max_new_tokens=5)[0] for p in PROMPTS]


def test_alpha_zero_scores_and_perplexity_are_the_frontiers(real_lm):
    lm0 = real_lm.with_alpha(0.0)
    tok = real_lm.tokenizer
    text = "Acme 2019q1 results : beat . Shares rose"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        loss = real_lm.frontier(input_ids=ids, labels=ids).loss
    assert lm0.perplexity([text]) == pytest.approx(math.exp(float(loss)), rel=1e-4)
    (scored,) = lm0.score([PROMPTS[0]], [CHOICES[0]])
    with torch.inference_mode():
        logits = real_lm.frontier(input_ids=torch.tensor([tok(PROMPTS[0], add_special_tokens=False)["input_ids"]])).logits
    lp = F.log_softmax(logits[0, -1], -1)
    beat = tok(" beat", add_special_tokens=False)["input_ids"][0]
    assert scored.choice_logprobs[0] == pytest.approx(float(lp[beat]), abs=1e-5)


def test_alpha_zero_generation_is_the_frontiers_greedy_generation(real_lm):
    tok = real_lm.tokenizer
    ids = torch.tensor([tok(PROMPTS[1], add_special_tokens=False)["input_ids"]])
    out = real_lm.frontier.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
    lm0 = real_lm.with_alpha(0.0)
    assert lm0.generate([PROMPTS[1]], max_new_tokens=5) == [tok.decode(out[0, ids.shape[1]:])]


def test_logits_processor_matches_point_in_time_generation(real_lm):
    """Each step's processed scores are the steered distribution of that prefix (the three models run on it from
    scratch, no cache), which differs from the frontier's own: a processor that changed nothing would fail (with
    these random models the greedy text alone is the frontier's either way)."""
    tok = real_lm.tokenizer
    ids = torch.tensor([tok(PROMPTS[0], add_special_tokens=False)["input_ids"]])
    processor = PointInTimeLogitsProcessor(real_lm.vintage, real_lm.full, real_lm.alpha, plausibility=0.05)
    out = real_lm.frontier.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                    logits_processor=[processor], pad_token_id=tok.pad_token_id,
                                    output_scores=True, return_dict_in_generate=True)
    assert tok.decode(out.sequences[0, ids.shape[1]:]) == real_lm.generate([PROMPTS[0]], max_new_tokens=5)[0]
    for step, processed in enumerate(out.scores):
        prefix = out.sequences[:, : ids.shape[1] + step]
        with torch.inference_mode():
            f, v, u = (m(input_ids=prefix).logits[:, -1] for m in (real_lm.frontier, real_lm.vintage, real_lm.full))
        expected = combine_logprobs(f, v, u, real_lm.alpha, plausibility=0.05)
        torch.testing.assert_close(processed, expected, atol=1e-4, rtol=0)
        assert (expected - F.log_softmax(f, -1)).abs().max() > 0.05  # the steering moved this step


def test_surrogates_in_another_dtype(real_lm):
    """bfloat16 surrogates (copies: `.to()` converts a module in place, which would make the float32
    reference bfloat16 too and the comparison one of a result with itself) score as the float32 ones do."""
    import copy

    reference = real_lm.score(PROMPTS, CHOICES)
    half = PointInTimeLM(real_lm.frontier, copy.deepcopy(real_lm.vintage).to(torch.bfloat16),
                         copy.deepcopy(real_lm.full).to(torch.bfloat16), real_lm.tokenizer, alpha=real_lm.alpha,
                         plausibility=0.05)
    assert next(real_lm.vintage.parameters()).dtype == torch.float32
    assert next(half.vintage.parameters()).dtype == torch.bfloat16
    for x, y in zip(half.score(PROMPTS, CHOICES), reference):
        assert x.choice_logprobs == pytest.approx(y.choice_logprobs, abs=0.05)


def save(model, tok, path):
    model.save_pretrained(path)  # safetensors by default
    tok.save_pretrained(path)
    return path


def test_vocabulary_mismatch_is_an_error_naming_both_tokenizers(tmp_path):
    tok = word_tokenizer()
    other = word_tokenizer(["Acme", "Brio", "Zed"])
    frontier = save(tiny_model(tok), tok, tmp_path / "frontier")
    full = save(tiny_model(tok, seed=1), tok, tmp_path / "full")
    vintage = save(tiny_model(other, seed=2), other, tmp_path / "vintage")
    with pytest.raises(VocabularyMismatch, match=r"frontier has 23 tokens.*vintage has 6"):
        PointInTimeLM.from_pretrained(frontier, vintage, full)
    swapped = word_tokenizer(list(reversed(["Acme", "Brio", "2019q1", *["w%d" % i for i in range(17)]])))
    save(tiny_model(swapped, seed=2), swapped, tmp_path / "vintage2")
    with pytest.raises(VocabularyMismatch, match="map tokens to different ids"):
        PointInTimeLM.from_pretrained(frontier, tmp_path / "vintage2", full)
    lm = PointInTimeLM.from_pretrained(frontier, full, tmp_path / "full", alpha=0.3)
    # the same directory as vintage and full: the contrast cancels, the frontier's own scores remain
    (steered,), (alone,) = lm.score([PROMPTS[0]], [CHOICES[0]]), lm.with_alpha(0.0).score([PROMPTS[0]], [CHOICES[0]])
    assert len(steered.choice_logprobs) == len(CHOICES[0])
    assert steered.choice_logprobs == pytest.approx(alone.choice_logprobs, abs=1e-5)


def make_registry(tmp_path, tok, cutoffs=("2019-03-31", "2019-06-30", "2019-12-31")):
    root = tmp_path / "registry"
    tok.save_pretrained(root / "tokenizer")
    save(tiny_model(tok, seed=9, n_embd=48), tok, root / "frontier")
    for i, cutoff in enumerate(cutoffs):
        save(tiny_model(tok, seed=i), tok, root / "vintages" / cutoff)
    (root / "manifest.json").write_text(json.dumps({"cutoffs": list(cutoffs), "full": cutoffs[-1]}))
    return Registry(root)


def test_registry_lookup_is_point_in_time_and_loud(tmp_path):
    registry = make_registry(tmp_path, word_tokenizer())
    assert registry.vintage_for("2019-07-01T00:00:00Z")[0] == "2019-06-30"
    assert registry.vintage_for(dt.datetime(2019, 6, 30, 23, 0, tzinfo=dt.timezone.utc))[0] == "2019-03-31"
    with pytest.raises(RegistryError, match=r"precedes every vintage.*2019-03-31, 2019-06-30, 2019-12-31"):
        registry.vintage_for("2019-03-31T12:00:00Z")
    lm = PointInTimeLM.from_registry(registry, "2019-08-01")  # the recommended method: no calibration needed
    assert lm.steering == recommended.STEERING
    with pytest.raises(RegistryError, match=r"no calibrated alpha.*held-out text.*vintage calibrate --registry"):
        PointInTimeLM.from_registry(registry, "2019-08-01", alpha="calibrated")
    lm = PointInTimeLM.from_registry(registry, "2019-08-01", alpha=0.4)
    assert lm.vintage_cutoff == "2019-06-30" and lm.steering == Steering("linear", 0.4)
    assert PointInTimeLM.from_registry(registry, "2019-08-01", plausibility=0.1).steering == Steering("linear", 0.5, 0.1)
    with pytest.raises(TypeError, match="either steering= or alpha="):
        PointInTimeLM.from_registry(registry, "2019-08-01", alpha=0.4, steering=Steering("switch"))


def test_one_recommended_method_is_every_entry_points_default():
    import inspect

    from backtests.spec import MethodSpec
    from serving.methods import DEFAULT_METHOD, parse_method

    from backtests.cutoff_probe import ProbeCutoffConfig

    defaults = inspect.signature(PointInTimeLM.from_registry).parameters
    assert all(defaults[k].default is None for k in ("alpha", "plausibility", "steering"))  # None: the recommended
    chosen = recommended.STEERING
    bare = MethodSpec(name="point_in_time")
    assert (bare.mode, bare.margin, bare.plausibility, bare.gate_probability, bare.k, bare.width) == (
        chosen.mode, chosen.margin, chosen.plausibility, chosen.gate_probability, chosen.k, chosen.width)
    assert MethodSpec(name="point_in_time", surrogate="ngram", fallback="neural").mode == chosen.mode
    # any knob asks for that method, with the mode's own defaults (linear, alpha 0.5, margin 0, no mask, no gate)
    assert (MethodSpec(name="point_in_time", alpha=1.0).mode, MethodSpec(name="point_in_time", alpha=1.0).plausibility,
            MethodSpec(name="point_in_time", alpha=1.0).key) == ("linear", None, "point_in_time(alpha=1.0)")
    assert MethodSpec(name="point_in_time", mode="switch").key == "point_in_time(switch,margin=0.0)"
    assert ProbeCutoffConfig(corpus="c", out="o", frontier="f").alpha is None  # probe-cutoff's point_in_time: the bare one
    assert DEFAULT_METHOD == recommended.SPEC
    assert parse_method(None).steering() == chosen
    assert parse_method("linear").steering() == Steering("linear", 0.5)
    with pytest.raises(ValueError, match="apply to point_in_time only"):
        MethodSpec(name="frontier", mode="linear")


def test_calibration_picks_alpha_and_records_its_evidence(tmp_path):
    tok = word_tokenizer()
    registry = make_registry(tmp_path, tok)
    lm = PointInTimeLM.from_registry(registry, "2019-08-01", alpha=0.0)
    post = [Probe("Acme 2019q2 results :", [" beat", " miss"], " beat"),
            Probe("Brio 2019q2 results :", [" beat", " miss"], " miss")]
    pre = [Probe("Acme 2019q1 results :", [" beat", " miss"], " miss")]
    reference = lm.with_alpha(0.0)  # stand-in reference: the vintage surrogate alone
    reference.frontier = lm.vintage
    ref_scores = reference.score([p.prompt for p in post], [p.choices for p in post])
    result = calibrate_alpha(lm, post, pre, ref_scores, reference="vintage", grid=[0.0, 0.5, 1.0, 2.0])
    assert result.alpha in (0.0, 0.5, 1.0, 2.0)
    assert [r["alpha"] for r in result.table] == [0.0, 0.5, 1.0, 2.0]
    chosen = next(r for r in result.table if r["alpha"] == result.alpha)
    admissible = [r for r in result.table if r["admissible"]]
    assert chosen["admissible"] and chosen["distance"] == min(r["distance"] for r in admissible)
    registry.record_calibration("2019-06-30", result.evidence())
    assert registry.calibrated_alpha("2019-06-30") == result.alpha
    assert PointInTimeLM.from_registry(registry, "2019-08-01", alpha="calibrated").alpha == result.alpha


def test_llama_directories_load_as_frontier_and_surrogates(tmp_path):
    tok = word_tokenizer()
    paths = [save(tiny_model(tok, "llama", seed=s), tok, tmp_path / name)
             for s, name in ((0, "frontier"), (2, "vintage"), (1, "full"))]
    lm = PointInTimeLM.from_pretrained(*paths, alpha=0.5)
    (scored,) = lm.score([PROMPTS[0]], [CHOICES[0]])
    assert all(math.isfinite(x) for x in scored.choice_logprobs)
    assert type(lm.frontier).__name__ == "LlamaForCausalLM"


def test_rank_mode_bans_exactly_the_most_divergent_plausible_tokens():
    from vintage.modes import rank_logprobs

    frontier = torch.log(torch.tensor([[0.40, 0.30, 0.20, 0.07, 0.03]]))
    vintage = torch.log(torch.tensor([[0.20, 0.20, 0.20, 0.20, 0.20]]))
    # full - vintage divergence: token 1 most (learnt after the cutoff), then token 4 (implausible), token 0
    full = torch.log(torch.tensor([[0.25, 0.45, 0.02, 0.01, 0.27]]))
    out = rank_logprobs(frontier, vintage, full, k=1, plausibility=0.1)
    assert out[0, 1] == float("-inf")
    keep = [0, 2, 3, 4]
    expected = torch.tensor([0.40, 0.20, 0.07, 0.03]) / 0.70  # the frontier, renormalised over the rest
    assert torch.allclose(out[0, keep].exp(), expected, atol=1e-6)
    # with k=2 the next eligible token is token 0 (token 4 is below 0.1 x the frontier's top: not eligible)
    two = rank_logprobs(frontier, vintage, full, k=2, plausibility=0.1)
    assert torch.isinf(two[0, [0, 1]]).all() and torch.isfinite(two[0, [2, 3, 4]]).all()
    # without the plausibility restriction token 4 (divergence log(0.27/0.2)) outranks token 0 (log(1.25))
    loose = rank_logprobs(frontier, vintage, full, k=2, plausibility=None)
    assert torch.isinf(loose[0, [1, 4]]).all() and torch.isfinite(loose[0, [0, 2, 3]]).all()
    # a margin above every divergence bans nothing: the frontier itself
    assert torch.allclose(rank_logprobs(frontier, vintage, full, k=3, margin=5.0), F.log_softmax(frontier, -1))
    assert torch.allclose(rank_logprobs(frontier, vintage, full, k=0), F.log_softmax(frontier, -1))


def test_switch_mode_uses_the_vintage_exactly_where_the_pair_diverges():
    from vintage.modes import switch_logprobs

    frontier = torch.log(torch.tensor([[0.40, 0.30, 0.20, 0.07, 0.03], [0.40, 0.30, 0.20, 0.07, 0.03],
                                       [0.40, 0.30, 0.20, 0.07, 0.03]]))
    vintage = torch.log(torch.tensor([[0.20, 0.20, 0.20, 0.20, 0.20]] * 3))
    full = torch.log(torch.tensor([
        [0.25, 0.45, 0.10, 0.10, 0.10],  # token 1: log(0.45/0.2) = 0.81 nats learnt after the cutoff
        [0.20, 0.20, 0.20, 0.20, 0.20],  # the pair agrees
        [0.10, 0.10, 0.10, 0.10, 0.60],  # diverges only on token 4, which the frontier finds implausible
    ]))
    out = switch_logprobs(frontier, vintage, full, margin=0.5, plausibility=0.1)
    assert torch.allclose(out[0], F.log_softmax(vintage[0], -1))  # the gate fired: the vintage's distribution
    assert torch.allclose(out[1:], F.log_softmax(frontier[1:], -1))  # untouched elsewhere
    # without the plausibility restriction the third row fires too; above every divergence nothing fires
    assert torch.allclose(switch_logprobs(frontier, vintage, full, 0.5, None)[2], F.log_softmax(vintage[2], -1))
    assert torch.allclose(switch_logprobs(frontier, vintage, full, margin=1.0), F.log_softmax(frontier, -1))
    with pytest.raises(ValueError, match="unknown decoding mode 'beam'"):
        Steering("beam")
    with pytest.raises(TypeError, match="not both"):
        PointInTimeLM(None, None, None, word_tokenizer(), alpha=0.5, steering=Steering("switch", margin=0.5))
    # a fallback model: its distribution (at its own temperature) where the gate fires, the frontier elsewhere
    fallback = torch.log(torch.tensor([[0.1, 0.6, 0.1, 0.1, 0.1]] * 3))
    out = switch_logprobs(frontier, vintage, full, 0.5, 0.1, Temperatures(fallback=2.0), fallback=fallback)
    assert torch.allclose(out[0], F.log_softmax(fallback[0] / 2.0, -1))
    assert torch.allclose(out[1:], F.log_softmax(frontier[1:], -1))
    with pytest.raises(ValueError, match="blend/switch modes only"):
        PointInTimeLM(None, None, None, word_tokenizer(), fallback=object())


def test_temperature_fit_recovers_a_known_temperature():
    from vintage.temperature import fit_temperature

    torch.manual_seed(0)
    logits = torch.randn(200, 50) * 3
    assert fit_temperature(logits, logits / 2.5) == pytest.approx(2.5, rel=1e-3)
    assert fit_temperature(logits, logits * 1.6) == pytest.approx(1 / 1.6, rel=1e-3)
