"""A training run: from a split to a model registry (tokenizer, surrogate vintages, frontier, retrained gold).

    python -m pipelines.train --config configs/train/tiny.yaml
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from corpora.config import doc
from corpora.split import read_slices


@dataclass
class Optimisation:
    """How one model is trained."""

    lr: float = doc("peak learning rate (lower for wider models: RESEARCH.md exp. 3)", 1e-3)
    weight_decay: float = doc("AdamW weight decay", 0.0)
    batch_size: int = doc("documents per step per worker", 32)
    warmup_steps: int = doc("linear warm-up at the start of the run", 20)
    epochs: int = doc("passes over each stage's documents", 3)
    replay: float = doc("chronological: replayed earlier documents per new document", 1.0)
    cooldown_steps: int = doc("steps of the learning-rate cooldown branch saved as each vintage", 30)
    max_length: int = doc("tokens per document (longer ones are cut)", 96)


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
class TrainConfig:
    """A training run over a split."""

    split: str = doc("split output directory")
    output: str = doc("model registry directory to write")
    surrogate: RoleConfig = doc("the surrogate vintages")
    cutoffs: list[str] | None = doc("vintage cutoffs among the split's slices; default: all of them", None)
    schedule: Literal["chronological", "independent"] = doc("how surrogate vintages are trained", "chronological")
    tokenizer: str | None = doc("the frontier's tokenizer directory; unset: a BPE trained on the split", None)
    vocab_size: int = doc("BPE vocabulary when the tokenizer is trained here", 2048)
    frontier: RoleConfig | None = doc("embedded worlds: a frontier on all data", None)
    retrained: RoleConfig | None = doc("embedded worlds: the frontier preset retrained at retrained_cutoffs", None)
    retrained_cutoffs: list[str] = doc("cutoffs with a retrained gold model", default=[])
    num_workers: int = doc("Ray Train workers per run", 1)
    use_gpu: bool = doc("train on GPUs", False)
    zero_stage: int = doc("DeepSpeed ZeRO stage (0-2 verified on CPU)", 0)
    threads_per_worker: int = doc("torch threads in each worker", 1)
    holdout_every: int = doc("one document in this many is held out for validation loss", 20)
    seed: int = doc("seed of the surrogates", 0)
    parallel_runs: int = doc("independent schedule: runs at once", 2)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare(config: TrainConfig, registry: Path) -> tuple[Path, dict]:
    """Tokenizer and tokenised documents for the workers; returns (tokens parquet, facts about them)."""
    from vintage.tokenizer import load_tokenizer, tokenizer_hash, train_bpe

    slices = read_slices(config.split)
    if slices.num_rows == 0:
        raise ValueError(f"{config.split}: the split has no documents")
    work = registry / ".work"
    work.mkdir(parents=True, exist_ok=True)
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        tokenizer = train_bpe(slices["text"].to_pylist(), vocab_size=config.vocab_size)
    tokenizer.save_pretrained(registry / "tokenizer")
    eos = tokenizer.eos_token_id
    max_length = max(r.optim.max_length for r in (config.surrogate, config.frontier, config.retrained) if r)
    encoded = tokenizer(slices["text"].to_pylist(), add_special_tokens=False)["input_ids"]
    ids = [(e + [eos])[:max_length] for e in encoded]
    holdout = [int(hashlib.sha256(d.encode()).hexdigest(), 16) % config.holdout_every == 0
               for d in slices["doc_id"].to_pylist()]
    table = pa.table({"slice": slices["slice"], "doc_id": slices["doc_id"],
                      "input_ids": pa.array(ids, pa.list_(pa.int32())), "holdout": holdout})
    tokens = work / "tokens.parquet"
    pq.write_table(table, tokens)
    per_slice = {}
    for s, row in zip(table["slice"].to_pylist(), ids):
        per_slice.setdefault(s, [0, 0])
        per_slice[s][0] += 1
        per_slice[s][1] += len(row)
    slice_hash = {}
    for s in sorted(per_slice):
        part = slices.filter(pa.compute.equal(slices["slice"], s))
        slice_hash[s] = _sha("\n".join(sorted(part["doc_id"].to_pylist())))
    facts = {"tokenizer_hash": tokenizer_hash(tokenizer), "vocab_size": len(tokenizer), "eos_id": eos,
             "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
             "slices": {s: {"documents": n, "tokens": t, "content_hash": slice_hash[s]}
                        for s, (n, t) in sorted(per_slice.items())}}
    return tokens, facts


def _base(config: TrainConfig, role: RoleConfig, tokens: Path, facts: dict, name: str, seed: int) -> dict:
    o = role.optim
    return {"name": name, "preset": role.preset, "tokens": str(tokens), "vocab_size": facts["vocab_size"],
            "eos_id": facts["eos_id"], "pad_id": facts["pad_id"], "seed": seed, "lr": o.lr,
            "weight_decay": o.weight_decay, "batch_size": o.batch_size, "warmup_steps": o.warmup_steps,
            "replay": o.replay, "cooldown_steps": o.cooldown_steps, "zero_stage": config.zero_stage,
            "use_gpu": config.use_gpu, "threads_per_worker": config.threads_per_worker}


def plan(config: TrainConfig, tokens: Path, facts: dict, registry: Path) -> list[dict]:
    """The Ray Train runs of this config, each a train_func config."""
    slices = sorted(facts["slices"])
    cutoffs = sorted(config.cutoffs or slices)
    unknown = [c for c in cutoffs if c not in slices]
    if unknown:
        raise ValueError(f"cutoffs {unknown} are not slices of {config.split}; slices are {slices}")
    if cutoffs[-1] != slices[-1]:
        cutoffs.append(slices[-1])  # the full surrogate: the corpus end
    epochs = config.surrogate.optim.epochs
    runs = []
    if config.schedule == "chronological":
        stages, previous = [], []
        for c in cutoffs:
            new = [s for s in slices if s <= c and s not in previous]
            stages.append({"cutoff": c, "new": new, "replay": list(previous), "epochs": epochs,
                           "known": previous + new, "save_to": str(registry / "vintages" / c)})
            previous = previous + new
        runs.append({**_base(config, config.surrogate, tokens, facts, "surrogates-chronological", config.seed),
                     "stages": stages})
    else:
        for c in cutoffs:
            known = [s for s in slices if s <= c]
            runs.append({**_base(config, config.surrogate, tokens, facts, f"surrogate-{c}", config.seed),
                         "stages": [{"cutoff": c, "new": known, "replay": [], "epochs": epochs, "known": known,
                                     "save_to": str(registry / "vintages" / c)}]})
    if config.frontier:
        runs.append({**_base(config, config.frontier, tokens, facts, "frontier", 1000),
                     "stages": [{"cutoff": slices[-1], "new": slices, "replay": [], "epochs": config.frontier.optim.epochs,
                                 "known": slices, "save_to": str(registry / "frontier")}]})
    if config.retrained:
        for c in config.retrained_cutoffs:
            known = [s for s in slices if s <= c]
            for seed in config.retrained.seeds:
                runs.append({**_base(config, config.retrained, tokens, facts, f"retrained-{c}-seed{seed}", 2000 + seed),
                             "stages": [{"cutoff": c, "new": known, "replay": [], "known": known,
                                         "epochs": config.retrained.optim.epochs,
                                         "save_to": str(registry / "retrained" / c / f"seed={seed}")}]})
    return runs


def train_registry(config: TrainConfig) -> dict:
    """Train every run of `config` into the registry and write its manifest; a finished run is skipped."""
    from vintage.training import fit

    registry = Path(config.output).resolve()  # workers do not share the driver's working directory
    registry.mkdir(parents=True, exist_ok=True)
    config_hash = _sha(json.dumps(asdict(config), sort_keys=True, default=str))
    manifest_path = registry / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config_hash") == config_hash and manifest.get("complete"):
            print(f"train: {registry} already holds this run (config {config_hash}); nothing to do")
            return manifest
    started = time.perf_counter()
    tokens, facts = prepare(config, registry)
    runs = plan(config, tokens, facts, registry)
    storage = registry / ".work" / "ray"
    results = {}
    for run in runs:
        targets = [Path(s["save_to"]) for s in run["stages"]]
        if all((t / "training.json").exists() for t in targets):
            print(f"train: {run['name']} already finished; skipped")
            continue
        t0 = time.perf_counter()
        result = fit(run, storage, num_workers=config.num_workers, use_gpu=config.use_gpu)
        results[run["name"]] = {"seconds": round(time.perf_counter() - t0, 1),
                                "error": str(result.error) if result.error else None}
    for run in runs:  # every model directory is self-contained: its tokenizer beside its weights
        for stage in run["stages"]:
            target = Path(stage["save_to"])
            if target.exists() and not (target / "tokenizer.json").exists():
                for item in (registry / "tokenizer").iterdir():
                    shutil.copy2(item, target / item.name)
    vintages = {}
    for run in runs:
        for stage in run["stages"]:
            info_path = Path(stage["save_to"]) / "training.json"
            if info_path.exists():
                vintages[str(Path(stage["save_to"]).relative_to(registry))] = json.loads(info_path.read_text())
    cutoffs = sorted(Path(p).name for p in vintages if p.startswith("vintages/"))
    manifest = {
        "config_hash": config_hash, "complete": all(r["error"] is None for r in results.values()),
        "cutoffs": cutoffs, "full": cutoffs[-1] if cutoffs else None, "schedule": config.schedule,
        "tokenizer_hash": facts["tokenizer_hash"], "vocab_size": facts["vocab_size"], "slices": facts["slices"],
        "models": vintages, "runs": results, "config": asdict(config),
        "seconds": round(time.perf_counter() - started, 1),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if "calibration" in old:
        manifest["calibration"] = old["calibration"]
    tmp = registry / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, manifest_path)
    shutil.rmtree(registry / ".work" / "ray", ignore_errors=True)
    return manifest
