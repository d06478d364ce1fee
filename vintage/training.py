"""Training under Ray Train with DeepSpeed: one `train_func(config)` for every role and schedule.

A run is a list of stages, each adding slices (with replay of earlier ones) and optionally branching
off a vintage: a short learning-rate cooldown on data <= the cutoff is saved as that vintage (HF format,
safetensors), then the main run restores its state and continues. The chronological schedule is one run
with a stage per cutoff; `independent` is one run per cutoff from scratch; frontier and retrained models
are one-stage runs. Checkpoints go through `ray.train.report` after every stage, so a run whose worker is
killed resumes from its last finished stage.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def _lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def _batches(docs: list[list[int]], batch: int, rng: random.Random):
    order = list(range(len(docs)))
    rng.shuffle(order)
    for start in range(0, len(order), batch):
        yield [docs[i] for i in order[start:start + batch]]


def _collate(rows: list[list[int]], pad: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def _mean_loss(engine, docs: list[list[int]], pad: int, batch: int, device) -> float:
    import torch

    if not docs:
        return float("nan")
    total, count = 0.0, 0
    engine.module.eval()
    with torch.no_grad():
        for start in range(0, len(docs), batch):
            ids, mask, labels = _collate(docs[start:start + batch], pad)
            out = engine.module(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            tokens = int((labels[:, 1:] != -100).sum())
            total += float(out.loss) * tokens
            count += tokens
    engine.module.train()
    return total / max(1, count)


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; everything it needs is in `config` (see `run_config`)."""
    import deepspeed
    import pyarrow.parquet as pq
    import ray.train
    import torch

    from vintage.presets import build_model

    torch.set_num_threads(config["threads_per_worker"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_cuda = config["use_gpu"] and torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", ctx.get_local_rank()) if use_cuda else torch.device("cpu")
    if config.get("pid_file") and rank == world - 1:
        Path(config["pid_file"]).write_text(str(os.getpid()))  # lets the fault-tolerance test kill a worker

    table = pq.read_table(config["tokens"], columns=["slice", "input_ids", "holdout"])
    by_slice: dict[str, list[list[int]]] = {}
    holdout: dict[str, list[list[int]]] = {}
    for s, ids, held in zip(table["slice"].to_pylist(), table["input_ids"].to_pylist(), table["holdout"].to_pylist()):
        (holdout if held else by_slice).setdefault(s, []).append(ids)

    model = build_model(config["preset"], config["vocab_size"], seed=config["seed"],
                        eos_token_id=config["eos_id"], pad_token_id=config["pad_id"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"],
                                  betas=(0.9, 0.95))
    bf16 = bool(config.get("bf16")) and use_cuda and torch.cuda.is_bf16_supported()
    ds_config = {"train_micro_batch_size_per_gpu": config["batch_size"], "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": config["zero_stage"]}, "bf16": {"enabled": bf16},
                 "gradient_clipping": 1.0, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    state = {"stage": 0, "step": 0, "tokens": 0, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(config["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            engine.load_checkpoint(directory, tag="main")
            state = json.loads((Path(directory) / "state.json").read_text())

    pad = config["pad_id"]
    batch = config["batch_size"]
    started = time.perf_counter()

    def step_on(rows: list[list[int]], lr: float) -> float:
        shard = rows[rank::world] or rows[:1]
        ids, mask, labels = _collate(shard, pad)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        loss = engine(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        engine.backward(loss)
        engine.step()
        state["tokens"] += int(mask.sum()) * world
        return float(loss)

    stages = config["stages"]
    for index in range(state["stage"], len(stages)):
        stage = stages[index]
        rng = random.Random(config["seed"] * 1000 + index)
        new = [d for s in stage["new"] for d in by_slice.get(s, [])]
        old = [d for s in stage["replay"] for d in by_slice.get(s, [])]
        replay = rng.sample(old, min(len(old), int(round(config["replay"] * len(new))))) if old else []
        docs = new + replay
        loss = float("nan")
        for epoch in range(stage["epochs"]):
            for rows in _batches(docs, batch * world, rng):
                loss = step_on(rows, _lr_at(state["step"], config["lr"], config["warmup_steps"]))
                state["step"] += 1
            if rank == 0:
                elapsed = time.perf_counter() - started
                print(f"[{config['name']}] stage {index + 1}/{len(stages)} ({stage.get('cutoff')}) epoch "
                      f"{epoch + 1}/{stage['epochs']} step {state['step']} loss {loss:.3f} "
                      f"{state['tokens'] / max(elapsed, 1e-9):,.0f} tok/s", flush=True)
        record = {"stage": index, "cutoff": stage.get("cutoff"), "train_loss": loss, "step": state["step"],
                  "tokens": state["tokens"]}
        if stage.get("save_to"):
            record.update(_save_branch(engine, stage, config, by_slice, holdout, rank, world, device, step_on, state))
        state["history"].append(record)
        state["stage"] = index + 1
        with tempfile.TemporaryDirectory() as directory:
            engine.save_checkpoint(directory, tag="main")  # collective: every rank writes its part
            if rank == 0:
                (Path(directory) / "state.json").write_text(json.dumps(state))
            ray.train.report({k: v for k, v in record.items() if isinstance(v, (int, float))},
                             checkpoint=ray.train.Checkpoint.from_directory(directory))


def _save_branch(engine, stage, config, by_slice, holdout, rank, world, device, step_on, state) -> dict:
    """Cooldown on data <= the cutoff, save the weights as a vintage, then restore the main run."""
    known = [d for s in stage["known"] for d in by_slice.get(s, [])]
    held = [d for s in stage["known"] for d in holdout.get(s, [])]
    rng = random.Random(config["seed"] * 7919 + state["stage"])
    steps = config["cooldown_steps"]
    with tempfile.TemporaryDirectory() as branch:
        engine.save_checkpoint(branch, tag="branch")
        main_step, main_tokens = state["step"], state["tokens"]
        loss = float("nan")
        done = 0
        while done < steps:
            for rows in _batches(known, config["batch_size"] * world, rng):
                loss = step_on(rows, config["lr"] * (1 - done / steps))
                done += 1
                if done >= steps:
                    break
        validation = _mean_loss(engine, held, config["pad_id"], 64, device)
        if rank == 0:
            target = Path(stage["save_to"])
            staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            engine.module.save_pretrained(staging, safe_serialization=True)
            info = {"cutoff": stage.get("cutoff"), "cooldown_steps": steps, "final_train_loss": loss,
                    "validation_loss": validation, "tokens_seen": state["tokens"], "steps": state["step"],
                    "slices": stage["known"]}
            (staging / "training.json").write_text(json.dumps(info, indent=2))
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
            print(f"[{config['name']}] saved {target} (validation loss {validation:.3f})", flush=True)
        engine.load_checkpoint(branch, tag="branch")
        state["step"], state["tokens"] = main_step, main_tokens
    return {"validation_loss": validation, "cooldown_loss": loss}


def fit(config: dict[str, Any], storage: Path, num_workers: int = 1, use_gpu: bool = False):
    """Run `train_func` under a TorchTrainer; returns the Ray Train result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_func, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(name=config["name"], storage_path=str(storage.resolve()),
                                       failure_config=ray.train.FailureConfig(max_failures=config.get("max_failures", 2)),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()

