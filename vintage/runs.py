"""A training run: from a split to a model registry (tokenizer, surrogate vintages, frontier, retrained gold).
Plans the runs (vintage/plan.py), trains those not finished, `parallel_runs` at a time, continuing each
from its last whole checkpoint (vintage/resume.py), writes the manifest, then finishes the registry
(vintage/post_training.py).

    python -m pipelines.train --config configs/train/tiny.yaml
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from corpora.files import short_hash, staged_directory, write_text_atomically
from vintage.plan import plan
from vintage.post_training import finish_registry
from vintage.prepare import prepare
from vintage.resume import resume_point, stages_done
from vintage.run_spec import WINDOWS_FORMAT, RunSpec
from vintage.train_config import TrainConfig, check_external_frontier
from vintage.watchdog import Watchdog, mtime, ray_resources


def _fit_all(runs: list[RunSpec], storage: Path, config: TrainConfig, registry: Path,
             pid_dir: Path | None = None) -> dict:
    """Run the Ray Train runs, `parallel_runs` at a time (each TorchTrainer.fit blocks its thread)."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from vintage.training import fit

    if runs and not ray.is_initialized():
        # started here, not by Ray Train's own auto-init: the cluster that auto-init starts went away once the
        # last TorchTrainer.fit returned, and 60 s later the driver aborted ("Failed to connect to GCS") in
        # whatever came next (the fidelity bench, twice). No address: local, or the cluster under `ray job submit`
        ray.init()

    def one(run: RunSpec) -> tuple[str, dict]:
        if pid_dir is not None:
            run = replace(run, pid_file=str(Path(pid_dir) / f"{run.name}.pid"))
        kept = registry / ".checkpoints" / run.name
        resume = resume_point(run, storage, kept)
        if resume is not None:
            stage = json.loads((resume / "state.json").read_text())["stage"]
            print(f"train: {run.name} continues after stage {stage}/{len(run.stages)} from {resume}", flush=True)
            run = replace(run, resume_from=str(resume))
        heartbeat = registry / ".work" / "heartbeat" / run.name
        heartbeat.unlink(missing_ok=True)
        run = replace(run, heartbeat=str(heartbeat))
        t0 = time.perf_counter()
        try:
            with Watchdog(f"train {run.name}", lambda: _waiting_on(run, heartbeat),
                          last_progress=lambda: mtime(heartbeat)):
                result = fit(run, storage, num_workers=config.num_workers, use_gpu=config.use_gpu)
            error = str(result.error) if result.error else None
            if error is None and result.checkpoint is not None:  # kept: a later run with more stages continues it
                with staged_directory(kept) as staging:
                    shutil.copytree(result.checkpoint.path, staging)
        except Exception as err:  # Ray Train raises once the run's retries are spent; the manifest records it
            error = f"{type(err).__name__}: {err}"
        if error:
            print(f"train: {run.name} failed: {error}", flush=True)
        return run.name, {"seconds": round(time.perf_counter() - t0, 1), "error": error}

    ordered = sorted(runs, key=lambda r: -_cost(r))  # longest first packs the pool best
    with ThreadPoolExecutor(max_workers=max(1, config.parallel_runs)) as pool:
        return dict(pool.map(one, ordered))


def _waiting_on(run: RunSpec, heartbeat: Path) -> str:
    """What a training run that makes no progress may be waiting on: its workers' start (CPUs, a DeepSpeed build
    lock) or their steps."""
    from vintage.extension_locks import extensions_root

    started = "no step yet" if mtime(heartbeat) is None else "its last step is that long ago"
    parts = [f"the Ray Train workers of {run.name} ({started})", ray_resources()]
    locks = sorted(str(p) for p in extensions_root().rglob("lock"))
    if locks:
        parts.append(f"torch extension build locks {locks} (a build in progress, or one a killed start left: "
                     f"the next start removes it)")
    return "; ".join(parts)


def _cost(run: RunSpec) -> float:
    from vintage.presets import get_preset

    p = get_preset(run.preset)
    return p.n_layer * p.n_embd ** 2 * sum(s.epochs * len(s.new) for s in run.stages)


def split_identity(split: str | Path) -> str | None:
    """What a split holds, from its manifest: its config and its input's fingerprint (a split rewritten from a
    corrected corpus differs); None for a directory without one (its slices are then read and hashed)."""
    path = Path(split) / "manifest.json"
    if not path.exists():
        return None
    written = json.loads(path.read_text())
    return short_hash(json.dumps([written.get("config_hash"), written.get("input_fingerprint")]))


def train_registry(config: TrainConfig, pid_dir: Path | None = None) -> dict:
    """Train every run of `config` into the registry and write its manifest; a finished run is skipped.
    `pid_dir` (fault-injection tests): each run's last worker writes its pid there."""
    for key in ("split", "output"):
        if not getattr(config, key):
            raise ValueError(f"train config: `{key}` is required (a directory)")
    external = check_external_frontier(config)  # your own frontier: a bad one fails before anything is written
    registry = Path(config.output).resolve()  # workers do not share the driver's working directory
    registry.mkdir(parents=True, exist_ok=True)
    # the windows' format is part of what a config trains: a registry of cut documents is not this one
    config_hash = short_hash(json.dumps(asdict(config), sort_keys=True, default=str) + WINDOWS_FORMAT)
    identity = split_identity(config.split)
    manifest_path = registry / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("config_hash") == config_hash and manifest.get("complete")
                and manifest.get("split_identity") == identity is not None):
            print(f"train: {registry} already holds this run (config {config_hash}); nothing to train")
            return finish_registry(config, registry)
    started = time.perf_counter()
    trained = config  # what is trained here: with your own frontier, the surrogates on its tokenizer
    if external is not None:
        trained = replace(config, frontier=None, tokenizer=external.path)
    tokens, facts = prepare(trained, registry)
    facts["probe_rows"] = json.loads(Path(facts["probes"]).read_text())
    runs = plan(trained, tokens, facts, registry)
    storage = registry / ".work" / "ray"
    todo = []
    for run in runs:
        done = stages_done(run)
        if done == len(run.stages):
            print(f"train: {run.name} already finished; skipped")
        else:
            todo.append(run)
    results = _fit_all(todo, storage, trained, registry, pid_dir)
    for run in runs:  # every model directory is self-contained: its tokenizer beside its weights
        for stage in run.stages:
            target = Path(stage.save_to)
            if target.exists() and not (target / "tokenizer.json").exists():
                for item in (registry / "tokenizer").iterdir():
                    shutil.copy2(item, target / item.name)
    vintages = {}
    for run in runs:  # only models trained by this config's stages (a stale one from an older config is not)
        for stage in run.stages[: stages_done(run)]:
            info_path = Path(stage.save_to) / "training.json"
            vintages[str(Path(stage.save_to).relative_to(registry))] = json.loads(info_path.read_text())
    cutoffs = sorted(Path(p).name for p in vintages if p.startswith("vintages/"))
    if external is not None:
        from vintage.frontier import check_surrogates

        check_surrogates(external, facts["tokenizer_hash"], [registry / p for p in vintages])
    manifest = {
        "config_hash": config_hash, "split_identity": identity,
        "complete": all(r["error"] is None for r in results.values())
                    and all(stages_done(r) == len(r.stages) for r in runs),
        "cutoffs": cutoffs, "full": cutoffs[-1] if cutoffs else None, "schedule": config.schedule,
        "tokenizer_hash": facts["tokenizer_hash"], "vocab_size": facts["vocab_size"], "window": facts["window"],
        "slices": facts["slices"],
        **_compact_entry(runs),
        "models": vintages, "runs": results, "config": asdict(config),
        **({"external_frontier": external.manifest_entry()} if external is not None else {}),
        "seconds": round(time.perf_counter() - started, 1),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["runs"] = {**old.get("runs", {}), **results}
    for key in ("calibration", "temperatures"):  # evidence carries its models' fingerprints
        if key in old:
            manifest[key] = old[key]
    write_text_atomically(manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
    if manifest["complete"]:
        shutil.rmtree(registry / ".work" / "ray", ignore_errors=True)
        manifest = finish_registry(config, registry)
    else:
        failed = {n: r["error"] for n, r in results.items() if r["error"]}
        print(f"train: incomplete registry {registry}; failed runs: {failed}. A rerun continues from their "
              f"last checkpoints.", flush=True)
    return manifest


def _compact_entry(runs) -> dict:
    """The surrogates' compact vocabulary (vintage/compact.py) as the manifest records it; {} without one."""
    ids = next((run.vocabulary for run in runs if run.vocabulary), None)
    return {} if ids is None else {"compact_vocabulary": {"ids": len(ids), "rows": len(ids) + 1}}
