"""Fitting a surrogate's temperature to the frontier's confidence (pre-cutoff text, where both should know
the same): the fit for one model (`fit_temperature`) and for every vintage of a registry
(`fit_registry_temperatures`, recorded in its manifest; `vintage fit-temperatures` and the pipeline's
post-training step)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from vintage.compact import load_causal_lm
from vintage.holdout import HOLDOUT_EVERY
from vintage.model_calls import pad_batch, pad_id
from vintage.surrogates import load_surrogate, surrogate_fingerprint


def fit_temperature(surrogate_logits: torch.Tensor, frontier_logits: torch.Tensor,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Confidence matching: the temperature T minimising the mean KL(frontier || softmax(surrogate / T))
    over positions [N, V] (pre-cutoff calibration text, where both should know the same). Surrogates that
    memorised are far more confident than the frontier (RESEARCH.md exp. 2: log-odds 6-7.6 vs 0.3), which
    makes any fixed alpha overshoot; dividing their logits by T > 1 brings them to the frontier's scale."""
    from scipy.optimize import minimize_scalar

    # float32: over a 49k vocabulary float64 doubled the fit's cost for digits below the optimiser's tolerance
    logits, frontier_logits = on_support(surrogate_logits.float(), frontier_logits.float())
    target = F.log_softmax(frontier_logits, dim=-1)
    p_target = target.exp()

    def kl(log_t: float) -> float:
        lp = F.log_softmax(logits / math.exp(log_t), dim=-1)
        return float((p_target * (target - lp)).sum(-1).mean())

    result = minimize_scalar(kl, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-4})  # T to 0.01%
    return float(math.exp(result.x))


def on_support(surrogate_logits: torch.Tensor, frontier_logits: torch.Tensor):
    """Both models' logits over the tokens the surrogate can predict (a compact surrogate's -inf columns
    dropped, vintage/compact.py): the fit matches the frontier's distribution given the surrogate's support."""
    support = torch.isfinite(surrogate_logits).all(0) if surrogate_logits.shape[0] else None
    if support is None or bool(support.all()):
        return surrogate_logits, frontier_logits
    return surrogate_logits[:, support], frontier_logits[:, support]


def position_logits(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32):
    """Next-token logits [N, V] at every predicted position of `texts` (float32, CPU), in text order."""
    import torch

    vocab = len(tokenizer)
    encoded = [ids[:max_length] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    pad = pad_id(tokenizer)
    out = []
    device = next(iter(model.parameters()), torch.zeros(0)).device
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            chunk = [e for e in encoded[start:start + batch_size] if len(e) >= 2]
            if not chunk:
                continue
            ids, mask = pad_batch(chunk, pad, side="right")
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[..., :vocab].float().cpu()
            for row, e in enumerate(chunk):
                out.append(logits[row, : len(e) - 1])
    return torch.cat(out) if out else torch.zeros((0, vocab))


def fit_registry_temperatures(registry, split: str, kinds: Sequence[str] = ("neural", "ngram"),
                              frontier: str | None = None, holdout_every: int = HOLDOUT_EVERY, max_docs: int = 128) -> dict:
    """Confidence matching (issue #9): for every surrogate of the registry (each vintage, the last one being
    the full), the temperature that makes its next-token distribution closest in KL to the frontier's on
    held-out documents up to its cutoff (text both should know alike). Written to the manifest under
    `temperatures[kind][cutoff]` with the evidence (KL before and after, positions, the model fingerprint)."""
    import math

    from transformers.utils import logging as hf_logging

    from corpora.split import read_slices
    from vintage.registry import Registry
    from vintage.presets import get_preset
    from vintage.holdout import holdout_mask
    from vintage.tokenizer import load_tokenizer

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model says nothing here
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    tokenizer = load_tokenizer(registry.tokenizer_path())
    documents = read_slices(split)
    held = documents.filter(holdout_mask(documents["doc_id"].to_pylist(), holdout_every))
    if held.num_rows == 0:
        raise ValueError(f"{split}: no held-out documents to fit temperatures on (holdout_every={holdout_every})")
    step = max(1, math.ceil(held.num_rows / max_docs))
    held = held.take(list(range(0, held.num_rows, step)))
    texts, slices = held["text"].to_pylist(), held["slice"].to_pylist()
    # documents cut at the run's training window (a hand-made registry records none: the smallest preset's
    # context, which every model has)
    max_length = int(registry.manifest.get("window") or get_preset("tiny").n_positions)
    lengths = [max(0, min(len(ids), max_length) - 1) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    frontier_model = load_causal_lm(frontier or registry.frontier_path())
    frontier_logits = position_logits(frontier_model, tokenizer, texts, max_length)
    found: dict[str, dict] = {}
    for kind in kinds:
        if kind == "ngram" and not (registry.root / "ngram" / "manifest.json").exists():
            continue
        found[kind] = {}
        for cutoff in registry.cutoffs():
            rows = [i for i, s in enumerate(slices) if s <= cutoff]
            if not rows:
                continue
            model = load_surrogate(registry, kind, cutoff)
            fingerprint = surrogate_fingerprint(registry, kind, cutoff)
            logits = position_logits(model, tokenizer, [texts[i] for i in rows], max_length)
            positions = _positions(lengths, rows)
            target = frontier_logits[positions]
            temperature = fit_temperature(logits, target)
            found[kind][cutoff] = dict(temperature=round(temperature, 4), positions=int(len(positions)),
                                       kl_before=round(_kl(target, logits, 1.0), 4),
                                       kl_after=round(_kl(target, logits, temperature), 4), fingerprint=fingerprint)
            print(f"[temperatures] {kind} {cutoff}: T={temperature:.3f} KL to the frontier "
                  f"{found[kind][cutoff]['kl_before']:.3f} -> {found[kind][cutoff]['kl_after']:.3f} "
                  f"({len(positions)} positions)", flush=True)
    registry.update_manifest(temperatures=found)
    return found


def _positions(lengths: Sequence[int], rows: Sequence[int]):
    """Positions (into the concatenated per-text rows of `lengths`) belonging to texts `rows`."""
    import torch

    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.tensor([p for r in rows for p in range(offsets[r], offsets[r + 1])], dtype=torch.long)


def _kl(target_logits, logits, temperature: float) -> float:
    import torch.nn.functional as F

    logits, target_logits = on_support(logits.float(), target_logits.float())  # as fit_temperature
    target = F.log_softmax(target_logits, -1)
    lp = F.log_softmax(logits / temperature, -1)
    return float((target.exp() * (target - lp)).sum(-1).mean())
