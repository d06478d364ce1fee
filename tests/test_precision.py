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
