"""Small file and content helpers every stage shares: atomic writes and the 16-hex content hash."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator


def short_hash(text: str) -> str:
    """The project's content hash: sha256 of `text`, 16 hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def documents_hash(doc_ids: list[str], texts: list[str]) -> str:
    """The content hash of a set of documents: each id with its text's hash, in id order. A corrected text under
    the same id changes it (a slice whose hash is unchanged is reused as trained or counted)."""
    pairs = sorted(zip(doc_ids, texts))
    return short_hash("\n".join(f"{doc_id}\t{short_hash(text)}" for doc_id, text in pairs))


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside `path` to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # one per writer
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half of one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def replace_directory(staging: str | Path, target: str | Path) -> None:
    """Move a finished `staging` directory to `target`, replacing what is there: the old one is renamed aside first
    and removed after, so `target` is never a half-deleted directory."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Write a directory whole or not at all: yields a path beside `target` (hidden, this process's own, not yet
    created: the block creates it, e.g. by save_pretrained or copytree), moved into place as `target` when the
    block ends. If the block raises, the staging is removed and `target` stays as it was; a process killed
    mid-write leaves only a hidden staging directory, which the next write replaces."""
    target = Path(target)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, target)
