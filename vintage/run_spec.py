"""The contract between the driver and a Ray Train worker: one training run and its stages.

`vintage/plan.py` builds these from a TrainConfig and a split; `vintage/training.py`'s `train_func` reads
nothing else. A run's stage hashes (what makes a saved vintage reusable) cover its learning settings, not
how it is executed (`OPERATIONAL`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

WINDOWS_FORMAT = "packed, positions restart per document"  # vintage/windows.py; change it when that changes
OPERATIONAL = ("tokens", "corpus_tokens", "max_failures", "pid_file", "resume_from", "run_hash",
               "scratch", "heartbeat")  # how a run is executed, not what it learns
# added later: at their defaults they stay out of the hash, so registries trained before them keep their hashes
DEFAULTS_LEFT_OUT = {"replay_sampling": "stage", "after_cooldown": "restore", "vocabulary": None}


@dataclass
class Stage:
    """One stage of a run: train on `new` (replaying `replay`) for `epochs`, then save a model at `save_to`
    trained on `known`, knowing the fact `probes` public by `cutoff`."""

    cutoff: str
    new: list[str]
    replay: list[str]
    epochs: int
    known: list[str]
    save_to: str | None = None
    probes: list[list] = field(default_factory=list)  # [prompt ids, choices' ids, answer index]
    stage_hash: str | None = None

    def learned(self) -> dict:
        """What the stage teaches (its hash input): everything but where it is saved and its own hash."""
        return {k: v for k, v in asdict(self).items() if k not in ("stage_hash", "save_to")}


@dataclass
class RunSpec:
    """One Ray Train run: a model preset trained over its stages by `train_func`."""

    name: str
    preset: str
    tokens: str  # the tokenised windows parquet (slice, input_ids, holdout)
    vocab_size: int
    eos_id: int
    pad_id: int
    seed: int
    lr: float
    weight_decay: float
    batch_size: int
    warmup_steps: int
    replay: float
    cooldown_steps: int
    zero_stage: int
    use_gpu: bool
    bf16: bool  # compute in bfloat16: DeepSpeed's bf16 mode on a GPU, torch.autocast on a CPU
    threads_per_worker: int
    memorise: float
    max_failures: int
    window: int  # documents are packed at this length: it shapes what is learned
    corpus_tokens: dict[str, int]
    stages: list[Stage] = field(default_factory=list)
    replay_sampling: Literal["stage", "epoch"] = "stage"
    after_cooldown: Literal["restore", "continue"] = "restore"
    scratch: str | None = None  # a directory every worker reads: the cooldown branch point
    pid_file: str | None = None  # fault-injection tests: the last worker writes its pid here
    resume_from: str | None = None  # a checkpoint to continue from
    heartbeat: str | None = None  # a file the first worker touches as it steps (the driver's watchdog reads it)
    run_hash: str | None = None
    vocabulary: list[int] | None = None  # a compact surrogate's frontier ids (vintage/compact.py); None: all

    def settings_json(self) -> str:
        """The run's learning settings as hashed (sorted JSON, without the stages and the name)."""
        settings = {k: v for k, v in asdict(self).items()
                    if k not in OPERATIONAL + ("stages", "name") and DEFAULTS_LEFT_OUT.get(k, object()) != v}
        return json.dumps(settings, sort_keys=True)
