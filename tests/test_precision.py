"""vintage/precision.py: the compute type a setting names, and autocast only where it is not float32."""
import contextlib

import pytest
import torch

from vintage.precision import autocast, bf16_native, resolve_dtype


def test_named_types_and_auto_follow_the_hardware():
    assert resolve_dtype("float32") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype("auto") == (torch.bfloat16 if bf16_native() else torch.float32)
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, got 'fp16'"):
        resolve_dtype("fp16")


def test_autocast_computes_matmuls_in_bf16_and_float32_is_left_alone():
    a = torch.randn(4, 4)
    assert isinstance(autocast(torch.float32), contextlib.nullcontext)
    with autocast(torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32


def test_a_model_in_bfloat16_computes_under_autocast_and_returns_float32_logits(tmp_path):
    """load_causal_lm(compute=...): bfloat16 wraps the model in AutocastLM (its logits come back float32, equal to
    autocast's over the float32 weights, close to float32's); float32 leaves the model as it was; an n-gram table is left
    alone. The scores of a steered model in bfloat16 stay close to float32's."""
    from tests.lm_fixtures import tiny_model, word_tokenizer
    from vintage.compact import load_causal_lm
    from vintage.decoding import PointInTimeLM
    from vintage.precision import AutocastLM, in_dtype

    tok = word_tokenizer()
    for name, seed in (("frontier", 0), ("vintage", 1), ("full", 2)):
        tiny_model(tok, seed=seed).save_pretrained(tmp_path / name)
    plain = load_causal_lm(tmp_path / "frontier")
    half = load_causal_lm(tmp_path / "frontier", compute="bfloat16")
    assert not isinstance(plain, AutocastLM) and isinstance(half, AutocastLM)
    # the matmul weights are cast once (autocast would cast them on every call); embeddings stay float32
    dtypes = {name: p.dtype for name, p in half.named_parameters()}
    assert dtypes["model.transformer.wte.weight"] == torch.float32
    assert dtypes["model.transformer.h.0.attn.c_attn.weight"] == torch.bfloat16
    ids = torch.tensor([tok("Acme 2019q1 results :", add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        a, b = plain(input_ids=ids).logits, half(input_ids=ids).logits
        with autocast(torch.bfloat16):
            c = plain(input_ids=ids).logits.float()  # autocast over the float32 weights: the same numbers
    assert b.dtype == torch.float32 and not torch.equal(a, b)  # computed in bf16: rounded, then widened
    assert torch.equal(b, c)
    torch.testing.assert_close(b, a, atol=0.05, rtol=0.02)
    table = object()
    assert in_dtype(table, "bfloat16") is table and in_dtype(plain, "float32") is plain
    models = {c: [load_causal_lm(tmp_path / n, compute=c) for n in ("frontier", "vintage", "full")]
              for c in ("float32", "bfloat16")}
    prompts, choices = ["Acme 2019q1 results :", "Brio preview points to a"], [[" beat", " miss"]] * 2
    scores = {c: PointInTimeLM(*m, tok, alpha=0.5).score(prompts, choices) for c, m in models.items()}
    for x, y in zip(scores["bfloat16"], scores["float32"]):
        assert x.choice_logprobs == pytest.approx(y.choice_logprobs, abs=0.05)


def test_auto_at_inference_keeps_narrow_models_in_float32():
    """auto: bf16 where the hardware has it, for models at least CPU_BF16_MIN_WIDTH wide (a narrow surrogate is
    slower under autocast); bfloat16 and float32 as named, whatever the width."""
    from vintage.precision import CPU_BF16_MIN_WIDTH, model_dtype

    wide = torch.bfloat16 if bf16_native() else torch.float32
    assert model_dtype("auto", CPU_BF16_MIN_WIDTH) == wide
    assert model_dtype("auto", CPU_BF16_MIN_WIDTH - 1) == torch.float32
    assert model_dtype("bfloat16", 32) == torch.bfloat16 and model_dtype("float32", 4096) == torch.float32
