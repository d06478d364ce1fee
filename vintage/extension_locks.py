"""Stale build locks of torch's JIT extensions (DeepSpeed's CPU ops): found and removed, with a message.

Every start of DeepSpeed loads its ops through `torch.utils.cpp_extension.load`, which takes a lock file in the
op's build directory (`$TORCH_EXTENSIONS_DIR/<op>/lock`, torch's FileBaton), even when nothing needs compiling. A
start interrupted while it held the lock (Ctrl-C, a killed job, a node gone) leaves the file behind, and every later
start waits on it forever, printing nothing. The process holding a live lock keeps the file open until it releases
it, so a lock that no process has open is stale: we remove it before training starts and say so. Where open files
cannot be listed (no /proc), a lock older than STALE_AFTER seconds counts as stale (a build of these ops takes about
a minute here). We chose this over prebuilding the ops at install: a prebuild can be interrupted too, and a cluster
node builds its own.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

STALE_AFTER = 15 * 60  # seconds: only where open files cannot be listed


def extensions_root() -> Path:
    """Where torch builds JIT extensions: $TORCH_EXTENSIONS_DIR, else torch's default under the user's cache."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def open_files() -> set[str] | None:
    """Every file some process has open (the targets of /proc/*/fd), or None where /proc does not list them."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    found = set()
    for pid in proc.iterdir():
        if not pid.name.isdigit():
            continue
        try:
            for fd in (pid / "fd").iterdir():
                try:
                    found.add(os.readlink(fd))
                except OSError:
                    continue
        except OSError:  # the process ended, or is not ours to read
            continue
    return found


def clear_stale_locks(root: str | Path | None = None, say: Callable[[str], None] = print) -> list[Path]:
    """Remove every build lock under `root` (default: `extensions_root()`) that no process holds; returns them."""
    root = Path(root) if root is not None else extensions_root()
    # $TORCH_EXTENSIONS_DIR/<op>/lock, or under the default root <root>/py311_cpu/<op>/lock
    locks = sorted({*root.glob("*/lock"), *root.glob("*/*/lock")}) if root.is_dir() else []
    if not locks:
        return []
    held = open_files()
    removed = []
    for lock in locks:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            continue
        stale = str(lock.resolve()) not in held if held is not None else age > STALE_AFTER
        if not stale:
            continue
        try:
            lock.unlink()
        except FileNotFoundError:
            continue
        removed.append(lock)
        say(f"removed a stale build lock {lock} (left {age / 60:.0f} min ago by an interrupted start; no process "
            f"holds it): every DeepSpeed start would have waited on it forever")
    return removed
