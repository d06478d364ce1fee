"""Training under Ray Train with DeepSpeed: one `train_func(config)` for every role and schedule.

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

import json
import os
import random
import resource
import sys
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from corpora.files import replace_directory


def _lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def _batches(docs: list[list[int]], batch: int, rng: random.Random):
    order = list(range(len(docs)))
    rng.shuffle(order)
    for start in range(0, len(order), batch):
        yield [docs[i] for i in order[start:start + batch]]


def _shards(rows: list[list[int]], world: int) -> list[list[list[int]]]:
    """A step's documents split over `world` workers so that each computes about the same padded size
    (documents x its longest one): the longest documents go together, fewer of them, to one worker, the
    short ones, more of them, to another. Dealing them out in turn instead pads every worker's share to
    about the longest document of the step (on the embedded worlds 45% of the positions were padding).
    Contiguous runs of the documents sorted by length, the largest padded size as small as it can be;
    every rank computes the same split. A worker gets no documents only if there are fewer than `world`."""
    if world == 1:
        return [rows]
    order = sorted(rows, key=len, reverse=True)  # stable: equal lengths keep their order on every rank

    def runs(budget: int) -> list[list[list[int]]]:
        out, start = [], 0
        while start < len(order):
            take = max(1, budget // max(1, len(order[start])))
            out.append(order[start:start + take])
            start += take
        return out

    low, high = 1, max(1, len(order) * len(order[0]) if order else 1)
    while low < high:  # the smallest budget whose greedy split needs at most `world` workers
        middle = (low + high) // 2
        if len(runs(middle)) <= world:
            high = middle
        else:
            low = middle + 1
    shards = runs(low) if order else []
    while len(shards) < world and any(len(s) > 1 for s in shards):  # halving a run never enlarges the largest
        i = max(range(len(shards)), key=lambda k: len(shards[k]))
        shards[i:i + 1] = [shards[i][: len(shards[i]) // 2], shards[i][len(shards[i]) // 2:]]
    return shards + [[] for _ in range(world - len(shards))]


def shard_weight(shard: list[list[int]], rows: list[list[int]], world: int, eos: int | None = None) -> float:
    """What a worker's mean loss over `shard` is multiplied by so that the gradient averaged over the
    `world` workers is the token mean over the whole step's `rows`, as on one worker: its share of the
    step's predicted tokens, times `world` (an empty shard runs one document at weight 0, since every rank
    must join the all-reduce). With `eos`, rows are packed windows (`vintage.windows.packed_batch`)."""
    from vintage.windows import window_targets

    def targets(docs):
        return sum(window_targets(d, eos) for d in docs)

    return targets(shard) * world / max(1, targets(rows))


def step_loss(share: float, world: int, device) -> float:
    """A step's loss (the token mean over the whole step) from every worker's share of it, its mean loss x
    `shard_weight`: the shares add up to `world` x the mean. A collective on several workers: every rank
    calls it after the same step (once an epoch: an all-reduce every step cost ~3% of a small model's step)."""
    if world == 1:
        return share
    import torch
    import torch.distributed as dist

    total = torch.tensor([share], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total[0]) / world


def _epoch_documents(new: list, old: list, ratio: float, per_epoch: bool, rng: random.Random):
    """The documents of each epoch of a stage: the new ones plus a replay sample of round(ratio x new) old
    ones (capped by the old data), drawn afresh every epoch (`per_epoch`: over a stage the replay covers the
    old data) or once for the whole stage (the same part of it every epoch)."""
    k = min(len(old), int(round(ratio * len(new))))
    docs = new + rng.sample(old, k)
    while True:
        yield docs
        if per_epoch:
            docs = new + rng.sample(old, k)


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


def _mean_loss(engine, docs: list[list[int]], pad: int, eos: int, batch: int, device) -> float:
    """The token mean loss over packed windows (validation)."""
    import torch

    from vintage.loss import causal_lm_loss
    from vintage.windows import packed_batch

    if not docs:
        return float("nan")
    total, count = 0.0, 0
    engine.module.eval()
    with torch.no_grad():
        for start in range(0, len(docs), batch):
            ids, positions, labels = packed_batch(docs[start:start + batch], pad, eos)
            loss = causal_lm_loss(engine.module, ids.to(device), None, labels.to(device), positions.to(device))
            tokens = int((labels[:, 1:] != -100).sum())
            total += float(loss) * tokens
            count += tokens
    engine.module.train()
    return total / max(1, count)


def fact_accuracy(model, probes: list[list], pad: int, device, batch: int = 256, rank: int = 0,
                  world: int = 1) -> float:
    """Share of probes `[prompt_ids, [choice_ids, ...], answer_index]` whose answer has the highest total
    log-prob among its choices (each choice scored as a continuation of the prompt). With `world` > 1 each
    rank scores every world-th probe and the counts are summed over the process group (every rank gets
    the same answer, so they stop a stage together)."""
    import torch

    if not probes:
        return float("nan")
    shard = probes[rank::world]
    hits = _fact_hits(model, shard, pad, device, batch)
    if world > 1:
        import torch.distributed as dist

        counts = torch.tensor([hits, len(shard)], dtype=torch.float64, device=device)  # NCCL: on the GPU
        dist.all_reduce(counts)
        return float(counts[0] / counts[1])
    return hits / len(probes)


def _fact_hits(model, probes: list[list], pad: int, device, batch: int) -> int:
    """How many probes the model answers right. Only the positions that predict a choice's tokens go
    through the output layer (the rest of a sequence is context): most of the work on a small model."""
    import torch

    flat = [(p + c, len(p)) for p, cs, _ in probes for c in cs]
    totals = torch.zeros(len(flat), dtype=torch.float64)
    head = model.get_output_embeddings()
    model.eval()
    with torch.no_grad():
        for start in range(0, len(flat), batch):
            chunk = flat[start:start + batch]
            ids, mask, _ = _collate([seq for seq, _ in chunk], pad)
            rows = [(row, pos) for row, (seq, plen) in enumerate(chunk) for pos in range(plen - 1, len(seq) - 1)]
            if not rows:  # only empty choices: each scores 0
                continue
            row, pos = (torch.tensor(x, dtype=torch.long) for x in zip(*rows))
            hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            logp = torch.log_softmax(head(hidden[row.to(device), pos.to(device)]).float(), -1)
            picked = logp.gather(-1, ids[row, pos + 1][:, None].to(device))[:, 0].double().cpu()
            totals[start:start + len(chunk)] = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, row, picked)
    model.train()
    hits, k = 0, 0
    for _, cs, answer in probes:
        hits += int(int(totals[k:k + len(cs)].argmax()) == answer)
        k += len(cs)
    return hits


def say(message: str) -> None:
    """One console line from a worker. Ray Train V2 patches `print` into both the (wrapped) stdout and its
    logger, which shows every line twice; the process's own stdout is captured once."""
    print(message, file=sys.__stdout__, flush=True)


def peak_memory_mib() -> float:
    """Peak resident memory of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Progress:
    """One console line per epoch (and at most every `every` seconds within one): step, loss, tokens/s, ETA.
    With memorisation probes stages may stop early, so the ETA is an upper bound (printed as "<=")."""

    def __init__(self, name: str, total_docs: int, every: float = 15.0, upper_bound: bool = False):
        self.name, self.total_docs, self.every, self.upper = name, max(1, total_docs), every, upper_bound
        self.started = self.last = time.perf_counter()
        self.done_docs = 0

    def line(self, text: str, state: dict, docs: int, force: bool = False) -> None:
        self.done_docs += docs
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.started
        rate = state["tokens"] / max(elapsed, 1e-9)
        left = elapsed / max(1, self.done_docs) * max(0, self.total_docs - self.done_docs)
        eta = f"ETA {'<=' if self.upper else ''}{int(left // 60)}:{int(left % 60):02d}"
        say(f"[{self.name}] {text} step {state['step']} tok/s {rate:,.0f} {eta}")


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; everything it needs is in `config` (see `run_config`)."""
    import deepspeed
    import pyarrow.parquet as pq
    import ray.train
    import torch

    from vintage.loss import causal_lm_loss
    from vintage.presets import build_model
    from vintage.windows import packed_batch

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
    # fused: one kernel over all parameters (the optimiser step of surrogate-small on 2 workers: 4.9 ms, 7.9 with
    # the per-tensor loop)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"],
                                  betas=(0.9, 0.95), fused=True)
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

    pad, eos = config["pad_id"], config["eos_id"]
    batch = config["batch_size"]

    def step_on(rows: list[list[int]], lr: float) -> float:
        """One step over `rows`; returns this worker's share of the step's loss (`step_loss` adds them up)."""
        shard = _shards(rows, world)[rank]
        ids, positions, labels = packed_batch(shard or rows[:1], pad, eos)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        # the module itself, not the engine's forward: ZeRO 0-2 keep whole parameters, and the loss runs the
        # head only on target positions (vintage/loss.py: 1.4x the steps per second at 2k and at 49k tokens; bench/vocab.py)
        loss = causal_lm_loss(engine.module, ids.to(device), None, labels.to(device), positions.to(device))
        if world > 1:
            loss = loss * shard_weight(shard, rows, world, eos)
        engine.backward(loss)
        engine.step()
        state["tokens"] += sum(len(r) for r in rows)  # the step's rows on every rank together
        return float(loss.detach())

    stages = config["stages"]
    after_cooldown = config.get("after_cooldown", "restore")  # what a chain does once a vintage is saved
    target = config.get("memorise") or 0.0
    planned = sum(stage["epochs"] * _stage_size(stage, by_slice, config["replay"]) for stage in stages[state["stage"]:])
    progress = _Progress(config["name"], planned, upper_bound=bool(target)) if rank == 0 else None
    for index in range(state["stage"], len(stages)):
        stage = stages[index]
        rng = random.Random(config["seed"] * 1000 + index)
        new = [d for s in stage["new"] for d in by_slice.get(s, [])]
        old = [d for s in stage["replay"] for d in by_slice.get(s, [])]
        epochs_of = _epoch_documents(new, old, config["replay"], config.get("replay_sampling", "stage") == "epoch",
                                     rng)
        docs = next(epochs_of)
        probes = stage.get("probes") or []
        loss, share, accuracy, epochs_run = float("nan"), float("nan"), float("nan"), 0
        stage_started = time.perf_counter()
        # after a kept cooldown the rate is ~0: a later stage warms up again, from its own first step
        warm_from = state["step"] if after_cooldown == "continue" else 0
        for epoch in range(stage["epochs"]):
            if epoch:
                docs = next(epochs_of)
            for rows in _batches(docs, batch * world, rng):
                share = step_on(rows, _lr_at(state["step"] - warm_from, config["lr"], config["warmup_steps"]))
                state["step"] += 1
                if world == 1:  # with several workers the lines in between show the last epoch's loss
                    loss = share
                if progress:
                    progress.line(f"stage {index + 1}/{len(stages)} ({stage.get('cutoff')}) epoch {epoch + 1}/"
                                  f"{stage['epochs']} loss {loss:.3f}", state, len(rows))
            loss = step_loss(share, world, device)  # the epoch's last step, over every worker
            epochs_run += 1
            if probes and target:
                accuracy = fact_accuracy(engine.module, probes, pad, device, rank=rank, world=world)
            if progress:
                facts = f" facts {accuracy:.2f}/{target:.2f}" if probes and target else ""
                progress.line(f"stage {index + 1}/{len(stages)} ({stage.get('cutoff')}) epoch {epoch + 1}/"
                              f"{stage['epochs']} loss {loss:.3f}{facts}", state, 0, force=True)
            if probes and target and accuracy >= target:
                if progress:
                    progress.total_docs -= (stage["epochs"] - epochs_run) * len(docs)
                break
        # main-run steps only: no start-up, cooldown branches or saves
        state["train_seconds"] = state.get("train_seconds", 0.0) + time.perf_counter() - stage_started
        record = {"stage": index, "cutoff": stage.get("cutoff"), "train_loss": loss, "step": state["step"],
                  "tokens": state["tokens"], "epochs": epochs_run, "fact_accuracy": accuracy,
                  "peak_memory_mib": peak_memory_mib()}
        if stage.get("save_to"):
            record.update(_save_branch(engine, stage, config, by_slice, holdout, rank, world, device, step_on, state,
                                       after_cooldown))
        state["history"].append(record)
        state["stage"] = index + 1
        state["stage_hashes"] = [s.get("stage_hash") for s in stages[: index + 1]]
        with tempfile.TemporaryDirectory() as directory:
            engine.save_checkpoint(directory, tag="main")  # collective: every rank writes its part
            if rank == 0:
                # the files beside it and their sizes: a crash while the checkpoint is persisted can leave
                # state.json next to a truncated file, which a rerun must not resume from (runs.resume_point)
                files = {str(f.relative_to(directory)): f.stat().st_size for f in Path(directory).rglob("*") if f.is_file()}
                (Path(directory) / "state.json").write_text(json.dumps({**state, "files": files}))
            ray.train.report({k: v for k, v in record.items() if isinstance(v, (int, float))},
                             checkpoint=ray.train.Checkpoint.from_directory(directory))


def _save_branch(engine, stage, config, by_slice, holdout, rank, world, device, step_on, state,
                 after_cooldown: str) -> dict:
    """Cooldown on data <= the cutoff, save the weights as a vintage, then restore the main run (with
    `after_cooldown: continue`, keep the cooled weights and their steps and tokens instead: nothing to
    restore, so no branch point is written)."""
    known = [d for s in stage["known"] for d in by_slice.get(s, [])]
    held = [d for s in stage["known"] for d in holdout.get(s, [])]
    import torch.distributed as dist

    rng = random.Random(config["seed"] * 7919 + state["stage"])  # state["stage"] is this stage's index
    steps = config["cooldown_steps"]
    restore = after_cooldown == "restore"
    own = branch = None
    if restore:
        # DeepSpeed reads a checkpoint back from one directory on every rank (rank 0 writes the model, each
        # rank its optimizer shard), so the branch point lives in the run's shared scratch directory
        if "scratch" not in config and world > 1:
            raise ValueError("a multi-worker run needs config['scratch'], a directory every worker can read")
        own = None if config.get("scratch") else tempfile.mkdtemp(prefix="vintage-branch-")  # one worker: local is fine
        branch = Path(config.get("scratch") or own) / f"stage-{state['stage']}"
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
            for rows in _batches(known, config["batch_size"] * world, rng):
                loss = step_on(rows, config["lr"] * (1 - done / steps))
                done += 1
                if done >= steps:
                    break
        loss = step_loss(loss, world, device)
        cooldown_tokens = state["tokens"] - main_tokens
        validation = _mean_loss(engine, held, config["pad_id"], config["eos_id"], 64, device)
        probes = stage.get("probes") or []
        accuracy = fact_accuracy(engine.module, probes, config["pad_id"], device, rank=rank,
                                 world=world) if probes else None
        if rank == 0:
            target = Path(stage["save_to"])
            staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            engine.module.save_pretrained(staging, safe_serialization=True)
            # tokens_seen: what these weights were trained on, the main run's tokens up to this cutoff and
            # this branch's cooldown (cooldown_tokens of them; the main run continues without them, or, with
            # after_cooldown: continue, with them: a later vintage's tokens_seen counts every earlier cooldown)
            info = {"cutoff": stage.get("cutoff"), "cooldown_steps": steps, "final_train_loss": loss,
                    "after_cooldown": after_cooldown,
                    "validation_loss": validation, "tokens_seen": state["tokens"], "steps": state["step"],
                    "cooldown_tokens": cooldown_tokens,
                    # every token of the cutoff's documents is in some window (vintage/windows.py): one pass over
                    # the windows reads them all, with an EOS after each document
                    "tokens_per_epoch": sum(len(w) for w in known),
                    "corpus_tokens": sum(config.get("corpus_tokens", {}).get(s, 0) for s in stage["known"]),
                    "window": config.get("window"), "dtype": str(next(engine.module.parameters()).dtype),
                    "slices": stage["known"], "fact_accuracy": accuracy, "facts": len(probes),
                    "peak_memory_mib": round(peak_memory_mib(), 1), "stage_hash": stage.get("stage_hash"),
                    "train_seconds": round(state.get("train_seconds", 0.0), 2), "world_size": world}
            (staging / "training.json").write_text(json.dumps(info, indent=2))
            replace_directory(staging, target)
            facts = f", facts seen {accuracy:.2f}" if accuracy is not None else ""
            say(f"[{config['name']}] saved {target} (validation loss {validation:.3f}{facts})")
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


def _stage_size(stage: dict, by_slice: dict, replay: float) -> int:
    """Documents one epoch of `stage` trains on (its new slices plus the replayed sample)."""
    new = sum(len(by_slice.get(s, [])) for s in stage["new"])
    old = sum(len(by_slice.get(s, [])) for s in stage["replay"])
    return new + min(old, int(round(replay * new)))


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

