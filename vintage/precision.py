"""Which floating-point type a model computes in: bfloat16 where the hardware runs it natively (a CPU with AMX or
AVX512-bf16, a GPU with bf16), float32 elsewhere. Log-softmax sums and fitted statistics stay in float32."""
from __future__ import annotations

import contextlib

import torch

DTYPES = ("auto", "float32", "bfloat16")


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes bfloat16 in hardware (on a CPU without it, bf16 is emulated and slower)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported",
                                                                  "_is_avx512_bf16_supported"))


def resolve_dtype(setting: str, device: str | torch.device = "cpu") -> torch.dtype:
    """`auto` -> bfloat16 where `bf16_native(device)`, else float32; `float32` / `bfloat16` as named."""
    if setting not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {setting!r}")
    if setting == "auto":
        return torch.bfloat16 if bf16_native(device) else torch.float32
    return getattr(torch, setting)


def autocast(dtype: torch.dtype, device: str | torch.device = "cpu"):
    """torch.autocast to `dtype` (weights stay float32: the optimizer's updates are not rounded away), or nothing
    for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
