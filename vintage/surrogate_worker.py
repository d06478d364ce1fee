"""The surrogates of a PointInTimeLM in a child process, so that their forward passes overlap the
frontier's (`PointInTimeLM(..., overlap=True)`)."""
from __future__ import annotations

import os
import weakref
from typing import Sequence

import torch

from vintage.model_calls import model_logits


class InWorker:
    """A cache held by the surrogate process; valid for the generation (epoch) that made it."""

    def __init__(self, epoch: int):
        self.epoch = epoch


def _serve_surrogates(conn, models, vocab: int, threads: int) -> None:  # pragma: no cover - child process
    """Loop of the surrogate process: one request (which models, ids, mask, positions, continue the caches
    or not, keep) at a time, answered with float32 numpy logits (or the error's text)."""
    torch.set_num_threads(threads)
    caches = [None] * len(models)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            conn.close()
            os._exit(0)  # nothing to flush; a full interpreter teardown with torch loaded takes seconds
        which, ids, mask, positions, cont, keep = request
        try:
            out = []
            with torch.inference_mode():
                for slot, model in enumerate(models):
                    if model is None or not which[slot]:
                        out.append(None)
                        continue
                    logits, caches[slot] = model_logits(model, torch.from_numpy(ids), torch.from_numpy(mask),
                                                        torch.from_numpy(positions), caches[slot] if cont else None,
                                                        keep, vocab)
                    out.append(logits.float().cpu().numpy())
            conn.send(("ok", out))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", f"{type(error).__name__}: {error}"))


def _stop_worker(conn, process) -> None:
    try:
        conn.send(None)
    except (OSError, BrokenPipeError):
        pass
    process.join(timeout=5)
    if process.is_alive():
        process.terminate()
    conn.close()


class SurrogateWorker:
    """The surrogates (vintage, full, fallback) of a PointInTimeLM in a child process, so that their forward
    passes run on another core while the frontier runs its own (`PointInTimeLM(..., overlap=True)`).

    A small surrogate's step is mostly Python dispatch (a 2-block model at batch 1: ~2.5 ms, of which the
    matmuls are ~0.4), which a thread cannot overlap (the GIL) but a process can. The process starts at the
    first request (spawn: it imports torch and transformers, seconds) and keeps the KV caches; requests are
    synchronous pairs (submit, then result); logits come back as float32 arrays."""

    def __init__(self, models: Sequence, vocab: int, threads: int = 1):
        self.models, self.vocab, self.threads = list(models), vocab, threads
        self.epoch = 0
        self._process = self._conn = self._finalizer = None

    @property
    def running(self) -> bool:
        return self._finalizer is not None and self._finalizer.alive

    def _start(self) -> None:
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_surrogates, args=(child, self.models, self.vocab,
                                                                         self.threads),
                                        daemon=True, name="vintage-surrogates")
        self._process.start()
        child.close()
        self._finalizer = weakref.finalize(self, _stop_worker, self._conn, self._process)

    def submit(self, which: Sequence[bool], input_ids, attention_mask, position_ids, past, keep) -> None:
        """Start the surrogates on a batch; `past` None starts fresh caches, an `InWorker` continues them."""
        if past is None:
            self.epoch += 1
            if not self.running:
                self._start()
        elif past.epoch != self.epoch or not self.running:
            raise RuntimeError("a surrogate cache from an earlier generation (or a closed process) was passed "
                               "back; the surrogate process keeps the latest one only")
        self._conn.send((tuple(which), input_ids.cpu().numpy(), attention_mask.cpu().numpy(),
                         position_ids.cpu().numpy(), past is not None, keep))

    def result(self) -> list[torch.Tensor | None]:
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the surrogate process exited (code {self._process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"surrogate process: {payload}")
        return [None if a is None else torch.from_numpy(a) for a in payload]

    def close(self) -> None:
        """End the process (a later request starts another)."""
        if self._finalizer is not None:
            self._finalizer()
