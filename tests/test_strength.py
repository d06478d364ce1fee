"""The label-free strength (vintage/strength.py): the selection rule on tables, and a sweep on mock models whose
answer is known in closed form."""
import math

import pytest
import torch

from tests.lm_fixtures import BigramMock, word_tokenizer
from vintage.decoding import PointInTimeLM
from vintage.modes import Steering
from vintage.strength import choose_strength, heldout_strength

TOK = word_tokenizer()
V = len(TOK)


def row(alpha, bend, pre_cost):
    return dict(alpha=alpha, bend=bend, pre_cost=pre_cost)


def test_the_smallest_alpha_whose_bend_reaches_the_pairs_within_the_pre_cutoff_budget():
    table = [row(0.0, 0.0, 1.0), row(0.5, 0.1, 1.01), row(1.0, 0.2, 1.03), row(1.5, 0.3, 1.08)]
    assert choose_strength(table, pair_bend=0.15) == {**table[2], "reached": True}
    assert choose_strength(table, pair_bend=0.1) == {**table[1], "reached": True}
    # the budget stops it: the largest admissible alpha, marked as not reaching the pair's bend
    assert choose_strength(table, pair_bend=0.25) == {**table[2], "reached": False}
    assert choose_strength(table, pair_bend=0.25, max_pre_cost=0.1)["alpha"] == 1.5
    # a pair that does not tell the sides apart asks for nothing
    assert choose_strength(table, pair_bend=-0.3)["alpha"] == 0.0


def ids(text):
    return TOK(text, add_special_tokens=False)["input_ids"]


def test_with_the_frontier_equal_to_the_full_surrogate_alpha_one_matches_the_pair_exactly():
    """lp_F = lp_full, so at alpha 1 the steered model is the vintage: its loss on any text is the pair's,
    and for alpha < 1 it is less (alpha * d + log Z(alpha), log Z <= 0 on [0, 1]). The vintage differs from the
    frontier only after "Brio" (post-cutoff text), so the pre-cutoff cost is nil at every alpha."""
    g = torch.Generator().manual_seed(0)
    frontier = torch.randn(V, V, generator=g) * 2
    vintage = frontier.clone()
    brio = TOK.convert_tokens_to_ids("Brio")
    vintage[brio] = torch.randn(V, generator=g) * 2
    beat, miss = TOK.convert_tokens_to_ids(["beat", "miss"])
    frontier[brio, beat], vintage[brio, beat] = 6.0, -2.0  # the frontier knows what follows; the vintage does not
    lm = PointInTimeLM(BigramMock(frontier), BigramMock(vintage), BigramMock(frontier.clone()), TOK,
                       alpha=1.0)
    before = [ids("Acme 2019q1 results : beat ."), ids("the market was calm .")]
    after = [ids("Brio beat the market ."), ids("Acme Brio beat .")]
    result = heldout_strength(lm, before, after)
    assert result.alpha == 1.0 and result.reached
    assert result.bend == pytest.approx(result.pair_bend, abs=1e-6) and result.pair_bend > 1
    assert result.pre_cost == pytest.approx(1.0, abs=1e-6)  # nothing before the cutoff moves
    lp_f = torch.log_softmax(frontier[brio], -1)[beat]
    lp_v = torch.log_softmax(vintage[brio], -1)[beat]
    tokens_post = sum(len(e) - 1 for e in after)
    assert result.pair_bend == pytest.approx(float(lp_f - lp_v) * 2 / tokens_post, rel=1e-6)
    assert result.post_cost == pytest.approx(math.exp(result.pair_bend), rel=1e-6)
    assert [r["alpha"] for r in result.table][:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(r["bend"] < result.pair_bend for r in result.table[:4])


def test_the_pre_cutoff_budget_caps_the_strength():
    g = torch.Generator().manual_seed(1)
    frontier = torch.randn(V, V, generator=g) * 2
    vintage = frontier + torch.randn(V, V, generator=g)  # the pair disagrees everywhere, before the cutoff too
    lm = PointInTimeLM(BigramMock(frontier), BigramMock(vintage), BigramMock(frontier.clone()), TOK, alpha=1.0)
    before = [ids("Acme 2019q1 results : beat . the market was calm .")]
    after = [ids("Brio 2019q2 results : miss . Shares fell .")]
    result = heldout_strength(lm, before, after, max_pre_cost=0.01)
    admissible = [r for r in result.table if r["admissible"]]
    assert all(r["pre_cost"] <= 1.01 for r in admissible) and result.pre_cost <= 1.01
    assert result.alpha <= max(r["alpha"] for r in admissible)
    with pytest.raises(ValueError, match="takes no alpha"):
        heldout_strength(lm.with_settings(mode="rank", k=1), before, after)


def test_a_calibrated_alpha_is_read_per_vintage_by_ask_and_serve():
    from serving.methods import CALIBRATED, MethodError, parse_method

    class Recorded:
        def calibrated_alpha(self, cutoff):
            return {"2019-03-31": 1.25}[cutoff]

    method = parse_method("linear alpha=calibrated plausibility=0.1")
    assert method.alpha == CALIBRATED and method.steered and parse_method(method.spec) == method
    with pytest.raises(MethodError, match="resolve the calibrated alpha"):
        method.steering()
    resolved = method.at_vintage(Recorded(), "2019-03-31")
    assert resolved.steering() == Steering("linear", alpha=1.25, plausibility=0.1)
    assert parse_method("linear alpha=0.5").at_vintage(None, "2019-03-31").alpha == 0.5  # nothing to resolve
    with pytest.raises(MethodError, match="is not a number"):
        parse_method("linear alpha=calibrate")
