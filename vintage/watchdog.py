"""A long stage that stops making progress says so: after `after` seconds without progress (default 5 minutes,
VINTAGE_STALL_SECONDS), one line naming the stage, how long it has waited and what it is waiting on, repeated
once per further `after` while the wait lasts (a line per interval, not a flood).

Progress is either reported (`beat()`, e.g. per batch of results back) or read (`last_progress`, a callable
giving the wall-clock time of the latest progress, e.g. a heartbeat file's mtime written by a Ray worker)."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

STALL_SECONDS = float(os.environ.get("VINTAGE_STALL_SECONDS", 300))


class Watchdog:
    """Context manager: a daemon thread that reports a stalled stage (see the module docstring)."""

    def __init__(self, stage: str, waiting_on: Callable[[], str], after: float = STALL_SECONDS,
                 last_progress: Callable[[], float | None] | None = None, say: Callable[[str], None] = None):
        self.stage, self.waiting_on, self.after = stage, waiting_on, after
        self.last_progress = last_progress
        self.say = say or (lambda line: print(line, flush=True))
        self._beat = self._said = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watchdog {stage}", daemon=True)

    def beat(self) -> None:
        """The stage made progress now."""
        self._beat = time.time()

    def _latest(self) -> float:
        read = self.last_progress() if self.last_progress else None
        return max(self._beat, read or 0.0)

    def _watch(self) -> None:
        while not self._stop.wait(min(self.after / 4, 15.0)):
            now, latest = time.time(), self._latest()
            if now - latest >= self.after and now - max(self._said, latest) >= self.after:
                self._said = now
                try:
                    what = self.waiting_on()
                except Exception as err:  # the report must not kill the watch (nor the stage)
                    what = f"(could not tell: {type(err).__name__}: {err})"
                self.say(f"[{self.stage}] no progress for {_duration(now - latest)}; waiting on {what}")

    def __enter__(self) -> "Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


_touched: dict[Path, float] = {}  # this process's last heartbeat per file


def touch(path: Path, every: float = 1.0) -> None:
    """Set `path`'s mtime to now (a heartbeat a watchdog elsewhere reads), at most once per `every` seconds."""
    now = time.time()
    if now - _touched.get(path, 0.0) >= every:
        _touched[path] = now
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def mtime(path: Path) -> float | None:
    """`path`'s mtime, or None while it does not exist."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def ray_resources() -> str:
    """Free / total CPUs (and GPUs) of the Ray cluster: a pool or run waiting for resources shows here."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    return ", ".join(f"{free.get(k, 0):g} of {total[k]:g} {k} free" for k in ("CPU", "GPU") if k in total)
