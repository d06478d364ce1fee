"""Models without Ray: packing windows, the fused large-vocabulary loss against Hugging Face's, presets'
sizes and the rule that sizes surrogates against a frontier, and the run's window length."""
import pytest
import torch

from vintage.loss import causal_lm_loss, fused_linear_cross_entropy
from vintage.presets import PRESETS, build_model, forward_flops_per_token, get_preset, preset_flops_per_token, \
    surrogate_for
from vintage.train_config import Optimisation, RoleConfig, TrainConfig, window_length
from vintage.train_metrics import _collate
from vintage.windows import pack, packed_batch, window_targets


def test_documents_are_packed_into_windows_none_dropped():
    docs = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]  # EOS (0) after each: 12 tokens
    assert pack(docs, 4, eos=0) == [[1, 2, 3, 4], [5, 0, 6, 0], [7, 8, 9, 0]]
    assert pack([[1] * 9], 4, eos=0) == [[1] * 4, [1] * 4, [1, 0]]  # a long document: several windows
    assert pack([], 4, eos=0) == []
    with pytest.raises(ValueError, match="at least 2 tokens"):
        pack(docs, 1, eos=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_packed_window_trains_as_its_documents_one_by_one(family):
    """Positions restart after each EOS, attention stays within a document and no target crosses into the
    next one: the packed loss is the token mean of the documents' own losses (cut at window edges)."""
    eos = 299
    model = build_model(get_preset("tiny").with_(family=family), 300, seed=0)
    gen = torch.Generator().manual_seed(2)
    docs = [torch.randint(1, 299, (n,), generator=gen).tolist() for n in (5, 1, 9, 3, 12, 2)]
    windows = pack(docs, 16, eos)
    ids, positions, labels = packed_batch(windows, pad=0, eos=eos)
    packed = causal_lm_loss(model, ids, None, labels, positions)
    segments = []  # each window cut after every EOS: the sequences a model reading them one by one sees
    for window in windows:
        start = 0
        for i, token in enumerate(window):
            if token == eos or i == len(window) - 1:
                segments.append(window[start:i + 1])
                start = i + 1
    total = sum(model(input_ids=torch.tensor([seg]), labels=torch.tensor([seg])).loss.item() * (len(seg) - 1)
                for seg in segments if len(seg) > 1)
    count = sum(len(seg) - 1 for seg in segments)
    assert count == sum(window_targets(w, eos) for w in windows) == int((labels[:, 1:] != -100).sum())
    assert packed.item() == pytest.approx(total / count, rel=1e-5)
    assert positions[0, :7].tolist() == [0, 1, 2, 3, 4, 5, 0]  # the second document starts at position 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fused_loss_equals_the_hugging_face_loss_and_its_gradients(family):
    model = build_model(get_preset("tiny").with_(family=family), 300, seed=0)
    gen = torch.Generator().manual_seed(0)
    ids, mask, labels = _collate([torch.randint(1, 300, (n,), generator=gen).tolist() for n in (20, 13, 7)], pad=0)
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    reference.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    loss = causal_lm_loss(model, ids, mask, labels)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, expected[name], atol=1e-6), name
    with torch.no_grad():  # evaluation: the loss alone, chunked
        assert float(causal_lm_loss(model, ids, mask, labels)) == pytest.approx(float(reference), rel=1e-6)


def test_fused_loss_chunks_agree_and_an_empty_batch_keeps_the_graph():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(37, 8, generator=gen, requires_grad=True)
    weight = torch.randn(50, 8, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=gen)
    whole = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    (grad_h, grad_w) = torch.autograd.grad(whole * 3.0, (hidden, weight))
    chunked = fused_linear_cross_entropy(hidden, weight, targets, chunk=5)
    (fused_h, fused_w) = torch.autograd.grad(chunked * 3.0, (hidden, weight))  # the incoming gradient scales
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(fused_h, grad_h, atol=1e-6) and torch.allclose(fused_w, grad_w, atol=1e-6)
    empty = fused_linear_cross_entropy(hidden[:0], weight, targets[:0])
    empty.backward()
    assert empty.item() == 0.0 and weight.grad is not None


def test_preset_flops_from_their_shape_and_the_sizing_rule():
    for name in ("tiny", "surrogate-small", "llama-10m", "gpt2-10m"):
        assert preset_flops_per_token(name, 1000) == forward_flops_per_token(build_model(name, 1000))
    sizes = {name: sum(p.numel() for p in build_model(name, 49152).parameters()) / 1e6
             for name in ("llama-10m", "gpt2-10m", "llama-30m", "gpt2-30m")}
    assert all(8 < sizes[n] < 12 for n in ("llama-10m", "gpt2-10m"))
    assert all(27 < sizes[n] < 36 for n in ("llama-30m", "gpt2-30m"))
    # the 120M presets' parameters from their shape (building them takes seconds): 2 d^2 per layer less for GPT-2
    for name, low, high in (("llama-120m", 110, 130), ("gpt2-120m", 110, 130)):
        p = PRESETS[name]
        per_layer = (4 + (12 if p.family == "llama" else 8)) * p.n_embd ** 2
        assert low < (p.n_layer * per_layer + 49152 * p.n_embd) / 1e6 < high, name
    smollm_135m = 2 * 135e6  # forward FLOPs per token of a 135M frontier with a tied head
    assert surrogate_for(smollm_135m, 49152) == "llama-10m"
    assert surrogate_for(2 * 1e9, 49152) == "llama-30m"
    assert surrogate_for(2 * 1.7e9, 49152, family="gpt2") == "gpt2-120m"
    assert surrogate_for(1e6, 49152) == "llama-10m"  # nothing fits: the smallest of the family


def test_window_length_is_the_shortest_role_context_and_refuses_more_than_a_preset_has():
    def config(surrogate, frontier=None):
        return TrainConfig(surrogate=RoleConfig(preset="tiny", optim=Optimisation(max_length=surrogate)),
                           frontier=RoleConfig(preset="small", optim=Optimisation(max_length=frontier)))

    assert window_length(config(None)) == 64  # tiny's context, below small's 128
    assert window_length(config(32, 100)) == 32
    with pytest.raises(ValueError, match=r"surrogate.optim.max_length: expected 2..64 \(preset 'tiny' has 64 "
                                         r"positions\), got 96"):
        window_length(config(96))
