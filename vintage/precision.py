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


# A CPU gains from bf16 only where the matrix multiplies are wide enough to outweigh the casts and the float32
# log-softmax (bench/results/train_dtype.json: training tokens/s, bf16 / float32, this machine, 1 thread: n_embd 64:
# 0.86, 128: 0.92, 160: 1.36, 256: 1.31, 384: 2.04; bench/decode.py: a 128-wide surrogate is no faster at inference)
CPU_BF16_MIN_WIDTH = 160


def trains_in_bf16(setting: str, width: int, use_gpu: bool) -> bool:
    """Whether a model `width` wide trains in bfloat16 under `setting`: `model_dtype`'s rule on a CPU; auto on a GPU
    asks for it (the driver may have no GPU: each worker's DeepSpeed checks its own supports it)."""
    if setting == "auto" and use_gpu:
        return True
    return model_dtype(setting, width, "cpu") == torch.bfloat16


def autocast(dtype: torch.dtype, device: str | torch.device = "cpu"):
    """torch.autocast to `dtype` (weights stay float32: the optimizer's updates are not rounded away), or nothing
    for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class AutocastLM(torch.nn.Module):
    """A causal LM whose forward pass runs under `torch.autocast` to `dtype` and whose `.logits` come back in float32:
    every log-softmax, contrast and fitted statistic downstream stays float32. Autocast is per thread, so it is
    entered in the forward itself (the surrogates may run in a worker thread).

    For inference only: the matrix multiplies' weights (nn.Linear and GPT-2's Conv1D) are cast to `dtype` once,
    here, in place (a weight tied to the embeddings gets its own copy; embeddings and norms stay float32). Autocast
    casts them to the same values on every call anyway, and inside `torch.inference_mode` it keeps no cache:
    recasting a 135M model's weights per generated token made bf16 generation 2.4x slower than float32."""

    def __init__(self, model, dtype: torch.dtype):
        from vintage.model_calls import call_spec, device_of

        super().__init__()
        _cast_matmul_weights(model, dtype)
        self.model, self.compute = model, dtype
        self.config = model.config
        self.device_type = device_of(model).type
        self._vintage_call_spec = call_spec(model)  # the wrapped model's argument names (model_calls)

    def forward(self, *args, **kwargs):
        with autocast(self.compute, self.device_type):
            out = self.model(*args, **kwargs)
        out.logits = out.logits.float()
        return out


def _cast_matmul_weights(model, dtype: torch.dtype) -> None:
    """The weights and biases autocast would cast for each matrix multiply, cast once (new tensors: a weight shared
    with an embedding keeps the embedding's float32)."""
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            for name in ("weight", "bias"):
                tensor = getattr(module, name, None)
                if tensor is not None:
                    setattr(module, name, torch.nn.Parameter(tensor.detach().to(dtype), requires_grad=False))


def model_dtype(setting: str, width: int | None, device: str | torch.device = "cpu") -> torch.dtype:
    """What a model `width` wide computes in on `device`: `bfloat16` and `float32` as named; auto: bfloat16 on a
    GPU that has it, and on a CPU with native bf16 for models at least CPU_BF16_MIN_WIDTH wide, else float32."""
    dtype = resolve_dtype(setting, device)
    if setting == "auto" and torch.device(device).type == "cpu" and (width or 0) < CPU_BF16_MIN_WIDTH:
        return torch.float32
    return dtype


def in_dtype(model, setting: str):
    """`model` computing in the dtype `setting` names (`model_dtype`): wrapped in `AutocastLM` (which casts its
    matmul weights in place) for bfloat16, as it is for float32. A model without parameters (an n-gram table) is
    left as is."""
    from vintage.model_calls import device_of

    if not isinstance(model, torch.nn.Module):
        return model
    dtype = model_dtype(setting, getattr(model.config, "hidden_size", None), device_of(model))
    return model if dtype == torch.float32 else AutocastLM(model, dtype).eval()
