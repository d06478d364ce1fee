"""The training loss of a causal LM over a large vocabulary without materialising its full logits.

With a frontier's vocabulary (tens of thousands of tokens) a surrogate's output layer is most of its cost:
for `surrogate-small` over 49,152 tokens the head's matrix multiply is ~98% of the forward FLOPs, and the
Hugging Face loss (`labels=`) also copies the [batch, positions, vocabulary] logits (shift, upcast,
log-softmax, and their gradients: several full-size tensors per step, gigabytes of memory traffic at a
batch of 32 x 128). Here only positions with a target go through the head, in chunks of rows, and each
chunk's gradient is computed in the forward pass (the fused linear cross-entropy of Liger-Kernel and Cut
Cross-Entropy, which are GPU kernels; this is its plain-PyTorch form): peak memory is one chunk's logits and
the FLOPs are those of the ordinary loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ROWS = 2048  # rows of logits at a time: 2048 x 49,152 floats = 400 MB


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`; gradients computed chunk by chunk in the
    forward pass and scaled by the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = (h @ weight.T).float()
            logp = torch.log_softmax(logits, dim=-1)
            total += -logp.gather(1, t[:, None]).sum()
            # d(sum of -log p[target]) / d logits = softmax - onehot; the mean's 1/n is applied once below
            grad = logp.exp_()
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            grad = grad.to(hidden.dtype)
            grad_hidden[start:start + chunk] = grad @ weight
            grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.n = max(1, n)
        return total / ctx.n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.n
        return grad_hidden * scale.to(grad_hidden.dtype), grad_weight * scale.to(grad_weight.dtype), None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Mean over rows of -log softmax(hidden @ weight.T)[target]; hidden [N, d], weight [V, d], targets [N]."""
    if hidden.shape[0] == 0:
        return (hidden.sum() + weight.sum()) * 0.0  # keeps the graph: every rank joins the all-reduce
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return sum(F.cross_entropy((hidden[i:i + chunk] @ weight.T).float(), targets[i:i + chunk], reduction="sum")
                   for i in range(0, hidden.shape[0], chunk)) / hidden.shape[0]
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk)


def causal_lm_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The mean next-token loss of a Hugging Face causal LM (equal to `model(..., labels=labels).loss`): the
    body runs on every position, the head only on positions whose next token is a target. Packed windows
    pass `position_ids` and no mask (`vintage.windows.packed_batch`). A head with a bias (none of our
    presets) takes the ordinary path."""
    # no cache: Hugging Face reads restarting positions as packed sequences only without one
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return model(**inputs, labels=labels).loss
    hidden = model.base_model(**inputs).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    return fused_linear_cross_entropy(hidden[:, :-1][keep], head.weight, targets[keep])
