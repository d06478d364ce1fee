"""vintage/watchdog.py: a stage without progress says so, with what it waits on; one that progresses says nothing."""
import time

from vintage.watchdog import Watchdog, mtime, touch


def test_a_stalled_stage_says_what_it_waits_on_once_per_interval():
    lines = []
    with Watchdog("backtest", lambda: "2 scoring actors", after=0.2, say=lines.append):
        time.sleep(0.75)
    assert 2 <= len(lines) <= 4, lines  # one line per interval of silence, not one per check
    assert lines[0].startswith("[backtest] no progress for ") and lines[0].endswith("; waiting on 2 scoring actors")


def test_a_stage_that_beats_or_touches_its_heartbeat_says_nothing(tmp_path):
    lines = []
    with Watchdog("scoring", lambda: "actors", after=0.3, say=lines.append) as dog:
        for _ in range(8):
            time.sleep(0.1)
            dog.beat()
    heartbeat = tmp_path / "beat"
    assert mtime(heartbeat) is None
    with Watchdog("train", lambda: "workers", after=0.3, last_progress=lambda: mtime(heartbeat), say=lines.append):
        for _ in range(8):
            time.sleep(0.1)
            touch(heartbeat, every=0.0)  # a worker elsewhere stepping
    assert lines == []


def test_a_failing_report_does_not_kill_the_watch():
    lines = []
    with Watchdog("split", lambda: 1 / 0, after=0.1, say=lines.append):
        time.sleep(0.3)
    assert lines and "could not tell: ZeroDivisionError" in lines[0]
