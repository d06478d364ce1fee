"""Helpers with one home each (issue 41 §3): staging a directory into place, the pad-id rule, drawing a token."""
import pytest
import torch

from corpora.files import staged_directory
from vintage.model_calls import pad_id
from vintage.sampling import sample


def test_a_staged_directory_lands_whole_or_not_at_all(tmp_path):
    target = tmp_path / "models" / "vintage"
    with staged_directory(target) as staging:
        assert not staging.exists() and staging.parent == target.parent and staging.name.startswith(".")
        staging.mkdir()
        (staging / "weights").write_text("first")
    assert (target / "weights").read_text() == "first"
    with pytest.raises(RuntimeError, match="killed while writing"):
        with staged_directory(target) as staging:
            staging.mkdir()
            (staging / "weights").write_text("half")
            raise RuntimeError("killed while writing")
    assert (target / "weights").read_text() == "first"  # the old one stands
    with staged_directory(target) as staging:
        staging.mkdir()
        (staging / "weights").write_text("second")
    assert (target / "weights").read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["vintage"]  # no staging or old copy left behind


class Tokens:
    def __init__(self, pad, eos):
        self.pad_token_id, self.eos_token_id = pad, eos


def test_one_pad_rule_the_pad_token_then_eos_then_zero():
    assert pad_id(Tokens(3, 7)) == 3 and pad_id(Tokens(None, 7)) == 7 and pad_id(Tokens(None, None)) == 0
    assert pad_id(Tokens(0, 7)) == 0  # id 0 is a pad token, not a missing one


def test_sampling_greedy_at_zero_top_k_capped_and_seeded():
    lp = torch.log_softmax(torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]]), -1)
    assert sample(lp, 0.0).tolist() == [1, 0]
    assert sample(lp, 1.0, top_k=1).tolist() == [1, 0]  # only the top token survives
    draws = {tuple(sample(lp, 1.0, top_k=99, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(40)}
    assert len(draws) > 1  # top_k beyond the vocabulary keeps every token (it is capped, not an error)
    again = [sample(lp, 1.0, top_k=2, generator=torch.Generator().manual_seed(5)).tolist() for _ in range(2)]
    assert again[0] == again[1] and all(t in (1, 3) for t in again[0][:1])
