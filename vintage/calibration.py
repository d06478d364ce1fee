"""Choose alpha per vintage on labelled probes, never as a constant (RESEARCH.md experiment 3).

On fact queries after the cutoff, the point-in-time answer probabilities should match the reference's
(a model retrained at the cutoff where one exists, else the vintage surrogate); on fact queries before
it, accuracy must stay within `max_pre_drop` of the frontier's. Among the alphas of the grid that keep
the second, the one closest to the reference on the first wins (ties: the smaller alpha).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from vintage.decoding import PointInTimeLM, ScoredChoices

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(0, 41))  # 0 .. 2


@dataclass
class Probe:
    prompt: str
    choices: list[str]
    answer: str


@dataclass
class CalibrationResult:
    alpha: float
    reference: str  # "retrained" or "vintage"
    distance: float  # mean |p_pit(answer) - p_ref(answer)| on post-cutoff probes at the chosen alpha
    post_accuracy: float
    pre_accuracy: float
    frontier_pre_accuracy: float
    n_post: int
    n_pre: int
    table: list[dict] = field(default_factory=list)  # per alpha: distance, post/pre accuracy, admissible

    def evidence(self) -> dict:
        return asdict(self)


def answer_probability(scored: ScoredChoices, choices: Sequence[str], answer: str) -> float:
    return scored.probabilities()[list(choices).index(answer)]


def accuracy(scored: Sequence[ScoredChoices], probes: Sequence[Probe]) -> float:
    hits = [s.prediction == list(p.choices).index(p.answer) for s, p in zip(scored, probes)]
    return sum(hits) / max(1, len(hits))


def calibrate_alpha(lm: PointInTimeLM, post: Sequence[Probe], pre: Sequence[Probe],
                    reference_post: Sequence[ScoredChoices], reference: str = "retrained",
                    grid: Sequence[float] = DEFAULT_GRID, max_pre_drop: float = 0.05) -> CalibrationResult:
    """`reference_post`: the reference model's scores of `post` (same order)."""
    if not post or not pre:
        raise ValueError(f"calibration needs probes on both sides of the cutoff (post: {len(post)}, pre: {len(pre)})")
    for probe in (*post, *pre):
        if probe.answer not in probe.choices:
            raise ValueError(f"probe {probe.prompt!r}: answer {probe.answer!r} is not one of {probe.choices}")
    post_parts = lm.choice_components([p.prompt for p in post], [p.choices for p in post])
    pre_parts = lm.choice_components([p.prompt for p in pre], [p.choices for p in pre])
    ref_p = [answer_probability(s, p.choices, p.answer) for s, p in zip(reference_post, post)]
    frontier_pre = accuracy(lm.score_components(pre_parts, alpha=0.0), pre)
    table = []
    for alpha in grid:
        post_scores = lm.score_components(post_parts, alpha=alpha)
        pre_scores = lm.score_components(pre_parts, alpha=alpha)
        pit_p = [answer_probability(s, p.choices, p.answer) for s, p in zip(post_scores, post)]
        row = dict(alpha=float(alpha), distance=sum(abs(a - b) for a, b in zip(pit_p, ref_p)) / len(post),
                   post_accuracy=accuracy(post_scores, post), pre_accuracy=accuracy(pre_scores, pre))
        row["admissible"] = row["pre_accuracy"] >= frontier_pre - max_pre_drop
        table.append(row)
    admissible = [r for r in table if r["admissible"]] or [min(table, key=lambda r: r["alpha"])]
    best = min(admissible, key=lambda r: (round(r["distance"], 12), r["alpha"]))
    return CalibrationResult(alpha=best["alpha"], reference=reference, distance=best["distance"],
                             post_accuracy=best["post_accuracy"], pre_accuracy=best["pre_accuracy"],
                             frontier_pre_accuracy=frontier_pre, n_post=len(post), n_pre=len(pre), table=table)


def calibrate_registry(registry, queries: str, frontier: str | None = None, grid: Sequence[float] = DEFAULT_GRID,
                       max_pre_drop: float = 0.05) -> dict[str, dict]:
    """`alpha="calibrated"` made possible: `calibrate_alpha` for every neural vintage of `registry` but the full one
    (its contrast is zero) on the fact queries of `queries` (parquet: kind, as_of, prompt, choices, answer), those
    asked after the cutoff day against those before it; the reference is the model retrained at the cutoff
    (seed 0) where the registry has one, else the vintage surrogate. Each vintage's evidence, with the fingerprints
    of the models it was measured on, goes to the manifest's `calibration[cutoff]` (Registry.record_calibration).
    A vintage without facts on both sides of its cutoff is skipped and named."""
    import polars as pl
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from corpora.timeline import known_by_expr
    from vintage.registry import Registry, model_fingerprint
    from vintage.tokenizer import load_tokenizer

    hf_logging.disable_progress_bar()
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    facts = pl.read_parquet(queries).filter(pl.col("kind") == "fact").with_columns(
        pl.col("as_of").dt.convert_time_zone("UTC"))
    if facts.is_empty():
        raise ValueError(f"{queries}: no fact queries (kind == 'fact') to calibrate on")
    tokenizer = load_tokenizer(registry.tokenizer_path())
    load = lambda path: AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True).eval()  # noqa: E731
    frontier_dir = frontier or registry.frontier_path()
    frontier_model, full = load(frontier_dir), registry.load_surrogate("neural", registry.full_cutoff())
    found = {}
    for cutoff in registry.cutoffs()[:-1]:
        known = known_by_expr("as_of", cutoff)
        sides = {side: [Probe(p, list(c), a) for p, c, a in zip(q["prompt"], q["choices"], q["answer"])]
                 for side, q in (("post", facts.filter(~known)), ("pre", facts.filter(known)))}
        if not sides["post"] or not sides["pre"]:
            print(f"[calibrate] {cutoff}: skipped, fact queries after / before the cutoff: "
                  f"{len(sides['post'])} / {len(sides['pre'])}", flush=True)
            continue
        vintage = registry.load_surrogate("neural", cutoff)
        seeds = registry.retrained_seeds(cutoff)
        reference_dir = registry.retrained_path(cutoff, seeds[0]) if seeds else registry.vintage_path(cutoff)
        alone = PointInTimeLM(load(reference_dir) if seeds else vintage, None, None, tokenizer)
        reference = alone.score([p.prompt for p in sides["post"]], [p.choices for p in sides["post"]])
        lm = PointInTimeLM(frontier_model, full, vintage, tokenizer, alpha=1.0)
        result = calibrate_alpha(lm, sides["post"], sides["pre"], reference, "retrained" if seeds else "vintage",
                                 grid, max_pre_drop)
        evidence = {**result.evidence(), "queries": str(queries),
                    "fingerprints": {"frontier": model_fingerprint(Path(frontier_dir)),
                                     "full": registry.surrogate_fingerprint("neural", registry.full_cutoff()),
                                     "vintage": registry.surrogate_fingerprint("neural", cutoff)}}
        registry.record_calibration(cutoff, evidence)
        found[cutoff] = evidence
        print(f"[calibrate] {cutoff}: alpha {result.alpha:g} (reference {result.reference}: distance "
              f"{result.distance:.3f}; pre-cutoff accuracy {result.pre_accuracy:.2f}, the frontier's "
              f"{result.frontier_pre_accuracy:.2f}; {result.n_post} / {result.n_pre} facts after / before)", flush=True)
    return found


# -- confidence matching ---------------------------------------------------------------------------------

def position_logits(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32):
    """Next-token logits [N, V] at every predicted position of `texts` (float32, CPU), in text order."""
    import torch

    vocab = len(tokenizer)
    encoded = [ids[:max_length] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    device = next(iter(model.parameters()), torch.zeros(0)).device
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            chunk = [e for e in encoded[start:start + batch_size] if len(e) >= 2]
            if not chunk:
                continue
            width = max(len(e) for e in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, e in enumerate(chunk):
                ids[row, : len(e)] = torch.tensor(e)
                mask[row, : len(e)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[..., :vocab].float().cpu()
            for row, e in enumerate(chunk):
                out.append(logits[row, : len(e) - 1])
    return torch.cat(out) if out else torch.zeros((0, vocab))


def fit_registry_temperatures(registry, split: str, kinds: Sequence[str] = ("neural", "ngram"),
                              frontier: str | None = None, holdout_every: int = 20, max_docs: int = 128) -> dict:
    """Confidence matching (issue #9): for every surrogate of the registry (each vintage, the last one being
    the full), the temperature that makes its next-token distribution closest in KL to the frontier's on
    held-out documents up to its cutoff (text both should know alike). Written to the manifest under
    `temperatures[kind][cutoff]` with the evidence (KL before and after, positions, the model fingerprint)."""
    import math

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from corpora.split import read_slices
    from vintage.decoding import fit_temperature
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
    frontier_model = AutoModelForCausalLM.from_pretrained(str(frontier or registry.frontier_path()),
                                                          use_safetensors=True).eval()
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
            model = registry.load_surrogate(kind, cutoff)
            fingerprint = registry.surrogate_fingerprint(kind, cutoff)
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

    target = F.log_softmax(target_logits.float(), -1)  # as fit_temperature
    lp = F.log_softmax(logits.float() / temperature, -1)
    return float((target.exp() * (target - lp)).sum(-1).mean())
