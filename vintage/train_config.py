"""What a training run is configured with (the `train:` YAML): roles, optimisation, n-grams, the run.

    python -m pipelines.train --config configs/train/tiny.yaml
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corpora.config import doc
from vintage.holdout import HOLDOUT_EVERY


@dataclass
class Optimisation:
    """How one model is trained."""

    lr: float = doc("peak learning rate (lower for wider models: RESEARCH.md exp. 3)", 1e-3)
    weight_decay: float = doc("AdamW weight decay", 0.0)
    batch_size: int = doc("windows (of max_length tokens: vintage/windows.py) per step per worker: a step trains "
                          "batch_size x num_workers windows, split over the workers by length", 32)
    warmup_steps: int = doc("linear warm-up at the start of the run", 20)
    epochs: int = doc("passes over each stage's windows", 3)
    continue_epochs: int | None = doc(
        "chronological: passes over each later stage's documents (the model is warm: it knows the language "
        "and the earlier slices); unset: `epochs`", None)
    replay: float = doc("chronological: replayed earlier documents per new document", 1.0)
    replay_sampling: Literal["stage", "epoch"] = doc(
        "chronological: draw the replayed documents once per stage (the same part of the old data every "
        "epoch) or afresh every epoch (over a stage they cover it)", "stage")
    cooldown_steps: int = doc("steps of the learning-rate cooldown branch saved as each vintage", 30)
    after_cooldown: Literal["restore", "continue"] = doc(
        "chronological: after a vintage is saved the main run restores its weights from before the cooldown "
        "branch (`restore`) or continues from the cooled vintage (`continue`: the cooldown's pass over "
        "everything up to the cutoff is kept, and the next stage warms up again over `warmup_steps`; it "
        "memorised more at the same tokens in bench/RESULTS.md, session 10)", "restore")
    max_length: int | None = doc("tokens per training window: documents are packed end to end, EOS after each, "
                                 "and cut every max_length tokens (none is dropped); at most the preset's context; "
                                 "unset: the preset's context", None)


@dataclass
class RoleConfig:
    """One role of the run: a preset and how to train it."""

    preset: str = doc("model preset (vintage.presets)")
    optim: Optimisation = doc("optimisation settings", default=None)
    seeds: list[int] = doc("retrained role: seeds to train per cutoff", default=[0])

    def __post_init__(self):
        if self.optim is None:
            self.optim = Optimisation()


@dataclass
class NgramConfig:
    """N-gram surrogates counted per slice beside the neural ones (vintage.ngram)."""

    order: int = doc("n of the n-grams; 5 on the embedded worlds, where a fact's company name sits 4 tokens "
                     "before its answer ('Ralecorp 2017q2 results: miss'): order 4 cannot tell companies "
                     "apart (full-surrogate fact accuracy 0.59; order 5: 0.86; order 6, sparser: 0.74)", 5)
    min_count: int = doc("prune n-grams (order >= 2) seen fewer times than this in a vintage", 1)
    engine: Literal["ray", "local"] = doc("count with Ray Data (ray) or in this process (local)", "ray")


@dataclass
class TrainConfig:
    """A training run over a split."""

    surrogate: RoleConfig = doc("the surrogate vintages")
    split: str = doc("split output directory (the end-to-end pipeline fills it in)", "")
    output: str = doc("model registry directory to write (the end-to-end pipeline fills it in)", "")
    cutoffs: list[str] | None = doc("vintage cutoffs among the split's slices; default: all of them", None)
    schedule: Literal["chronological", "independent"] = doc("how surrogate vintages are trained", "chronological")
    tokenizer: str | None = doc("the frontier's tokenizer directory; unset: a BPE trained on the split", None)
    vocab_size: int = doc("BPE vocabulary when the tokenizer is trained here", 2048)
    compact_vocabulary: Literal["auto", "always", "never"] = doc(
        "train the surrogates over the token ids the corpus uses (plus the specials and the probes' ids), mapped "
        "back to the tokenizer's at decoding (vintage/compact.py): a 128k-262k frontier vocabulary is mostly "
        "rows a corpus never uses; auto: when that removes at least half the output rows", "auto")
    frontier: RoleConfig | str | None = doc(
        "embedded worlds: a frontier trained on all data (a role); or your own pretrained frontier, a Hugging Face "
        "causal LM directory with safetensors and its tokenizer (a path: none is trained, its tokenizer is the "
        "run's, and the registry's later stages use it; vintage.frontier.check_frontier says what it needs)", None)
    retrained: RoleConfig | None = doc("embedded worlds: the frontier preset retrained at retrained_cutoffs "
                                       "(not with your own frontier: its architecture is not a preset)", None)
    retrained_cutoffs: list[str] = doc("cutoffs with a retrained gold model", default=[])
    num_workers: int = doc("Ray Train workers per run", 1)
    use_gpu: bool = doc("train on GPUs", False)
    dtype: Literal["auto", "float32", "bfloat16"] = doc(
        "what training computes in. bfloat16: on a CPU, the forward passes under torch.autocast (weights, "
        "optimizer and the loss's log-softmax stay float32); on a GPU, DeepSpeed's bf16 mode. auto: bfloat16 on a "
        "GPU that supports it, and on a CPU with AMX or AVX512-bf16 (judged where the driver runs) for models at least "
        "vintage.precision.CPU_BF16_MIN_WIDTH wide (narrower ones train no faster in bf16), else float32", "auto")
    zero_stage: int = doc("DeepSpeed ZeRO stage (0-2 verified on CPU)", 0)
    threads_per_worker: int = doc("torch threads in each worker", 1)
    holdout_every: int = doc("one document in this many is held out for validation loss", HOLDOUT_EVERY)
    seed: int = doc("seed of the surrogates", 0)
    max_failures: int = doc("worker failures a run survives (it resumes from its last checkpoint)", 2)
    parallel_runs: int = doc("Ray Train runs at once (independent vintages, frontier, retrained seeds)", 2)
    probes: str | None = doc("queries parquet whose fact queries (kind == 'fact') are known by a stage's "
                             "cutoff: train each stage until they are memorised (embedded worlds)", None)
    memorise: float = doc("with probes: stop a stage once its fact accuracy reaches this (epochs cap it)", 0.95)
    ngram: NgramConfig | None = doc("also count n-gram surrogates per slice (no training); unset: none", None)
    fit_temperatures: bool = doc("fit each surrogate's confidence-matching temperature against the frontier "
                                 "on held-out text (needs a frontier)", True)
    calibrate_strength: bool = doc("choose each vintage's alpha on held-out text, without labels "
                                   "(vintage/strength.py; alpha: calibrated reads it; needs a frontier)", True)

    def __post_init__(self):
        window_length(self)  # every preset must hold the run's windows: an error at load, not in a worker
        if not isinstance(self.frontier, str):
            return
        if not self.frontier:
            raise ValueError("frontier: expected a directory (your own Hugging Face causal LM) or a role mapping")
        if self.retrained is not None or self.retrained_cutoffs:
            raise ValueError(f"retrained: the gold model is the frontier's architecture retrained from scratch, "
                             f"and your own frontier ({self.frontier}) is not a preset; leave retrained and "
                             f"retrained_cutoffs out")
        if self.tokenizer and Path(self.tokenizer).resolve() != Path(self.frontier).resolve():
            raise ValueError(f"tokenizer: with your own frontier its tokenizer is the run's; leave tokenizer unset "
                             f"(got {self.tokenizer}, frontier {self.frontier})")

    @property
    def frontier_dir(self) -> str | None:
        """Your own frontier's directory (frontier: DIR); None when the frontier is a role or absent."""
        return self.frontier if isinstance(self.frontier, str) else None

    @property
    def frontier_role(self) -> RoleConfig | None:
        """The frontier this run trains; None with your own frontier or none."""
        return None if isinstance(self.frontier, str) else self.frontier


def check_external_frontier(config: TrainConfig, where: str = "frontier"):
    """Your own frontier checked against the run (vintage.frontier.check_frontier): its FrontierInfo, or
    None when the frontier is trained here."""
    if config.frontier_dir is None:
        return None
    from vintage.frontier import check_frontier

    return check_frontier(config.frontier_dir, window_length(config), where=where)


def window_length(config: TrainConfig) -> int:
    """The run's one window length (every role reads the same packed windows): the shortest of the roles'
    `max_length`, each unset one standing for its preset's context. A max_length beyond a preset's context
    is an error: the model has no positions for it."""
    from vintage.presets import get_preset

    lengths = []
    for name, role in (("surrogate", config.surrogate), ("frontier", config.frontier_role),
                       ("retrained", config.retrained)):
        if role is None:
            continue
        context = get_preset(role.preset).n_positions
        wanted = role.optim.max_length
        if wanted is not None and not 2 <= wanted <= context:
            raise ValueError(f"train config: {name}.optim.max_length: expected 2..{context} (preset "
                             f"{role.preset!r} has {context} positions), got {wanted}")
        lengths.append(wanted or context)
    return min(lengths)


