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


def dtype_name(setting: str, device: str | torch.device = "cpu") -> str:
    """The dtype `setting` resolves to on `device`, as printed and recorded ("float32", "bfloat16")."""
    return str(resolve_dtype(setting, device)).removeprefix("torch.")


def autocast(dtype: torch.dtype, device: str | torch.device = "cpu"):
    """torch.autocast to `dtype` (weights stay float32: the optimizer's updates are not rounded away), or nothing
    for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class AutocastLM(torch.nn.Module):
    """A causal LM whose forward pass runs under `torch.autocast` to `dtype` (its weights stay float32) and whose
    `.logits` come back in float32: every log-softmax, contrast and fitted statistic downstream stays float32.
    Autocast is per thread, so it is entered in the forward itself (the surrogates may run in a worker thread)."""

    def __init__(self, model, dtype: torch.dtype):
        from vintage.model_calls import call_spec, device_of

        super().__init__()
        self.model, self.compute = model, dtype
        self.config = model.config
        self.device_type = device_of(model).type
        self._vintage_call_spec = call_spec(model)  # the wrapped model's argument names (model_calls)

    def forward(self, *args, **kwargs):
        with autocast(self.compute, self.device_type):
            out = self.model(*args, **kwargs)
        out.logits = out.logits.float()
        return out


def in_dtype(model, setting: str):
    """`model` computing in the dtype `setting` names (auto: bf16 where the hardware has it): wrapped in
    `AutocastLM` for bfloat16, as it is for float32. A model without parameters (an n-gram table) is left as is."""
    from vintage.model_calls import device_of

    if not isinstance(model, torch.nn.Module):
        return model
    dtype = resolve_dtype(setting, device_of(model))
    return model if dtype == torch.float32 else AutocastLM(model, dtype).eval()
