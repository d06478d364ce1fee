"""A DeepSpeed start interrupted while it held torch's extension build lock must not hang every later start: the
stale lock is found (no process holds it) and removed with a message naming it; a held one is left alone."""
import os
import subprocess
import sys
import time

from vintage.extension_locks import clear_stale_locks


def test_a_lock_no_process_holds_is_removed_with_a_message(tmp_path):
    stale = tmp_path / "deepspeed_shm_comm" / "lock"
    stale.parent.mkdir()
    stale.touch()
    nested = tmp_path / "py311_cpu" / "other_op" / "lock"  # torch's default layout
    nested.parent.mkdir(parents=True)
    nested.touch()
    said = []
    assert clear_stale_locks(tmp_path, said.append) == sorted([stale, nested])
    assert not stale.exists() and not nested.exists()
    assert len(said) == 2 and str(stale) in said[0] + said[1] and "stale build lock" in said[0]
    assert clear_stale_locks(tmp_path, said.append) == [] and len(said) == 2  # nothing left: silent


def test_a_lock_a_live_build_holds_is_left_alone(tmp_path):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    # a builder as torch's FileBaton is one: it creates the lock and keeps it open while it builds
    holder = subprocess.Popen([sys.executable, "-c", f"import os, time; os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL)"
                                                     f"; print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        said = []
        assert clear_stale_locks(tmp_path, said.append) == [] and lock.exists() and not said
    finally:
        holder.kill()
        holder.wait()
    started = time.perf_counter()
    assert clear_stale_locks(tmp_path, lambda _: None) == [lock]  # its holder is gone: stale now
    assert time.perf_counter() - started < 5 and not os.path.exists(lock)
