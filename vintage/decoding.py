"""Point-in-time decoding: steer a frontier with the difference of two vintage surrogates.

    log p_t(x | x_<i) = log_softmax( lp_F + alpha * m * (lp_S_t - lp_S_full) )

with lp_M = log_softmax(logits_M / T_M) for each model M, and m the plausibility mask (1 where the
frontier gives the token at least `plausibility` x its top probability, else 0; None: all ones). The
bracket is what the small model learned after the cutoff; subtracting it removes that from the frontier.
Linear combination of log-probs as in unlearning-by-decoding (UCD, Suriyakumar et al. 2025; Divergence
Decoding, Merchant & Levy 2025), proxy-tuning (Liu et al. 2024) and DExperts; the mask is contrastive
decoding's adaptive plausibility constraint (Li et al. 2022), applied so that tokens outside the plausible
set keep the frontier's own log-prob rather than -inf: held-out perplexity stays finite (RESEARCH.md).
"""
from __future__ import annotations

import math
import os
import weakref

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from vintage import recommended


class VocabularyMismatch(ValueError):
    """Frontier and surrogates do not share one vocabulary."""


@dataclass(frozen=True)
class Temperatures:
    frontier: float = 1.0
    vintage: float = 1.0
    full: float = 1.0
    fallback: float = 1.0  # switch mode with a separate fallback model

    def __post_init__(self):
        if min(self.frontier, self.vintage, self.full, self.fallback) <= 0:
            raise ValueError(f"temperatures must be > 0, got {self}")


def combine_logprobs(frontier: torch.Tensor, vintage: torch.Tensor, full: torch.Tensor, alpha: float,
                     temperatures: Temperatures = Temperatures(), plausibility: float | None = None) -> torch.Tensor:
    """Logits [..., V] of the three models → the combined next-token log-probs [..., V], float32.

    alpha = 0 returns the frontier's own log-softmax exactly.
    """
    if not (frontier.shape == vintage.shape == full.shape):
        raise ValueError(f"logit shapes differ: frontier {tuple(frontier.shape)}, vintage {tuple(vintage.shape)}, "
                         f"full {tuple(full.shape)}")
    lp_frontier = F.log_softmax(frontier.float() / temperatures.frontier, dim=-1)
    if alpha == 0:
        return lp_frontier
    lp_vintage = F.log_softmax(vintage.float() / temperatures.vintage, dim=-1)
    lp_full = F.log_softmax(full.float() / temperatures.full, dim=-1)
    contrast = alpha * (lp_vintage - lp_full)
    if plausibility is not None:
        if not 0 < plausibility <= 1:
            raise ValueError(f"plausibility must be in (0, 1], got {plausibility}")
        threshold = lp_frontier.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(plausibility))
        contrast = torch.where(lp_frontier >= threshold, contrast, torch.zeros_like(contrast))
    return F.log_softmax(lp_frontier + contrast, dim=-1)


def rank_logprobs(frontier: torch.Tensor, vintage: torch.Tensor, full: torch.Tensor, k: int = 1,
                  margin: float = 0.0, plausibility: float | None = 0.1,
                  temperatures: Temperatures = Temperatures()) -> torch.Tensor:
    """Divergence Decoding's rank rule (Merchant & Levy 2025): forbid the `k` tokens whose
    `log p_full - log p_vintage` is largest (and above `margin`), among the tokens the frontier finds
    plausible (probability >= `plausibility` x its top one; None: all tokens), and otherwise keep the
    frontier's distribution untouched (renormalised over what is left). Magnitudes of the surrogates never
    enter, only their ranking, so it does not depend on their confidence matching the frontier's; and no
    token outside the banned set ever loses probability relative to the others (RESEARCH.md exp. 3)."""
    if not (frontier.shape == vintage.shape == full.shape):
        raise ValueError(f"logit shapes differ: frontier {tuple(frontier.shape)}, vintage {tuple(vintage.shape)}, "
                         f"full {tuple(full.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    lp_frontier = F.log_softmax(frontier.float() / temperatures.frontier, dim=-1)
    if k == 0:
        return lp_frontier
    divergence = (F.log_softmax(full.float() / temperatures.full, dim=-1)
                  - F.log_softmax(vintage.float() / temperatures.vintage, dim=-1))
    eligible = divergence > margin
    if plausibility is not None:
        threshold = lp_frontier.max(dim=-1, keepdim=True).values + math.log(plausibility)
        eligible &= lp_frontier >= threshold
    ranked = torch.where(eligible, divergence, torch.full_like(divergence, float("-inf")))
    top = ranked.topk(min(k, ranked.shape[-1]), dim=-1)
    banned = torch.zeros_like(eligible).scatter(-1, top.indices, torch.isfinite(top.values))
    # never ban every token: the frontier's top token survives if everything else is banned
    everything = banned.all(dim=-1, keepdim=True)
    banned &= ~(everything & (lp_frontier == lp_frontier.max(dim=-1, keepdim=True).values))
    return F.log_softmax(lp_frontier.masked_fill(banned, float("-inf")), dim=-1)


def switch_logprobs(frontier: torch.Tensor, vintage: torch.Tensor, full: torch.Tensor, margin: float = 1.0,
                    plausibility: float | None = 0.1, temperatures: Temperatures = Temperatures(),
                    fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Gated fallback: at a position where the full surrogate puts at least `margin` nats more log-prob than
    the vintage on some token the frontier finds plausible (probability >= `plausibility` x its top one),
    the frontier is about to use what was learnt after the cutoff, and a vintage distribution replaces it
    there: the `fallback` model's (logits of another vintage-`t` model) or, without one, the gating pair's
    vintage. Everywhere else the frontier's distribution is untouched.

    Unlike the linear contrast it needs no magnitude to match (the gate reads only the surrogates'
    disagreement), and unlike the rank rule it does not push toward the opposite answer: where it fires the
    answer is what the vintage believes, i.e. close to chance for facts it never saw. The gate relies on the
    pair agreeing on what both know (true of additive n-gram counts, much less of separately trained
    networks); what replaces the frontier should answer like a model trained to the cutoff (a trained
    network is confident, right or wrong, where a smoothed n-gram hedges): hence the gate from the n-gram
    pair and the fallback from the neural vintage (bench/fidelity.py measures each combination).
    """
    if not (frontier.shape == vintage.shape == full.shape):
        raise ValueError(f"logit shapes differ: frontier {tuple(frontier.shape)}, vintage {tuple(vintage.shape)}, "
                         f"full {tuple(full.shape)}")
    if fallback is not None and fallback.shape != frontier.shape:
        raise ValueError(f"logit shapes differ: frontier {tuple(frontier.shape)}, fallback {tuple(fallback.shape)}")
    lp_frontier = F.log_softmax(frontier.float() / temperatures.frontier, dim=-1)
    lp_vintage = F.log_softmax(vintage.float() / temperatures.vintage, dim=-1)
    divergence = F.log_softmax(full.float() / temperatures.full, dim=-1) - lp_vintage
    if plausibility is not None:
        threshold = lp_frontier.max(dim=-1, keepdim=True).values + math.log(plausibility)
        divergence = divergence.masked_fill(lp_frontier < threshold, float("-inf"))
    gate = divergence.max(dim=-1, keepdim=True).values > margin
    replacement = lp_vintage if fallback is None else F.log_softmax(fallback.float() / temperatures.fallback, dim=-1)
    return torch.where(gate, replacement, lp_frontier)


def fit_temperature(surrogate_logits: torch.Tensor, frontier_logits: torch.Tensor,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Confidence matching: the temperature T minimising the mean KL(frontier || softmax(surrogate / T))
    over positions [N, V] (pre-cutoff calibration text, where both should know the same). Surrogates that
    memorised are far more confident than the frontier (RESEARCH.md exp. 2: log-odds 6-7.6 vs 0.3), which
    makes any fixed alpha overshoot; dividing their logits by T > 1 brings them to the frontier's scale."""
    from scipy.optimize import minimize_scalar

    # float32: over a 49k vocabulary float64 doubled the fit's cost for digits below the optimiser's tolerance
    target = F.log_softmax(frontier_logits.float(), dim=-1)
    p_target = target.exp()
    logits = surrogate_logits.float()

    def kl(log_t: float) -> float:
        lp = F.log_softmax(logits / math.exp(log_t), dim=-1)
        return float((p_target * (target - lp)).sum(-1).mean())

    result = minimize_scalar(kl, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-4})  # T to 0.01%
    return float(math.exp(result.x))


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _vocab_size(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None)


def call_with_cache(model, input_ids, attention_mask, position_ids, cache, logits_to_keep: int | None = None):
    """A forward pass that returns its KV cache; transformers 5 names the argument `cache` (older
    releases and custom models `past_key_values`). `logits_to_keep` where the model supports it."""
    import inspect

    spec = getattr(model, "_vintage_call_spec", None)
    if spec is None:
        params = inspect.signature(model.forward).parameters
        spec = ("cache" if "cache" in params else "past_key_values", "logits_to_keep" in params)
        try:
            model._vintage_call_spec = spec
        except AttributeError:  # pragma: no cover - exotic modules without attribute assignment
            pass
    extra = {spec[0]: cache}
    if logits_to_keep is not None and spec[1]:
        extra["logits_to_keep"] = logits_to_keep
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                 **extra)


def returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def model_logits(model, input_ids, attention_mask, position_ids, past, keep: int | None, vocab: int):
    """Logits of the last `keep` positions (None: all) over the first `vocab` entries, and the model's
    cache; inputs are moved to the model's device. Models that support it compute only those positions (HF
    `logits_to_keep`: the LM head is most of a small surrogate's FLOPs); others are sliced."""
    device = _device(model)
    out = call_with_cache(model, input_ids.to(device), attention_mask.to(device), position_ids.to(device), past,
                          logits_to_keep=keep)
    logits = out.logits[..., :vocab]
    if keep is not None and logits.shape[1] > keep:
        logits = logits[:, -keep:]
    return logits, returned_cache(out)


class _InWorker:
    """A cache held by the surrogate process; valid for the generation (epoch) that made it."""

    def __init__(self, epoch: int):
        self.epoch = epoch


def _serve_surrogates(conn, models, vocab: int, threads: int) -> None:  # pragma: no cover - child process
    """Loop of the surrogate process: one request (which models, ids, mask, positions, continue the caches
    or not, keep) at a time, answered with float32 numpy logits (or the error's text)."""
    torch.set_num_threads(threads)
    caches = [None] * len(models)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            conn.close()
            os._exit(0)  # nothing to flush; a full interpreter teardown with torch loaded takes seconds
        which, ids, mask, positions, cont, keep = request
        try:
            out = []
            with torch.inference_mode():
                for slot, model in enumerate(models):
                    if model is None or not which[slot]:
                        out.append(None)
                        continue
                    logits, caches[slot] = model_logits(model, torch.from_numpy(ids), torch.from_numpy(mask),
                                                        torch.from_numpy(positions), caches[slot] if cont else None,
                                                        keep, vocab)
                    out.append(logits.float().cpu().numpy())
            conn.send(("ok", out))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", f"{type(error).__name__}: {error}"))


def _stop_worker(conn, process) -> None:
    try:
        conn.send(None)
    except (OSError, BrokenPipeError):
        pass
    process.join(timeout=5)
    if process.is_alive():
        process.terminate()
    conn.close()


class SurrogateWorker:
    """The surrogates (vintage, full, fallback) of a PointInTimeLM in a child process, so that their forward
    passes run on another core while the frontier runs its own (`PointInTimeLM(..., overlap=True)`).

    A small surrogate's step is mostly Python dispatch (a 2-block model at batch 1: ~2.5 ms, of which the
    matmuls are ~0.4), which a thread cannot overlap (the GIL) but a process can. The process starts at the
    first request (spawn: it imports torch and transformers, seconds) and keeps the KV caches; requests are
    synchronous pairs (submit, then result); logits come back as float32 arrays."""

    def __init__(self, models: Sequence, vocab: int, threads: int = 1):
        self.models, self.vocab, self.threads = list(models), vocab, threads
        self.epoch = 0
        self._process = self._conn = self._finalizer = None

    @property
    def running(self) -> bool:
        return self._finalizer is not None and self._finalizer.alive

    def _start(self) -> None:
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_surrogates, args=(child, self.models, self.vocab,
                                                                         self.threads),
                                        daemon=True, name="vintage-surrogates")
        self._process.start()
        child.close()
        self._finalizer = weakref.finalize(self, _stop_worker, self._conn, self._process)

    def submit(self, which: Sequence[bool], input_ids, attention_mask, position_ids, past, keep) -> None:
        """Start the surrogates on a batch; `past` None starts fresh caches, an `_InWorker` continues them."""
        if past is None:
            self.epoch += 1
            if not self.running:
                self._start()
        elif past.epoch != self.epoch or not self.running:
            raise RuntimeError("a surrogate cache from an earlier generation (or a closed process) was passed "
                               "back; the surrogate process keeps the latest one only")
        self._conn.send((tuple(which), input_ids.cpu().numpy(), attention_mask.cpu().numpy(),
                         position_ids.cpu().numpy(), past is not None, keep))

    def result(self) -> list[torch.Tensor | None]:
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the surrogate process exited (code {self._process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"surrogate process: {payload}")
        return [None if a is None else torch.from_numpy(a) for a in payload]

    def close(self) -> None:
        """End the process (a later request starts another)."""
        if self._finalizer is not None:
            self._finalizer()


def has_tokenizer(directory: str | Path) -> bool:
    directory = Path(directory)
    return any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def check_vocabularies(frontier_tokenizer, surrogate_tokenizer, frontier_name: str = "frontier",
                       surrogate_name: str = "surrogate") -> None:
    """Same size and the same token strings at the same ids, or a VocabularyMismatch naming both."""
    a, b = frontier_tokenizer.get_vocab(), surrogate_tokenizer.get_vocab()
    if len(a) != len(b):
        raise VocabularyMismatch(f"tokenizers differ in size: {frontier_name} has {len(a)} tokens, "
                                 f"{surrogate_name} has {len(b)}; surrogates must be trained with the frontier's tokenizer")
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])[:3]
        raise VocabularyMismatch(f"tokenizers {frontier_name} and {surrogate_name} map tokens to different ids "
                                 f"(e.g. {diff}); surrogates must be trained with the frontier's tokenizer")


@dataclass
class ScoredChoices:
    """Scores of one query's choices under one method: totals and per-token log-probs."""

    choice_logprobs: list[float]
    token_logprobs: list[list[float]]
    choice_tokens: list[list[int]] = field(default_factory=list)

    @property
    def prediction(self) -> int:
        return max(range(len(self.choice_logprobs)), key=self.choice_logprobs.__getitem__)

    def probabilities(self) -> list[float]:
        """Choice probabilities renormalised over the choices."""
        return torch.softmax(torch.tensor(self.choice_logprobs, dtype=torch.float64), 0).tolist()


@dataclass
class ChoiceComponents:
    logits: list  # frontier, vintage, full, fallback: [T, V] float32 (None where not computed)
    targets: torch.Tensor  # [T] the choice tokens
    spans: list[list[tuple[int, int]]]  # per query, per choice: its tokens' [start, end) in T
    tokens: list[list[list[int]]]


SLOTS = 4  # models behind one PointInTimeLM: frontier, vintage, full, fallback


def _check_modes(rank_k, switch_margin, fallback) -> None:
    if rank_k is not None and switch_margin is not None:
        raise ValueError("rank_k and switch_margin select two different modes; give one")
    if fallback is not None and switch_margin is None:
        raise ValueError("a fallback model applies to switch mode only (set switch_margin)")


class PointInTimeLM:
    """A frontier steered to a vintage: `score`, `generate` and `perplexity` under the combined distribution.

    Each model may sit on its own device and dtype; combination happens in float32 on the frontier's device.
    """

    def __init__(self, frontier, full, vintage, tokenizer, alpha: float = 0.0,
                 temperatures: Temperatures = Temperatures(), plausibility: float | None = None,
                 batch_size: int = 32, vintage_cutoff: str | None = None, rank_k: int | None = None,
                 rank_margin: float = 0.0, switch_margin: float | None = None, fallback=None,
                 overlap: bool = False):
        """`rank_k` set: rank mode (`rank_logprobs`: ban the k most divergent plausible tokens); `switch_margin`
        set: switch mode (`switch_logprobs`: a vintage distribution where the pair diverges by more than
        the margin: `fallback`'s, a fourth model at the same vintage, or else the pair's vintage); otherwise
        the linear contrast. In rank and switch mode alpha only switches the steering on (non-zero) or off
        (0: the frontier alone). `overlap`: `generate` runs the surrogates in a child process (`SurrogateWorker`,
        started at the first steered step, one thread) while the frontier runs here: for small batches,
        where a surrogate's step is Python dispatch rather than arithmetic (bench/decode.py: batch 1-8 on
        2 cores); give the frontier the other cores (`torch.set_num_threads`). Scoring and perplexity stay
        in-process (their logits are large and their batches are). `close()` ends the process (so does
        garbage collection)."""
        _check_modes(rank_k, switch_margin, fallback)
        self.frontier, self.full, self.vintage, self.tokenizer = frontier, full, vintage, tokenizer
        self.fallback = fallback
        self.rank_k, self.rank_margin, self.switch_margin = rank_k, rank_margin, switch_margin
        self.alpha, self.temperatures, self.plausibility = float(alpha), temperatures, plausibility
        self.batch_size = batch_size
        self.vintage_cutoff = vintage_cutoff
        self.vocab = len(tokenizer)
        self.overlap = overlap
        self._worker = SurrogateWorker((vintage, full, fallback), self.vocab) if overlap else None
        named = (("frontier", frontier), ("full surrogate", full), ("vintage surrogate", vintage),
                 ("fallback", fallback))
        for name, model in named:
            size = _vocab_size(model)
            if size is not None and size < self.vocab:
                raise VocabularyMismatch(f"{name} has {size} output logits, the tokenizer {self.vocab} tokens")
        for _, model in named:
            if hasattr(model, "eval"):
                model.eval()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, frontier: str | Path, full: str | Path, vintage: str | Path,
                        tokenizer: str | Path | None = None, surrogate_tokenizer: str | Path | None = None,
                        alpha: float = 0.0, frontier_kwargs: dict | None = None,
                        surrogate_kwargs: dict | None = None, **kwargs) -> "PointInTimeLM":
        """Load three HF causal-LM directories (safetensors). The surrogates' tokenizer (default: the one
        saved beside the vintage) must equal the frontier's (default: the one saved beside the frontier)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer_dir = Path(tokenizer or frontier)
        if not has_tokenizer(tokenizer_dir):
            raise VocabularyMismatch(f"{tokenizer_dir}: no tokenizer files there; pass tokenizer= (the frontier's)")
        frontier_tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        surrogate_path = surrogate_tokenizer or (vintage if has_tokenizer(vintage) else None)
        if surrogate_path is not None:
            check_vocabularies(frontier_tok, AutoTokenizer.from_pretrained(str(surrogate_path)),
                               str(tokenizer or frontier), str(surrogate_path))
        load = dict(use_safetensors=True)
        models = [AutoModelForCausalLM.from_pretrained(str(frontier), **load, **(frontier_kwargs or {}))]
        models += [AutoModelForCausalLM.from_pretrained(str(p), **load, **(surrogate_kwargs or {})) for p in (full, vintage)]
        return cls(models[0], models[1], models[2], frontier_tok, alpha=alpha, **kwargs)

    @classmethod
    def from_registry(cls, registry, as_of, frontier: str | Path | None = None,
                      alpha: float | str = recommended.ALPHA, plausibility: float | None = recommended.PLAUSIBILITY,
                      surrogate: str = "neural", fallback: str | None = None, frontier_kwargs: dict | None = None,
                      surrogate_kwargs: dict | None = None, **kwargs) -> "PointInTimeLM":
        """The vintage for `as_of` (latest whose cutoff day has fully passed), the registry's full surrogate,
        and its frontier (or `frontier`, any HF directory sharing the registry's tokenizer). `alpha` and
        `plausibility` default to the recommended method (vintage/recommended.py); alpha="calibrated" reads the
        alpha recorded in the registry's manifest (an opt-in: the pipeline records none). `surrogate`:
        the pair is the trained networks (neural) or the n-gram counts (ngram); `fallback` (switch mode):
        the kind whose vintage replaces the frontier where the gate fires (default: the pair's own).

            PointInTimeLM.from_registry("out/demo/models", "2018-01-15", surrogate="ngram", fallback="neural",
                                        switch_margin=0.1, plausibility=0.3)
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from vintage.registry import Registry

        registry = registry if isinstance(registry, Registry) else Registry(registry)
        cutoff, _ = registry.vintage_for(as_of)
        if alpha == "calibrated":
            alpha = registry.calibrated_alpha(cutoff)
        frontier_dir = Path(frontier) if frontier else registry.frontier_path()
        tokenizer_dir = frontier_dir if has_tokenizer(frontier_dir) else registry.tokenizer_path()
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        check_vocabularies(tokenizer, AutoTokenizer.from_pretrained(str(registry.tokenizer_path())),
                           str(tokenizer_dir), str(registry.tokenizer_path()))
        load = lambda kind, at: registry.load_surrogate(kind, at, **(surrogate_kwargs or {}))  # noqa: E731
        full, vintage = load(surrogate, registry.full_cutoff()), load(surrogate, cutoff)
        fallback = load(fallback, cutoff) if fallback else None
        model = AutoModelForCausalLM.from_pretrained(str(frontier_dir), use_safetensors=True, **(frontier_kwargs or {}))
        return cls(model, full, vintage, tokenizer, alpha=float(alpha), plausibility=plausibility,
                   vintage_cutoff=cutoff, fallback=fallback, **kwargs)

    def with_settings(self, **changes) -> "PointInTimeLM":
        """The same loaded models with other combination settings (alpha, temperatures, plausibility,
        rank_k, rank_margin, switch_margin, fallback: an already loaded model or None): a shallow copy,
        nothing is loaded again."""
        unknown = sorted(set(changes) - {"alpha", "temperatures", "plausibility", "rank_k", "rank_margin",
                                          "switch_margin", "fallback"})
        if unknown:
            raise TypeError(f"with_settings: not a combination setting: {unknown}")
        _check_modes(*(changes.get(k, getattr(self, k)) for k in ("rank_k", "switch_margin", "fallback")))
        other = object.__new__(PointInTimeLM)
        other.__dict__.update(self.__dict__)
        other.__dict__.update(changes)
        if self.overlap and changes.get("fallback") is not None and changes["fallback"] is not self.fallback:
            other._worker = SurrogateWorker((self.vintage, self.full, changes["fallback"]), self.vocab)
        if "alpha" in changes:
            other.alpha = float(changes["alpha"])
        return other

    def with_alpha(self, alpha: float) -> "PointInTimeLM":
        """The same loaded models at another alpha (a shallow copy)."""
        return self.with_settings(alpha=alpha)

    # -- model calls ---------------------------------------------------------------------------------------

    def _forward(self, model, input_ids, attention_mask, position_ids, past=None, keep: int | None = None):
        return model_logits(model, input_ids, attention_mask, position_ids, past, keep, self.vocab)

    def _float(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        """Logits moved to the frontier's device in float32 (after gathering what is needed: cheaper)."""
        return None if logits is None else logits.to(_device(self.frontier), torch.float32)

    def _all_logits(self, input_ids, attention_mask, position_ids, pasts=(None,) * SLOTS, everything=False,
                    keep: int | None = None, remote: bool = False):
        """Raw logits of frontier, vintage, full and fallback (in that order), each on its model's device and
        dtype. At alpha = 0 the surrogates are skipped (their slots are None) unless `everything`; so is a
        fallback the combination does not have. `remote`: the surrogates run in the worker process."""
        steer = everything or self.alpha != 0
        if steer and remote and self.vintage is not None:
            return self._overlapped_logits(input_ids, attention_mask, position_ids, pasts, keep)
        models = (self.frontier, self.vintage if steer else None, self.full if steer else None,
                  self.fallback if steer else None)
        results = [(None, None) if m is None else self._forward(m, input_ids, attention_mask, position_ids, p, keep)
                   for m, p in zip(models, pasts)]
        return [r[0] for r in results], [r[1] for r in results]

    def _overlapped_logits(self, input_ids, attention_mask, position_ids, pasts, keep):
        """`_all_logits` with the surrogates' passes in the worker process, concurrent with the frontier's."""
        worker = self._worker
        worker.submit((True, True, self.fallback is not None), input_ids, attention_mask, position_ids, pasts[1],
                      keep)
        try:
            frontier = self._forward(self.frontier, input_ids, attention_mask, position_ids, pasts[0], keep)
        finally:
            surrogates = worker.result()  # always collected: the pipe stays in step even if the frontier failed
        held = _InWorker(worker.epoch)
        return [frontier[0], *surrogates], [frontier[1], held, held, held if self.fallback is not None else None]

    def close(self) -> None:
        """End the surrogate process of `overlap` (a later generation starts another); copies made by
        `with_settings` share it."""
        if self._worker is not None:
            self._worker.close()

    def _combine(self, logits: Sequence[torch.Tensor], alpha: float | None = None) -> torch.Tensor:
        frontier, vintage, full, fallback = (list(logits) + [None] * SLOTS)[:SLOTS]
        alpha = self.alpha if alpha is None else alpha
        if alpha == 0:
            return F.log_softmax(frontier.float() / self.temperatures.frontier, dim=-1)
        if vintage is None or full is None:
            raise ValueError("surrogate logits were not computed (alpha was 0 when they were scored)")
        if self.rank_k is not None:
            return rank_logprobs(frontier, vintage, full, self.rank_k, self.rank_margin, self.plausibility,
                                 self.temperatures)
        if self.switch_margin is not None:
            if self.fallback is not None and fallback is None:
                raise ValueError("fallback logits were not computed")
            return switch_logprobs(frontier, vintage, full, self.switch_margin, self.plausibility, self.temperatures,
                                   fallback)
        return combine_logprobs(frontier, vintage, full, alpha, self.temperatures, self.plausibility)

    # -- scoring -------------------------------------------------------------------------------------------

    def encode_choices(self, prompts: Sequence[str], choices: Sequence[Sequence[str]]):
        """Token ids of each prompt and each of its choices (tokenised apart, as evaluation harnesses do)."""
        if len(prompts) != len(choices):
            raise ValueError(f"{len(prompts)} prompts but {len(choices)} choice lists")
        encoded = []
        for i, (prompt, options) in enumerate(zip(prompts, choices)):
            p = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            cs = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in options]
            if not options or any(len(c) == 0 for c in cs):
                raise ValueError(f"query {i}: a choice is empty after tokenisation ({list(options)!r})")
            if not p:
                raise ValueError(f"query {i}: the prompt is empty after tokenisation")
            encoded.append((p, cs))
        return encoded

    def choice_components(self, prompts: Sequence[str], choices: Sequence[Sequence[str]],
                          everything: bool = True) -> "ChoiceComponents":
        """The models' logits at every choice token's position (gathered, [T, V] each), the target
        tokens and where each (query, choice) sits among them; combining them for any alpha is then one
        vectorised call (calibration sweeps alpha on these). Sequences are left-padded, so every choice
        ends at the last column and the models compute logits for the last (longest choice + 1) positions
        only."""
        encoded = self.encode_choices(prompts, choices)
        flat = [(q, k, p + c, len(p), c) for q, (p, cs) in enumerate(encoded) for k, c in enumerate(cs)]
        parts: list[list[torch.Tensor]] = [[] for _ in range(SLOTS)]
        targets, spans = [], [[None] * len(cs) for _, cs in encoded]
        offset = 0
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start:start + self.batch_size]
            width = max(len(seq) for _, _, seq, _, _ in chunk)
            keep = max(len(c) for *_, c in chunk) + 1
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            rows, cols = [], []
            for row, (q, k, seq, plen, c) in enumerate(chunk):
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
                rows += [row] * len(c)
                # logits at t predict token t+1: the choice's are the len(c) positions before the last one,
                # i.e. columns keep-1-len(c) .. keep-2 of the kept logits
                cols += range(keep - 1 - len(c), keep - 1)
                targets += c
                spans[q][k] = (offset, offset + len(c))
                offset += len(c)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits, _ = self._all_logits(ids, mask, positions, everything=everything, keep=keep)
                r, c_ = torch.tensor(rows), torch.tensor(cols)
                for m, lg in enumerate(logits):
                    if lg is not None:
                        parts[m].append(self._float(lg[r.to(lg.device), c_.to(lg.device)]))
        gathered = [torch.cat(p) if p else None for p in parts]
        return ChoiceComponents(gathered, torch.tensor(targets, dtype=torch.long), spans,
                                [[list(c) for c in cs] for _, cs in encoded])

    def score_components(self, components: "ChoiceComponents", alpha: float | None = None) -> list[ScoredChoices]:
        with torch.inference_mode():
            lp = self._combine(components.logits, alpha)
            token_lp = lp.gather(-1, components.targets.to(lp.device)[:, None])[:, 0].double().cpu().tolist()
        scored = []
        for spans, tokens in zip(components.spans, components.tokens):
            per_token = [token_lp[a:b] for a, b in spans]
            scored.append(ScoredChoices([float(sum(t)) for t in per_token], per_token, tokens))
        return scored

    def score(self, prompts: Sequence[str], choices: Sequence[Sequence[str]]) -> list[ScoredChoices]:
        """Log-prob of each choice continuing its prompt, per token and in total, under the combined model."""
        return self.score_components(self.choice_components(prompts, choices, everything=False))

    # -- perplexity ----------------------------------------------------------------------------------------

    def token_logprobs(self, texts: Sequence[str], alpha: float | None = None) -> list[torch.Tensor]:
        """Combined log-prob of every token after the first of each text."""
        return self.ids_logprobs([self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], alpha)

    def ids_logprobs(self, encoded: Sequence[Sequence[int]], alpha: float | None = None) -> list[torch.Tensor]:
        """Combined log-prob of every token after the first of each token-id sequence (e.g. packed windows),
        in batches of `batch_size`, right-padded."""
        out = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            width = max(len(e) for e in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, e in enumerate(chunk):
                ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
                mask[row, : len(e)] = 1
            with torch.inference_mode():
                logits, _ = self._all_logits(ids, mask, torch.arange(width).expand(len(chunk), width),
                                             everything=alpha is not None and alpha != 0)
                lp = self._combine([self._float(lg) for lg in logits], alpha)
            for row, e in enumerate(chunk):
                n = len(e)
                target = ids[row, 1:n].to(lp.device)
                out.append(lp[row, : n - 1].gather(-1, target[:, None])[:, 0].double().cpu())
        return out

    def perplexity(self, texts: Sequence[str], alpha: float | None = None) -> float:
        """exp(mean negative log-likelihood) over all predicted tokens of `texts`."""
        lps = [t for t in self.token_logprobs(texts, alpha) if len(t)]
        if not lps:
            raise ValueError("perplexity needs at least one text of two or more tokens")
        return float(torch.exp(-torch.cat(lps).mean()))

    # -- generation ----------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 20, greedy: bool = True,
                 temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
                 use_cache: bool = True, return_scores: bool = False, stop_at_eos: bool = True):
        """Continue each prompt under the combined distribution. Prompts are left-padded into one batch;
        with use_cache the three models keep KV caches and see one new token per step."""
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(len(e) == 0 for e in encoded):
            raise ValueError("a prompt is empty after tokenisation")
        batch, width = len(encoded), max(len(e) for e in encoded)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[row, width - len(e):] = 1
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        eos = self.tokenizer.eos_token_id if stop_at_eos else None
        done = torch.zeros(batch, dtype=torch.bool)
        new_tokens, step_scores = [], []
        pasts = (None,) * SLOTS
        step_ids, step_mask = ids, mask
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                positions = (step_mask.cumsum(-1) - 1).clamp(min=0)
                if use_cache and pasts[0] is not None:
                    logits, pasts = self._all_logits(step_ids[:, -1:], step_mask, positions[:, -1:], pasts,
                                                     keep=1, remote=self.overlap)
                else:
                    logits, pasts = self._all_logits(step_ids, step_mask, positions, keep=1, remote=self.overlap)
                lp = self._combine([self._float(None if lg is None else lg[:, -1]) for lg in logits]).cpu()
                step_scores.append(lp)
                if greedy:
                    nxt = lp.argmax(-1)
                else:
                    scaled = lp / temperature
                    if top_k is not None:
                        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
                        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                    nxt = torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator)[:, 0]
                was_done = done.clone()
                nxt = torch.where(was_done, torch.full_like(nxt, self.pad_id), nxt)
                new_tokens.append(nxt)
                if eos is not None:
                    done |= nxt == eos
                step_ids = torch.cat([step_ids, nxt[:, None]], dim=1)
                step_mask = torch.cat([step_mask, (~was_done).long()[:, None]], dim=1)
                if done.all():
                    break
        generated = torch.stack(new_tokens, dim=1) if new_tokens else torch.zeros((batch, 0), dtype=torch.long)
        texts = []
        for row in range(batch):
            tokens = generated[row].tolist()
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            texts.append(self.tokenizer.decode(tokens))
        if return_scores:
            return texts, generated, torch.stack(step_scores, dim=1)
        return texts


class PointInTimeLogitsProcessor(LogitsProcessor):
    """For `frontier.generate(..., logits_processor=[this])`: replaces the frontier's next-token scores by
    the combined log-probs. The surrogates keep their own KV caches across steps.

    Pass the prompt's `attention_mask` when the batch is left-padded.
    """

    def __init__(self, full, vintage, alpha: float, temperatures: Temperatures = Temperatures(),
                 plausibility: float | None = None, attention_mask: torch.Tensor | None = None):
        self.full, self.vintage, self.alpha = full, vintage, float(alpha)
        self.temperatures, self.plausibility = temperatures, plausibility
        self.prompt_mask = attention_mask
        self._past = None
        self._seen = 0

    def _mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.prompt_mask is None:
            return torch.ones_like(input_ids)
        extra = input_ids.shape[1] - self.prompt_mask.shape[1]
        return torch.cat([self.prompt_mask.to(input_ids.device), torch.ones_like(input_ids[:, :extra])], dim=1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = self._mask(input_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        vocab = scores.shape[-1]
        incremental = self._past is not None and input_ids.shape[1] == self._seen + 1
        logits, pasts = [], []
        for k, model in enumerate((self.vintage, self.full)):
            ids, pos = (input_ids[:, -1:], positions[:, -1:]) if incremental else (input_ids, positions)
            with torch.inference_mode():
                last, cache = model_logits(model, ids, mask, pos, self._past[k] if incremental else None, 1, vocab)
            logits.append(last[:, -1].to(scores.device, torch.float32))
            pasts.append(cache)
        self._past, self._seen = pasts, input_ids.shape[1]
        return combine_logprobs(scores, logits[0], logits[1], self.alpha, self.temperatures, self.plausibility)
