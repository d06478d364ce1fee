"""What a training worker measures and says: validation loss, fact accuracy on memorisation probes,
peak memory, and one progress line per epoch."""
from __future__ import annotations

import resource
import sys
import time


def _collate(rows: list[list[int]], pad: int):
    from vintage.model_calls import pad_batch

    ids, mask = pad_batch(rows, pad, side="right")
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
