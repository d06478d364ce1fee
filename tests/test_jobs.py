"""The README's cluster path on one machine: a Ray head started by ray_cluster.yaml's own `head_start_ray_commands`
(token authentication on, a PATH without the project's venv, as on a fresh node), the README's `ray job submit`
of the tiny pipeline, then the README's Python examples run on the registry that job wrote. A submission without
the token is refused. The head binds to 127.0.0.1 and is stopped by its own process group (never `ray stop`, which
would end every Ray process on the machine)."""
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from backtests.spec import MethodSpec
from tests.net import free_port
from tests.readme import localised, offline_reason, python_blocks, shell_command

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the client side: a user who ran `source .venv/bin/activate`
VENV = BIN.parent
pytestmark = pytest.mark.slow


def substitute(command: str, old: str, new: str) -> str:
    assert command.count(old) == 1, f"ray_cluster.yaml changed: {old!r} not once in {command!r}"
    return command.replace(old, new)


def local_head_commands(dashboard: int, temp_dir: Path) -> list[str]:
    """ray_cluster.yaml's head_start_ray_commands as this machine runs them. Changed, and only this: `ray stop` is
    left out (it ends every Ray process on the machine, other people's too); the fixed ports become free ones;
    the autoscaler's config (written by `ray up`) is left out; the head binds to 127.0.0.1, keeps to 2 CPUs and
    a temp dir of its own, gets free ports for the agents (their defaults may be held by another Ray here: then
    the job agent never registers) and blocks, so that its process group is the head."""
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    commands = [c for c in config["head_start_ray_commands"] if not c.strip().endswith("ray stop")]
    assert len(commands) == 1 and "ray start --head" in commands[0], commands
    command = substitute(commands[0], "--port=6379", f"--port={free_port()}")
    command = substitute(command, "--object-manager-port=8076", f"--object-manager-port={free_port()}")
    command = substitute(command, " --autoscaling-config=~/ray_bootstrap_config.yaml", "")
    command += (f" --block --node-ip-address=127.0.0.1 --dashboard-port={dashboard} --include-dashboard=true"
                f" --num-cpus=2 --temp-dir={temp_dir} --dashboard-agent-listen-port={free_port()}"
                f" --dashboard-agent-grpc-port={free_port()} --runtime-env-agent-port={free_port()}"
                f" --metrics-export-port={free_port()}")
    return [command]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    base = tmp_path_factory.mktemp("head")
    (base / "venv").symlink_to(VENV, target_is_directory=True)  # the cluster's ~/venv (setup_commands)
    token = secrets.token_hex(16)
    dashboard = free_port()
    # a fresh node's PATH: the venv is not on it (a `python` found there has none of the project's packages)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and not Path(p).resolve().is_relative_to(VENV.resolve()))
    node_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HOME": str(base), "PATH": path,
                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                # no Serve here to quiesce: stop at once instead of draining 30 s on SIGTERM
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    client_env = {**node_env, "PATH": f"{BIN}{os.pathsep}{path}"}
    log = open(base / "head.log", "w")
    (command,) = local_head_commands(dashboard, base / "ray")
    process = subprocess.Popen(["bash", "-c", command], env=node_env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=base)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            ok = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=client_env,
                                capture_output=True, text=True, timeout=60)
            if ok.returncode == 0:
                break
            assert process.poll() is None, (base / "head.log").read_text()[-3000:]
            time.sleep(2)
        else:
            pytest.fail("the Ray head did not come up: " + (base / "head.log").read_text()[-3000:])
        yield address, client_env, base
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the head and every process it started, nothing else
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def submit(address: str, env: dict, out: Path) -> subprocess.CompletedProcess:
    """The README's `ray job submit`, run from the project directory with the head's address and `out` for its
    output; retried while the head's job agent has not registered yet (the dashboard answers `ray job list`
    before it can place a job: "No available agent to submit job", seen on a loaded machine)."""
    command = shell_command("ray job submit")
    command = substitute(command, "--address http://127.0.0.1:8265", f"--address {address}")
    command = substitute(command, "--out /shared/vintage/tiny", f"--out {out}")
    argv = shlex.split(command)
    assert argv[0] == "ray"
    argv[0] = str(BIN / "ray")
    deadline = time.time() + 120
    while True:
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in done.stdout + done.stderr or time.time() > deadline:
            return done
        time.sleep(3)


@pytest.fixture(scope="module")
def tiny_job(head):
    """The tiny pipeline submitted as the README says: (the finished `ray job submit`, its seconds, its output)."""
    address, env, base = head
    started = time.perf_counter()
    done = submit(address, env, base / "out")
    return done, time.perf_counter() - started, base / "out"


def test_tiny_pipeline_as_a_job(tiny_job):
    done, seconds, out = tiny_job
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]
    print(f"job-submit of configs/tiny.yaml: {seconds:.0f} s")
    results = pl.concat([pl.read_parquet(f) for f in (out / "backtest" / "results").glob("*.parquet")])
    assert set(results["method"]) == {"frontier", "surrogate", MethodSpec(name="point_in_time").key,
                                      "point_in_time(alpha=0.5,ngram)", "retrained"}
    assert results["query_id"].n_unique() > 50
    assert (out / "backtest" / "report.md").exists()
    curves = pl.read_parquet(out / "backtest" / "effective_cutoff.parquet")
    assert set(curves["method"]) == set(results["method"])  # every method's curve, the n-gram pair's too
    assert (out / "models" / "manifest.json").exists()
    assert len(list((out / "models" / "ngram" / "slices").glob("*.parquet"))) >= 3  # counted on the cluster


RUNNABLE = [(line, code) for line, code in python_blocks() if offline_reason(code) is None]
OFFLINE = [(line, offline_reason(code)) for line, code in python_blocks() if offline_reason(code) is not None]


def test_readme_python_examples_run_on_the_jobs_registry(tiny_job):
    """Every ```python block of the README, as written (only out/demo/ and out/tiny/ moved to the job's output),
    in order and in one namespace, as a reader pasting them into one session would."""
    done, _, out = tiny_job
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert any("PointInTimeLM.from_registry(" in code for _, code in RUNNABLE), "README: no from_registry example"
    namespace: dict = {"__name__": "readme"}
    for line, code in RUNNABLE:
        started = time.perf_counter()
        exec(compile(localised(code, out), f"README.md:{line}", "exec"), namespace)  # noqa: S102
        print(f"README.md:{line}: {time.perf_counter() - started:.1f} s")


@pytest.mark.parametrize("line,reason", OFFLINE, ids=[f"README.md:{line}" for line, _ in OFFLINE])
def test_readme_python_examples_not_run_offline(line, reason):
    pytest.skip(f"README.md:{line}: {reason}")


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


def test_calibrate_records_alphas_that_calibrated_reads(tiny_job, tmp_path, capsys):
    """The pipeline recorded each vintage's alpha on held-out text, so alpha="calibrated" works at once;
    `vintage calibrate` on (a copy of) the job's registry replaces it with the labelled one."""
    import shutil

    from pipelines.cli import main as vintage_main
    from vintage.decoding import PointInTimeLM
    from vintage.registry import Registry, RegistryError

    done, _, out = tiny_job
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    registry = shutil.copytree(out / "models", tmp_path / "models", ignore=shutil.ignore_patterns(".checkpoints"))
    heldout = Registry(registry).manifest["calibration"]
    assert set(heldout) == set(Registry(registry).cutoffs()[:-1])
    assert all(e["reference"] == "held-out text" and 0 <= e["alpha"] <= 4 for e in heldout.values())
    assert PointInTimeLM.from_registry(registry, "2018-01-15", alpha="calibrated").alpha == heldout["2017-12-31"]["alpha"]
    print("held-out strengths: " + ", ".join(f"{c} {e['alpha']:g}" for c, e in heldout.items()))
    manifest = json.loads((Path(registry) / "manifest.json").read_text())
    del manifest["calibration"]
    (Path(registry) / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="vintage calibrate --registry"):
        PointInTimeLM.from_registry(registry, "2018-01-15", alpha="calibrated")
    started = time.perf_counter()
    assert vintage_main(["calibrate", "--registry", str(registry), "--world",
                         str(out / "world" / "synthetic-market")]) == 0
    print(f"vintage calibrate: {time.perf_counter() - started:.1f} s\n" + capsys.readouterr().out)
    evidence = Registry(registry).manifest["calibration"]
    assert set(evidence) == set(Registry(registry).cutoffs()[:-1])
    assert evidence["2017-12-31"]["reference"] == "retrained"  # tiny.yaml retrains at 2017-12-31
    lm = PointInTimeLM.from_registry(registry, "2018-01-15", alpha="calibrated")
    assert lm.vintage_cutoff == "2017-12-31" and lm.alpha == evidence["2017-12-31"]["alpha"]
