"""The divergence-weighted modes (issue 26): blend (a soft switch) and adaptive (a per-position linear contrast),
checked on mock logits whose answers are known in closed form."""
import math

import pytest
import torch

from backtests.spec import MethodSpec
from serving.methods import MethodError, parse_method
from vintage.modes import Steering, blend_logprobs, gate_weight, steer, switch_logprobs

LOG2 = math.log(2)
FRONTIER = torch.tensor([0.5, 0.25, 0.25]).log()
VINTAGE = torch.tensor([0.25, 0.5, 0.25]).log()
FULL = FRONTIER.clone()  # the full surrogate agrees with the frontier: D = log 2 (token 0)


def probs(lp: torch.Tensor) -> list[float]:
    return [round(x, 12) for x in lp.exp().tolist()]


def test_the_gate_weight_is_the_divergence_above_the_margin_over_the_width():
    d = torch.tensor([[-1.0], [0.5], [1.0], [1.75], [3.0]])
    assert gate_weight(d, margin=1.0, width=0.5).flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert gate_weight(d, margin=0.5, width=2.0).flatten().tolist() == [0.0, 0.0, 0.25, 0.625, 1.0]


def test_blend_mixes_the_frontier_and_the_vintage_by_the_weight():
    half = Steering("blend", margin=0.0, width=2 * LOG2)  # D = log 2 -> w = 0.5
    assert probs(steer(half, FRONTIER, VINTAGE, FULL)) == [0.375, 0.375, 0.25]  # 0.5 [.5 .25 .25] + 0.5 [.25 .5 .25]
    quarter = Steering("blend", margin=0.0, width=4 * LOG2)  # w = 0.25
    assert probs(steer(quarter, FRONTIER, VINTAGE, FULL)) == [0.4375, 0.3125, 0.25]
    whole = Steering("blend", margin=0.0, width=LOG2 / 2)  # w = 1: the vintage's distribution exactly
    assert torch.equal(steer(whole, FRONTIER, VINTAGE, FULL), torch.log_softmax(VINTAGE, -1))
    below = Steering("blend", margin=1.0, width=1.0)  # D < margin: w = 0, the frontier's log-probs exactly
    assert torch.equal(steer(below, FRONTIER, VINTAGE, FULL), torch.log_softmax(FRONTIER, -1))


def test_blend_takes_the_fallback_and_tends_to_switch_as_the_width_shrinks():
    fallback = torch.tensor([0.125, 0.125, 0.75]).log()
    out = blend_logprobs(FRONTIER, VINTAGE, FULL, margin=0.0, width=2 * LOG2, plausibility=None, fallback=fallback)
    assert probs(out) == [0.3125, 0.1875, 0.5]
    batch = torch.stack([FRONTIER, FRONTIER]), torch.stack([VINTAGE, FRONTIER]), torch.stack([FULL, FULL])
    narrow = blend_logprobs(*batch, margin=0.5, width=1e-6, plausibility=None)
    assert torch.allclose(narrow, switch_logprobs(*batch, margin=0.5, plausibility=None))


def test_adaptive_is_the_linear_contrast_at_alpha_times_the_weight():
    s = Steering("adaptive", alpha=2.0, margin=0.0, width=2 * LOG2)  # alpha * w = 1
    # lp_F + (lp_V - lp_full) = lp_V here (full == frontier): the vintage's distribution
    assert probs(steer(s, FRONTIER, VINTAGE, FULL)) == [0.25, 0.5, 0.25]
    linear = Steering("linear", alpha=1.0)
    assert torch.allclose(steer(s, FRONTIER, VINTAGE, FULL), steer(linear, FRONTIER, VINTAGE, FULL))
    agree = steer(s, FRONTIER, FRONTIER, FRONTIER)  # the pair agrees: the frontier exactly
    assert torch.equal(agree, torch.log_softmax(FRONTIER, -1))
    assert not Steering("adaptive", alpha=0.0).steered and Steering("adaptive", alpha=2.0).at_alpha(0.0).alpha == 0


def test_the_gate_reads_only_the_frontiers_plausible_tokens():
    vintage = torch.tensor([0.5, 0.125, 0.375]).log()  # full over vintage: x2 on token 1, which the frontier ranks low
    unmasked = Steering("blend", margin=0.0, width=2 * LOG2)
    assert probs(steer(unmasked, FRONTIER, vintage, FULL)) == [0.5, 0.1875, 0.3125]
    masked = Steering("blend", margin=0.0, width=2 * LOG2, plausibility=0.6)  # only token 0 is plausible: D = 0
    assert torch.equal(steer(masked, FRONTIER, vintage, FULL), torch.log_softmax(FRONTIER, -1))


def test_the_modes_are_named_the_same_in_serving_and_in_a_backtest_spec():
    m = parse_method("blend margin=0.5 width=2 plausibility=0.1")
    assert m.steering() == Steering("blend", margin=0.5, width=2.0, plausibility=0.1) and parse_method(m.spec) == m
    a = parse_method({"mode": "adaptive", "alpha": 2, "margin": 0.25})
    assert a.steering() == Steering("adaptive", alpha=2.0, margin=0.25, width=1.0)
    with pytest.raises(MethodError, match="width must be > 0"):
        parse_method("blend width=0")
    with pytest.raises(MethodError, match="blend takes margin, width, plausibility"):
        parse_method("blend alpha=1")
    spec = MethodSpec(name="point_in_time", mode="blend", margin=0.5, width=2.0, plausibility=0.3,
                      surrogate="ngram", fallback="neural")
    assert spec.key == "point_in_time(blend,margin=0.5,width=2.0,mask=0.3,ngram,fallback=neural)"
    with pytest.raises(ValueError, match="fallback applies to point_in_time with mode: blend or switch"):
        MethodSpec(name="point_in_time", mode="adaptive", fallback="neural")


def test_the_probability_gate_reads_only_tokens_the_full_surrogate_is_sure_of():
    frontier = torch.tensor([0.4, 0.3, 0.3]).log()  # every token plausible
    vintage, full = torch.tensor([0.1, 0.5, 0.4]).log(), torch.tensor([0.2, 0.3, 0.5]).log()
    # full over vintage: x2 on token 0, which the full surrogate gives 0.2; x1.25 on token 2, which it gives 0.5
    plain = Steering("blend", margin=0.0, width=2 * LOG2)  # D = log 2: w = 0.5
    assert steer(plain, frontier, vintage, full).exp().tolist() == pytest.approx([0.25, 0.4, 0.35], abs=1e-6)
    sure = Steering("blend", margin=0.0, width=2 * LOG2, gate_probability=0.4)  # token 2 only: D = log 1.25
    w = math.log(1.25) / (2 * LOG2)
    expected = [(1 - w) * f + w * v for f, v in zip([0.4, 0.3, 0.3], [0.1, 0.5, 0.4])]
    assert steer(sure, frontier, vintage, full).exp().tolist() == pytest.approx(expected, abs=1e-6)
    never = Steering("switch", margin=0.0, gate_probability=0.6)  # nothing the full surrogate is that sure of
    assert torch.equal(steer(never, frontier, vintage, full), torch.log_softmax(frontier, -1))
    with pytest.raises(ValueError, match="gate_probability must be in"):
        Steering("switch", gate_probability=0.0)


def test_the_gate_probability_is_named_the_same_in_serving_and_in_a_backtest_spec():
    m = parse_method("switch margin=0.1 plausibility=0.3 gate_probability=0.3")
    assert m.steering() == Steering("switch", margin=0.1, plausibility=0.3, gate_probability=0.3)
    assert parse_method(m.spec) == m and "gate_probability" not in parse_method("switch margin=0.1").spec
    with pytest.raises(MethodError, match="gate_probability must be in"):
        parse_method("blend gate_probability=1.5")
    with pytest.raises(MethodError, match="linear takes alpha, plausibility"):
        parse_method("linear gate_probability=0.3")
    spec = MethodSpec(name="point_in_time", mode="switch", margin=0.1, plausibility=0.3, gate_probability=0.3)
    assert spec.key == "point_in_time(switch,margin=0.1,mask=0.3,gate_p=0.3)"
    with pytest.raises(ValueError, match="gate_probability is a probability in"):
        MethodSpec(name="point_in_time", mode="linear", gate_probability=0.3)


def test_the_confidence_gated_divergence_and_switch_equal_their_whole_vocabulary_definitions():
    """divergence_gate with gate_probability looks only at the full surrogate's top tokens and switch_logprobs
    replaces only the rows where the gate fires: both exactly equal the rules written over every token, on logits
    with unknown tokens (-inf: a compact surrogate's), ties and rows where nothing is eligible."""
    from vintage.modes import divergence_gate, known_difference, known_or_frontier, log_probs, plausible

    gen = torch.Generator().manual_seed(0)
    rows, vocab = 64, 50
    frontier = torch.randn(rows, vocab, generator=gen) * 3
    vintage, full = (torch.randn(rows, vocab, generator=gen) * 4 for _ in range(2))
    unknown = torch.rand(vocab, generator=gen) < 0.3
    vintage[:, unknown], full[:, unknown] = float("-inf"), float("-inf")
    full[:8, 0] = full[:8, 1] = 20.0  # two tokens tied at p ~ 0.5: both candidates
    lp_f, lp_v, lp_u = log_probs(frontier), log_probs(vintage), log_probs(full)
    fired = set()
    for plausibility in (None, 0.3, 1.0):
        for gate_probability in (0.05, 0.3, 0.5, 1.0):
            reference = known_difference(lp_u, lp_v, float("-inf")).masked_fill(
                lp_u < math.log(gate_probability), float("-inf"))
            mask = plausible(lp_f, plausibility)
            if mask is not None:
                reference = reference.masked_fill(~mask, float("-inf"))
            gate = divergence_gate(lp_f, lp_v, lp_u, plausibility, gate_probability)
            assert torch.equal(gate, reference.max(dim=-1, keepdim=True).values)
            for margin in (0.0, 0.5, 100.0):
                fires = gate > margin
                expected = torch.where(fires, known_or_frontier(lp_v, lp_f), lp_f)
                got = switch_logprobs(frontier, vintage, full, margin, plausibility,
                                      gate_probability=gate_probability)
                assert torch.equal(got, expected)
                fired.add(int(fires.sum()))
    assert 0 in fired and any(0 < n < rows for n in fired)  # cases where none and where some rows are replaced
