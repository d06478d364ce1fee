"""A training config planned into Ray Train runs (vintage/run_spec.py), with the hashes that make a saved
vintage reusable and a grown run continue from its last matching stage."""
from __future__ import annotations

import json
from pathlib import Path

from corpora.files import short_hash
from corpora.timeline import known_by
from vintage.compact import CompactVocabulary, worth_compacting
from vintage.precision import trains_in_bf16
from vintage.presets import get_preset
from vintage.run_spec import WINDOWS_FORMAT, RunSpec, Stage
from vintage.train_config import RoleConfig, TrainConfig


def _probes_known_by(facts: dict, cutoff: str) -> list[list]:
    """Probes public by the end of the `cutoff` day (the split's rule), as [prompt, choices, answer]."""
    return [[p["prompt"], p["choices"], p["answer"]] for p in facts["probe_rows"] if known_by(p["known_at"], cutoff)]


def _run(config: TrainConfig, role: RoleConfig, tokens: Path, facts: dict, name: str, seed: int,
         stages: list[Stage], **extra) -> RunSpec:
    o = role.optim
    return RunSpec(name=name, preset=role.preset, tokens=str(tokens), vocab_size=facts["vocab_size"],
                   eos_id=facts["eos_id"], pad_id=facts["pad_id"], seed=seed, lr=o.lr, weight_decay=o.weight_decay,
                   batch_size=o.batch_size, warmup_steps=o.warmup_steps, replay=o.replay,
                   cooldown_steps=o.cooldown_steps, zero_stage=config.zero_stage, use_gpu=config.use_gpu,
                   bf16=trains_in_bf16(config.dtype, get_preset(role.preset).n_embd, config.use_gpu),
                   threads_per_worker=config.threads_per_worker,
                   memorise=config.memorise if config.probes else 0.0, max_failures=config.max_failures,
                   window=facts["window"], corpus_tokens={s: e["tokens"] for s, e in facts["slices"].items()},
                   stages=stages, **extra)


def _with_probes(run: RunSpec, facts: dict) -> RunSpec:
    """Each stage's probes (the facts public by its cutoff) and hashes of what makes a run, and each prefix
    of its stages, the same: settings, tokenizer, stages so far and the content of the slices they read.
    A stage whose hash matches a saved vintage's is not trained again; a run whose first k stages match
    continues from the checkpoint after stage k (a scheduled run that adds a cutoff trains one stage)."""
    for stage in run.stages:
        stage.probes = _probes_known_by(facts, stage.cutoff) if facts["probe_rows"] else []
    settings = run.settings_json()
    for i, stage in enumerate(run.stages):
        # where a stage is saved is not what it learns: a registry moved or copied elsewhere keeps its hashes
        prefix = [s.learned() for s in run.stages[: i + 1]]
        read = {s: facts["slices"][s]["content_hash"] for p in prefix for s in p["known"] if s in facts["slices"]}
        stage.stage_hash = short_hash(settings + WINDOWS_FORMAT + facts["tokenizer_hash"]
                                      + json.dumps([prefix, read], sort_keys=True))
    run.run_hash = run.stages[-1].stage_hash
    return run


def plan(config: TrainConfig, tokens: Path, facts: dict, registry: Path) -> list[RunSpec]:
    """The Ray Train runs of this config."""
    slices = sorted(facts["slices"])
    cutoffs = sorted(config.cutoffs or slices)
    unknown = [c for c in cutoffs if c not in slices]
    if unknown:
        raise ValueError(f"cutoffs {unknown} are not slices of {config.split}; slices are {slices}")
    if cutoffs[-1] != slices[-1]:
        cutoffs.append(slices[-1])  # the full surrogate: the corpus end
    epochs = config.surrogate.optim.epochs
    runs = []
    # the surrogates only: the frontier and the gold are trained (or given) over the whole vocabulary
    surrogate_vocabulary = None
    if "used_ids" in facts:  # prepare() lists them
        compact = CompactVocabulary(tuple(facts["used_ids"]), facts["vocab_size"])
        surrogate_vocabulary = list(compact.ids) if worth_compacting(config.compact_vocabulary, compact) else None
    if config.schedule == "chronological":
        stages, previous = [], []
        later = config.surrogate.optim.continue_epochs
        if later is not None and later < 1:
            raise ValueError(f"surrogate.optim.continue_epochs: expected a positive number of epochs, got {later}")
        later = later or epochs
        for c in cutoffs:
            new = [s for s in slices if s <= c and s not in previous]
            stages.append(Stage(cutoff=c, new=new, replay=list(previous), epochs=later if previous else epochs,
                                known=previous + new, save_to=str(registry / "vintages" / c)))
            previous = previous + new
        runs.append(_run(config, config.surrogate, tokens, facts, "surrogates-chronological", config.seed, stages,
                         replay_sampling=config.surrogate.optim.replay_sampling,
                         after_cooldown=config.surrogate.optim.after_cooldown, vocabulary=surrogate_vocabulary))
    else:
        for c in cutoffs:
            known = [s for s in slices if s <= c]
            runs.append(_run(config, config.surrogate, tokens, facts, f"surrogate-{c}", config.seed,
                             [Stage(cutoff=c, new=known, replay=[], epochs=epochs, known=known,
                                    save_to=str(registry / "vintages" / c))],
                             vocabulary=surrogate_vocabulary))
    if config.frontier:
        runs.append(_run(config, config.frontier, tokens, facts, "frontier", 1000,
                         [Stage(cutoff=slices[-1], new=slices, replay=[], epochs=config.frontier.optim.epochs,
                                known=slices, save_to=str(registry / "frontier"))]))
    if config.retrained:
        for c in config.retrained_cutoffs:
            known = [s for s in slices if s <= c]
            for seed in config.retrained.seeds:
                runs.append(_run(config, config.retrained, tokens, facts, f"retrained-{c}-seed{seed}", 2000 + seed,
                                 [Stage(cutoff=c, new=known, replay=[], known=known,
                                        epochs=config.retrained.optim.epochs,
                                        save_to=str(registry / "retrained" / c / f"seed={seed}"))]))
    for run in runs:  # where a run's workers share files (the cooldown branch point)
        run.scratch = str(registry / ".work" / "branches" / run.name)
    return [_with_probes(r, facts) for r in runs]
