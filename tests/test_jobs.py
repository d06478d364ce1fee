"""`ray job submit` against a local head with token authentication: the tiny pipeline succeeds end to end,
a submission without the token is refused. The head binds to 127.0.0.1 and is stopped by its own process
group (never `ray stop`, which would end every Ray process on the machine)."""
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    base = tmp_path_factory.mktemp("head")
    token = secrets.token_hex(16)
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HOME": str(base),
           "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    log = open(base / "head.log", "w")
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
         "--num-cpus", "2", "--temp-dir", str(base / "ray"), "--disable-usage-stats",
         # the agents' default ports are fixed (52365, ...): another Ray instance on this machine holds them,
         # and then the job agent never registers ("No available agent to submit job")
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            ok = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                                capture_output=True, text=True, timeout=60)
            if ok.returncode == 0:
                break
            assert process.poll() is None, (base / "head.log").read_text()[-3000:]
            time.sleep(2)
        else:
            pytest.fail("the Ray head did not come up: " + (base / "head.log").read_text()[-3000:])
        yield address, env, base
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the head and every process it started, nothing else
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def submit(address: str, env: dict, out: Path) -> subprocess.CompletedProcess:
    """`ray job submit`; retried while the head's job agent has not registered yet (the dashboard answers
    `ray job list` before it can place a job: "No available agent to submit job", seen on a loaded machine)."""
    runtime = '{"excludes": [".venv", "out", ".build", ".git", ".hypothesis", ".pytest_cache", "**/__pycache__"]}'
    deadline = time.time() + 120
    while True:
        done = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
             "--runtime-env-json", runtime, "--", "python", "-m", "pipelines.end_to_end",
             "--config", "configs/tiny.yaml", "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in done.stdout + done.stderr or time.time() > deadline:
            return done
        time.sleep(3)


def test_tiny_pipeline_as_a_job(head):
    address, env, base = head
    started = time.perf_counter()
    done = submit(address, env, base / "out")
    seconds = time.perf_counter() - started
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]
    print(f"job-submit of configs/tiny.yaml: {seconds:.0f} s")
    results = pl.concat([pl.read_parquet(f) for f in (base / "out" / "backtest" / "results").glob("*.parquet")])
    assert set(results["method"]) == {"frontier", "surrogate", "point_in_time(alpha=0.5)",
                                      "point_in_time(alpha=0.5,ngram)", "retrained"}
    assert results["query_id"].n_unique() > 50
    assert (base / "out" / "backtest" / "report.md").exists()
    curves = pl.read_parquet(base / "out" / "backtest" / "effective_cutoff.parquet")
    assert set(curves["method"]) == set(results["method"])  # every method's curve, the n-gram pair's too
    assert (base / "out" / "models" / "manifest.json").exists()
    assert len(list((base / "out" / "models" / "ngram" / "slices").glob("*.parquet"))) >= 3  # counted on the cluster


def test_a_submission_without_the_token_is_refused(head, tmp_path):
    address, env, _ = head
    anonymous = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    anonymous["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=anonymous,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    done = submit(address, wrong, tmp_path / "out")
    assert done.returncode != 0 and not (tmp_path / "out").exists()
