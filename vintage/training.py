"""Training under Ray Train with DeepSpeed: one `train_func` for every role and schedule.

A run is a list of stages, each adding slices (with replay of earlier ones) and optionally branching
off a vintage: a short learning-rate cooldown on data <= the cutoff is saved as that vintage (HF format,
safetensors), then the main run restores its state and continues (or, with `after_cooldown: continue`,
continues from the cooled vintage and warms up again). The chronological schedule is one run
with a stage per cutoff; `independent` is one run per cutoff from scratch; frontier and retrained models
are one-stage runs. Checkpoints go through `ray.train.report` after every stage, so a run whose worker is
killed resumes from its last finished stage.

Memorisation is the point of these models (RESEARCH.md exp. 3): when the run is given fact probes, each
stage trains until the model answers the facts it has seen with accuracy >= `memorise` (at most `epochs`
epochs), rather than for a fixed time.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from corpora.files import staged_directory
from vintage.compact import CompactVocabulary
from vintage.extension_locks import clear_stale_locks
from vintage.run_spec import RunSpec, Stage
from vintage.schedule import _batches, _epoch_documents, _lr_at, _shards, _stage_size, shard_weight, step_loss
from vintage.train_metrics import _mean_loss, _Progress, fact_accuracy, peak_memory_mib, say
from vintage.watchdog import touch


def train_func(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; everything it needs is the RunSpec `loop_config["run"]`
    (vintage/run_spec.py, planned by vintage/plan.py)."""
    import deepspeed
    import pyarrow.parquet as pq
    import ray.train
    import torch

    from vintage.loss import causal_lm_loss
    from vintage.precision import autocast
    from vintage.presets import build_model
    from vintage.windows import packed_batch

    run: RunSpec = loop_config["run"]
    torch.set_num_threads(run.threads_per_worker)
    clear_stale_locks(say=say)  # before DeepSpeed loads its ops: a stale build lock would hang it, silently
    # a compact surrogate (vintage/compact.py) starts as the whole-vocabulary model restricted to the rows it
    # keeps, then reads and predicts compact ids only
    vocabulary = None if run.vocabulary is None else CompactVocabulary(tuple(run.vocabulary), run.vocab_size)
    model = build_model(run.preset, run.vocab_size, seed=run.seed, eos_token_id=run.eos_id, pad_token_id=run.pad_id,
                        rows=None if vocabulary is None else vocabulary.source_rows())
    if vocabulary is not None:
        run = compact_run(run, vocabulary)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_cuda = run.use_gpu and torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", ctx.get_local_rank()) if use_cuda else torch.device("cpu")
    if run.pid_file and rank == world - 1:
        Path(run.pid_file).write_text(str(os.getpid()))  # lets the fault-tolerance test kill a worker

    table = pq.read_table(run.tokens, columns=["slice", "input_ids", "holdout"])
    by_slice: dict[str, list[list[int]]] = {}
    holdout: dict[str, list[list[int]]] = {}
    rows = table["input_ids"].to_pylist()
    if vocabulary is not None:
        rows = vocabulary.to_compact(rows)
    for s, ids, held in zip(table["slice"].to_pylist(), rows, table["holdout"].to_pylist()):
        (holdout if held else by_slice).setdefault(s, []).append(ids)

    # fused: one kernel over all parameters (the optimiser step of surrogate-small on 2 workers: 4.9 ms, 7.9 with
    # the per-tensor loop)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay,
                                  betas=(0.9, 0.95), fused=True)
    in_bf16 = compute_dtype(run, device) == "bfloat16"
    bf16 = in_bf16 and use_cuda  # DeepSpeed's bf16 mode (a GPU)
    # a CPU computes the forward under autocast: weights, optimizer state and the loss's log-softmax stay float32
    cpu_autocast = autocast(torch.bfloat16 if in_bf16 and not use_cuda else torch.float32, device)
    ds_config = {"train_micro_batch_size_per_gpu": run.batch_size, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": run.zero_stage}, "bf16": {"enabled": bf16},
                 "gradient_clipping": 1.0, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    state = {"stage": 0, "step": 0, "tokens": 0, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and run.resume_from:
        checkpoint = ray.train.Checkpoint(run.resume_from)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            engine.load_checkpoint(directory, tag="main")
            state = json.loads((Path(directory) / "state.json").read_text())

    pad, eos = run.pad_id, run.eos_id
    heartbeat = Path(run.heartbeat) if run.heartbeat and rank == 0 else None
    batch = run.batch_size

    def step_on(rows: list[list[int]], lr: float) -> float:
        """One step over `rows`; returns this worker's share of the step's loss (`step_loss` adds them up)."""
        shard = _shards(rows, world)[rank]
        ids, positions, labels = packed_batch(shard or rows[:1], pad, eos)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        # the module itself, not the engine's forward: ZeRO 0-2 keep whole parameters, and the loss runs the
        # head only on target positions (vintage/loss.py: 1.4x the steps per second at 2k and at 49k tokens; bench/vocab.py)
        with cpu_autocast:
            loss = causal_lm_loss(engine.module, ids.to(device), None, labels.to(device), positions.to(device))
        if world > 1:
            loss = loss * shard_weight(shard, rows, world, eos)
        engine.backward(loss)
        engine.step()
        state["tokens"] += sum(len(r) for r in rows)  # the step's rows on every rank together
        return float(loss.detach())

    stages = run.stages
    after_cooldown = run.after_cooldown  # what a chain does once a vintage is saved
    target = run.memorise or 0.0
    planned = sum(stage.epochs * _stage_size(stage, by_slice, run.replay) for stage in stages[state["stage"]:])
    progress = _Progress(run.name, planned, upper_bound=bool(target)) if rank == 0 else None
    for index in range(state["stage"], len(stages)):
        stage = stages[index]
        rng = random.Random(run.seed * 1000 + index)
        new = [d for s in stage.new for d in by_slice.get(s, [])]
        old = [d for s in stage.replay for d in by_slice.get(s, [])]
        epochs_of = _epoch_documents(new, old, run.replay, run.replay_sampling == "epoch",
                                     rng)
        docs = next(epochs_of)
        probes = stage.probes
        loss, share, accuracy, epochs_run = float("nan"), float("nan"), float("nan"), 0
        stage_started = time.perf_counter()
        # after a kept cooldown the rate is ~0: a later stage warms up again, from its own first step
        warm_from = state["step"] if after_cooldown == "continue" else 0
        for epoch in range(stage.epochs):
            if epoch:
                docs = next(epochs_of)
            for rows in _batches(docs, batch * world, rng):
                share = step_on(rows, _lr_at(state["step"] - warm_from, run.lr, run.warmup_steps))
                state["step"] += 1
                if heartbeat:
                    touch(heartbeat)
                if world == 1:  # with several workers the lines in between show the last epoch's loss
                    loss = share
                if progress:
                    progress.line(f"stage {index + 1}/{len(stages)} ({stage.cutoff}) epoch {epoch + 1}/"
                                  f"{stage.epochs} loss {loss:.3f}", state, len(rows))
            loss = step_loss(share, world, device)  # the epoch's last step, over every worker
            epochs_run += 1
            if probes and target:
                accuracy = fact_accuracy(engine.module, probes, pad, device, rank=rank, world=world)
            if progress:
                facts = f" facts {accuracy:.2f}/{target:.2f}" if probes and target else ""
                progress.line(f"stage {index + 1}/{len(stages)} ({stage.cutoff}) epoch {epoch + 1}/"
                              f"{stage.epochs} loss {loss:.3f}{facts}", state, 0, force=True)
            if probes and target and accuracy >= target:
                if progress:
                    progress.total_docs -= (stage.epochs - epochs_run) * len(docs)
                break
        # main-run steps only: no start-up, cooldown branches or saves
        state["train_seconds"] = state.get("train_seconds", 0.0) + time.perf_counter() - stage_started
        record = {"stage": index, "cutoff": stage.cutoff, "train_loss": loss, "step": state["step"],
                  "tokens": state["tokens"], "epochs": epochs_run, "fact_accuracy": accuracy,
                  "peak_memory_mib": peak_memory_mib()}
        if stage.save_to:
            record.update(_save_branch(engine, stage, run, by_slice, holdout, rank, world, device, step_on, state,
                                       after_cooldown, vocabulary))
        state["history"].append(record)
        state["stage"] = index + 1
        state["stage_hashes"] = [s.stage_hash for s in stages[: index + 1]]
        with tempfile.TemporaryDirectory() as directory:
            engine.save_checkpoint(directory, tag="main")  # collective: every rank writes its part
            if rank == 0:
                # the files beside it and their sizes: a crash while the checkpoint is persisted can leave
                # state.json next to a truncated file, which a rerun must not resume from (runs.resume_point)
                files = {str(f.relative_to(directory)): f.stat().st_size for f in Path(directory).rglob("*") if f.is_file()}
                (Path(directory) / "state.json").write_text(json.dumps({**state, "files": files}))
            ray.train.report({k: v for k, v in record.items() if isinstance(v, (int, float))},
                             checkpoint=ray.train.Checkpoint.from_directory(directory))


def compact_run(run: RunSpec, vocabulary: CompactVocabulary) -> RunSpec:
    """`run` as its compact model sees it: its vocabulary's rows, the specials' and the probes' compact ids."""
    def probe(p: list) -> list:
        prompt, choices, answer = p
        return [vocabulary.to_compact([prompt])[0], vocabulary.to_compact(choices), answer]

    table = vocabulary.table()
    stages = [dataclasses.replace(s, probes=[probe(p) for p in s.probes]) for s in run.stages]
    return dataclasses.replace(run, vocab_size=vocabulary.rows, eos_id=int(table[run.eos_id]),
                               pad_id=int(table[run.pad_id]), stages=stages)


def _save_branch(engine, stage: Stage, run: RunSpec, by_slice, holdout, rank, world, device, step_on, state,
                 after_cooldown: str, vocabulary: CompactVocabulary | None = None) -> dict:
    """Cooldown on data <= the cutoff, save the weights as a vintage, then restore the main run (with
    `after_cooldown: continue`, keep the cooled weights and their steps and tokens instead: nothing to
    restore, so no branch point is written)."""
    known = [d for s in stage.known for d in by_slice.get(s, [])]
    held = [d for s in stage.known for d in holdout.get(s, [])]
    import torch.distributed as dist

    rng = random.Random(run.seed * 7919 + state["stage"])  # state["stage"] is this stage's index
    steps = run.cooldown_steps
    restore = after_cooldown == "restore"
    own = branch = None
    if restore:
        # DeepSpeed reads a checkpoint back from one directory on every rank (rank 0 writes the model, each
        # rank its optimizer shard), so the branch point lives in the run's shared scratch directory
        if run.scratch is None and world > 1:
            raise ValueError("a multi-worker run needs RunSpec.scratch, a directory every worker can read")
        own = None if run.scratch else tempfile.mkdtemp(prefix="vintage-branch-")  # one worker: local is fine
        branch = Path(run.scratch or own) / f"stage-{state['stage']}"
        if rank == 0:
            shutil.rmtree(branch, ignore_errors=True)
            branch.mkdir(parents=True)
        if world > 1:
            dist.barrier()
    try:
        if branch:
            engine.save_checkpoint(str(branch), tag="branch")
        main_step, main_tokens = state["step"], state["tokens"]
        loss = float("nan")
        done = 0
        while done < steps:
            for rows in _batches(known, run.batch_size * world, rng):
                loss = step_on(rows, run.lr * (1 - done / steps))
                done += 1
                if done >= steps:
                    break
        loss = step_loss(loss, world, device)
        cooldown_tokens = state["tokens"] - main_tokens
        validation = _mean_loss(engine, held, run.pad_id, run.eos_id, 64, device)
        probes = stage.probes
        accuracy = fact_accuracy(engine.module, probes, run.pad_id, device, rank=rank,
                                 world=world) if probes else None
        if rank == 0:
            target = Path(stage.save_to)
            # tokens_seen: what these weights were trained on, the main run's tokens up to this cutoff and
            # this branch's cooldown (cooldown_tokens of them; the main run continues without them, or, with
            # after_cooldown: continue, with them: a later vintage's tokens_seen counts every earlier cooldown)
            info = {"cutoff": stage.cutoff, "cooldown_steps": steps, "final_train_loss": loss,
                    "after_cooldown": after_cooldown,
                    "validation_loss": validation, "tokens_seen": state["tokens"], "steps": state["step"],
                    "cooldown_tokens": cooldown_tokens,
                    # every token of the cutoff's documents is in some window (vintage/windows.py): one pass over
                    # the windows reads them all, with an EOS after each document
                    "tokens_per_epoch": sum(len(w) for w in known),
                    "corpus_tokens": sum(run.corpus_tokens.get(s, 0) for s in stage.known),
                    "window": run.window, "dtype": compute_dtype(run, device),
                    "slices": stage.known, "fact_accuracy": accuracy,
                    "output_rows": run.vocab_size, "facts": len(probes),
                    "peak_memory_mib": round(peak_memory_mib(), 1), "stage_hash": stage.stage_hash,
                    "train_seconds": round(state.get("train_seconds", 0.0), 2), "world_size": world}
            with staged_directory(target) as staging:
                engine.module.save_pretrained(staging, safe_serialization=True)
                if vocabulary is not None:
                    vocabulary.save(staging)
                (staging / "training.json").write_text(json.dumps(info, indent=2))
            facts = f", facts seen {accuracy:.2f}" if accuracy is not None else ""
            say(f"[{run.name}] saved {target} (validation loss {validation:.3f}{facts})")
        if branch:
            engine.load_checkpoint(str(branch), tag="branch")
            state["step"], state["tokens"] = main_step, main_tokens
        else:  # the cooldown is part of the main run now (its tokens are already counted)
            state["step"] += done
    finally:
        if world > 1:
            dist.barrier()
        if rank == 0 and branch:
            shutil.rmtree(own or branch, ignore_errors=True)
    return {"validation_loss": validation, "cooldown_loss": loss}


def compute_dtype(run: RunSpec, device) -> str:
    """What `run` computes in on `device`: bfloat16 (autocast on a CPU, DeepSpeed's bf16 mode on a GPU that has it)
    or float32."""
    import torch

    if not run.bf16 or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return "float32"
    return "bfloat16"


def fit(run: RunSpec, storage: Path, num_workers: int = 1, use_gpu: bool = False):
    """Run `train_func` under a TorchTrainer; returns the Ray Train result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_func, train_loop_config={"run": run},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(name=run.name, storage_path=str(storage.resolve()),
                                       failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()

