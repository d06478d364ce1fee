"""What each training step reads: the learning rate, shuffled batches, the replay sample of each epoch,
a step's documents split over the workers and the weights that keep the gradient a token mean."""
from __future__ import annotations

import random


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


def _stage_size(stage, by_slice: dict, replay: float) -> int:
    """Documents one epoch of `stage` trains on (its new slices plus the replayed sample)."""
    new = sum(len(by_slice.get(s, [])) for s in stage.new)
    old = sum(len(by_slice.get(s, [])) for s in stage.replay)
    return new + min(old, int(round(replay * new)))
