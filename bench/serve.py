"""Serving benchmark: `vintage serve` on 127.0.0.1, streamed completions from 1, 4 and 16 concurrent clients.

    python bench/serve.py                                  # about 15 minutes on 2 cores (float32, then bf16)
    python bench/serve.py --clients 1 4 --repeats 1 --dtypes float32   # quicker

Three scenarios, same server, same run: the point-in-time model at one vintage, the frontier alone (method
`frontier`: no surrogate runs, served the same way) and the point-in-time model with requests spread over 8
vintages (every batch mixes them: the multiplexing cost). Per scenario and concurrency: throughput (generated
tokens/s over the level's wall time), time to first token and per-request latency (p50, p99). Goals (issue 27):
16 clients >= 4x the throughput of 1 (batching works), point-in-time >= 0.75x the frontier alone. Peak memory
(RSS and PSS) of the replica and of the whole server with 8 vintages resident. Models are untrained (random
weights: the cost of a step does not depend on them); every request loop is bounded. `--dtypes`: one server per
dtype (the serve config's `dtype`), one after the other in the same run, each reported in full, then their
throughput against the first's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_registry(root: Path, frontier: str, surrogate: str, vintages: int, vocab: int) -> tuple[list[str], list[str]]:
    """A registry of untrained models: `vintages` quarterly cutoffs (the last one the full surrogate), a BPE
    tokenizer trained on the tiny synthetic world; returns (cutoffs, prompts)."""
    from corpora.worlds import generate_world
    from vintage.presets import build_model
    from vintage.tokenizer import train_bpe

    world = generate_world("synthetic-market", "tiny", seed=0)
    texts = world.documents["text"].to_pylist()
    tokenizer = train_bpe(texts, vocab_size=vocab)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    cutoffs = [(dt.date(2017, 3, 31) + dt.timedelta(days=91 * k)).isoformat() for k in range(vintages)]
    tokenizer.save_pretrained(root / "tokenizer")
    for k, cutoff in enumerate(cutoffs):
        build_model(surrogate, len(tokenizer), seed=k + 1, **ids).save_pretrained(root / "vintages" / cutoff)
        tokenizer.save_pretrained(root / "vintages" / cutoff)
    build_model(frontier, len(tokenizer), seed=0, **ids).save_pretrained(root / "frontier")
    tokenizer.save_pretrained(root / "frontier")
    (root / "manifest.json").write_text(json.dumps({"cutoffs": cutoffs, "full": cutoffs[-1]}))
    prompts = [" ".join(t.split()[:12]) for t in texts[:64] if len(t.split()) >= 6]
    return cutoffs, prompts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_request(port: int, key: str, body: dict) -> tuple[float, float, int]:
    """(time to first token, total time, tokens) of one streamed completion."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                 {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
    first, tokens = None, 0
    for line in response:
        if not line.startswith(b"data: "):
            continue
        if line.strip() == b"data: [DONE]":
            break
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        tokens += len(chunk["choices"])
        if first is None:
            first = time.perf_counter() - started
    conn.close()
    return first or 0.0, time.perf_counter() - started, tokens


def decode_stats(port: int, key: str) -> tuple[int, int]:
    """(steps, rows advanced) the replica has run so far."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/vintage/stats", headers={"Authorization": f"Bearer {key}"})
    stats = json.loads(conn.getresponse().read())
    return stats["steps"], stats["rows"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_level(port, key, bodies: list[dict], clients: int) -> dict:
    """`clients` threads, each sending its share of `bodies` one after another (a bounded closed loop)."""
    shares = [bodies[i::clients] for i in range(clients)]
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def client(share):
        for body in share:
            out = stream_request(port, key, body)
            with lock:
                results.append(out)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    wall = time.perf_counter() - started
    ttft, latency, tokens = zip(*results)
    return {"clients": clients, "requests": len(results), "tokens": sum(tokens), "wall_s": wall,
            "tokens_per_s": sum(tokens) / wall, "ttft_p50": percentile(ttft, 0.5), "ttft_p99": percentile(ttft, 0.99),
            "latency_p50": percentile(latency, 0.5), "latency_p99": percentile(latency, 0.99),
            "ttft": list(ttft), "latency": list(latency)}


def summarise(runs: list[dict]) -> dict:
    """One row from a level's repeats: median tokens/s, latency percentiles over every request of them."""
    ttft = [t for r in runs for t in r["ttft"]]
    latency = [t for r in runs for t in r["latency"]]
    return {"scenario": runs[0]["scenario"], "clients": runs[0]["clients"],
            "requests": sum(r["requests"] for r in runs), "repeats": len(runs),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "tokens_per_s_each": [round(r["tokens_per_s"], 1) for r in runs],
            "mean_batch": statistics.mean(r["mean_batch"] for r in runs),
            "ttft_p50": percentile(ttft, 0.5), "ttft_p99": percentile(ttft, 0.99),
            "latency_p50": percentile(latency, 0.5), "latency_p99": percentile(latency, 0.99)}


def paired(runs: dict, a: tuple, b: tuple) -> tuple[float, float, float]:
    """Median, min and max over repeats of tokens/s of level `a` / level `b` measured in the same repeat."""
    ratios = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs[a], runs[b])]
    return statistics.median(ratios), min(ratios), max(ratios)


class MemoryWatch:
    """Peak RSS and PSS of the server's processes (the CLI and everything under it: Ray's GCS, raylet, the
    Serve controller, proxy and replica), sampled every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        self.psutil, self.root = psutil, psutil.Process(pid)
        self.peak = {"replica_rss": 0, "replica_pss": 0, "server_rss": 0, "server_pss": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict:
        now = {"replica_rss": 0, "replica_pss": 0, "server_rss": 0, "server_pss": 0}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                info, title = proc.memory_full_info(), " ".join(proc.cmdline())
            except self.psutil.Error:
                continue
            now["server_rss"] += info.rss
            now["server_pss"] += getattr(info, "pss", info.rss)
            if "ServeReplica" in title:
                now["replica_rss"] += info.rss
                now["replica_pss"] += getattr(info, "pss", info.rss)
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)
        return now

    def _run(self):
        while not self._stop.wait(0.2):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def start_server(registry: Path, port: int, key: str, log: Path, num_cpus: int, config: Path) -> subprocess.Popen:
    env = {**os.environ, "VINTAGE_API_KEY": key, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--registry", str(registry),
                                    "--port", str(port), "--num-cpus", str(num_cpus), "--config", str(config)],
                                   cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vintage serve exited ({process.returncode}); see {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
            if conn.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"vintage serve did not answer within 300 s; see {log}")


def stop_server(process: subprocess.Popen) -> None:
    """End the process group we started (SIGTERM: the CLI shuts Serve and Ray down; then SIGKILL what is left)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def table(rows: list[dict]) -> str:
    head = (f"{'scenario':<24} {'clients':>7} {'requests':>8} {'tokens/s':>9} {'x 1 client':>10} {'TTFT p50':>9} "
            f"{'TTFT p99':>9} {'req p50':>8} {'req p99':>8} {'batch':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scenario']:<24} {r['clients']:>7} {r['requests']:>8} {r['tokens_per_s']:>9.1f} "
                     f"{r['speedup']:>10.2f} {r['ttft_p50'] * 1e3:>7.0f}ms {r['ttft_p99'] * 1e3:>7.0f}ms "
                     f"{r['latency_p50'] * 1e3:>6.0f}ms {r['latency_p99'] * 1e3:>6.0f}ms {r['mean_batch']:>6.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontier", default="small-wide", help="frontier preset (vintage/presets.py)")
    parser.add_argument("--surrogate", default="surrogate-small", help="surrogate preset")
    parser.add_argument("--vintages", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3, help="requests per client (at least --min-requests a level)")
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--method", default="linear alpha=0.5")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats of every level")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait", type=float, default=0.02,
                        help="seconds a batch waits to fill after its first request (serve config)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "auto"], help="one server each, one after the other")
    parser.add_argument("--out", help="directory for the registry, the server log and results.json (default: temp)")
    args = parser.parse_args()

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    registry = out / "registry"
    print(f"registry: {args.vintages} vintages of {args.surrogate}, frontier {args.frontier} -> {registry}", flush=True)
    cutoffs, prompts = build_registry(registry, args.frontier, args.surrogate, args.vintages, args.vocab)
    as_of = [(dt.date.fromisoformat(c) + dt.timedelta(days=1)).isoformat() for c in cutoffs]
    scenarios = {"point-in-time, 1 vintage": lambda i: (as_of[len(as_of) // 2], args.method),
                 "frontier alone": lambda i: (as_of[len(as_of) // 2], "frontier"),
                 f"point-in-time, {args.vintages} vintages": lambda i: (as_of[i % len(as_of)], args.method)}
    results = {dtype: measure(args, out, registry, dtype, scenarios, as_of, prompts) for dtype in args.dtypes}
    for dtype, (runs, memory) in results.items():
        report(args, out, dtype, scenarios, runs, memory)
    if len(args.dtypes) > 1:
        base = args.dtypes[0]
        print(f"\ntokens/s against {base} (medians of the repeats; the servers ran one after the other):")
        for dtype in args.dtypes[1:]:
            for name in scenarios:
                ratios = [statistics.median(r["tokens_per_s"] for r in results[dtype][0][(name, c)])
                          / statistics.median(r["tokens_per_s"] for r in results[base][0][(name, c)])
                          for c in args.clients]
                print(f"  {dtype} / {base}, {name}: " + ", ".join(f"{c} clients {x:.2f}x"
                                                                 for c, x in zip(args.clients, ratios)))


def measure(args, out: Path, registry: Path, dtype: str, scenarios: dict, as_of: list[str], prompts: list[str]):
    """One server computing in `dtype`: every scenario at every concurrency, round-robin over the repeats;
    (runs per (scenario, clients), memory)."""
    key, port = secrets.token_hex(16), free_port()
    started = time.perf_counter()
    config = out / f"serve-{dtype}.yaml"
    config.write_text(f"max_batch_size: {args.max_batch_size}\nbatch_wait_timeout_s: {args.batch_wait}\n"
                      f"max_vintages: {args.vintages}\ndtype: {dtype}\n")
    log = out / f"server-{dtype}.log"
    process = start_server(registry, port, key, log, args.num_cpus, config)
    print(f"[{dtype}] server up on 127.0.0.1:{port} in {time.perf_counter() - started:.1f} s (log {log})", flush=True)
    memory = {}
    try:
        watch = MemoryWatch(process.pid)
        memory["before_vintages"] = watch.sample()
        for date in as_of:  # warm-up: every vintage loaded (resident in the LRU) before anything is timed
            stream_request(port, key, {"model": "frontier", "prompt": prompts[0], "as_of": date, "max_tokens": 2,
                                       "temperature": 0, "method": args.method})
        runs: dict[tuple[str, int], list[dict]] = {(name, c): [] for name in scenarios for c in args.clients}
        with watch:
            # round-robin over repeats, so that drift in the machine's load hits every level alike
            for repeat in range(args.repeats):
                for clients in args.clients:
                    for name, pick in scenarios.items():
                        total = max(clients * args.rounds, args.min_requests)
                        bodies = []
                        for i in range(total):
                            date, method = pick(i)
                            bodies.append({"model": "frontier", "prompt": prompts[i % len(prompts)], "as_of": date,
                                           "method": method, "max_tokens": args.max_tokens, "temperature": 0})
                        steps, rows_before = decode_stats(port, key)
                        run = {"scenario": name, **run_level(port, key, bodies, clients)}
                        steps_after, rows_after = decode_stats(port, key)
                        run["mean_batch"] = (rows_after - rows_before) / max(steps_after - steps, 1)
                        runs[(name, clients)].append(run)
                        print(f"  [{dtype}] repeat {repeat}: {name:<26} {clients:>2} clients: "
                              f"{run['tokens_per_s']:.1f} tokens/s", flush=True)
        memory["peak_8_vintages_resident"] = watch.peak
    finally:
        stop_server(process)
    return runs, memory


def report(args, out: Path, dtype: str, scenarios: dict, runs: dict, memory: dict) -> None:
    print(f"\n[{dtype}]")
    low, top = min(args.clients), max(args.clients)
    rows = [summarise(runs[(name, c)]) for name in scenarios for c in args.clients]
    for row in rows:
        row["speedup"] = paired(runs, (row["scenario"], row["clients"]), (row["scenario"], low))[0]
    print()
    print(table(rows))
    print(f"(tokens/s: median of {args.repeats} repeats run round-robin; x {low} client: median of the same-repeat "
          f"ratios; latencies over every request of the repeats; batch: mean rows per decoding step)")
    print()
    pit, alone, spread = list(scenarios)
    for clients in args.clients:
        r, lo, hi = paired(runs, (pit, clients), (alone, clients))
        v, vlo, vhi = paired(runs, (spread, clients), (pit, clients))
        print(f"{clients:>2} clients: point-in-time / frontier alone = {r:.2f} ({lo:.2f}-{hi:.2f}; goal >= 0.75); "
              f"{args.vintages} vintages / 1 vintage = {v:.2f} ({vlo:.2f}-{vhi:.2f})")
    r, lo, hi = paired(runs, (pit, top), (pit, low))
    print(f"point-in-time at {top} clients / {low} client: {r:.2f}x ({lo:.2f}-{hi:.2f}; goal >= 4)")
    gib = 1 << 30
    print(f"memory before vintages load: replica RSS {memory['before_vintages']['replica_rss'] / gib:.2f} GiB, "
          f"server {memory['before_vintages']['server_rss'] / gib:.2f} GiB")
    peak = memory["peak_8_vintages_resident"]
    print(f"peak with {args.vintages} vintages resident: replica RSS {peak['replica_rss'] / gib:.2f} GiB "
          f"(PSS {peak['replica_pss'] / gib:.2f}), whole server RSS {peak['server_rss'] / gib:.2f} GiB "
          f"(PSS {peak['server_pss'] / gib:.2f})")
    raw = {f"{name} / {c}": [{k: v for k, v in r.items() if k not in ("ttft", "latency")} for r in rs]
           for (name, c), rs in runs.items()}
    (out / f"results-{dtype}.json").write_text(json.dumps({"args": vars(args), "dtype": dtype, "rows": rows,
                                                           "runs": raw, "memory": memory}, indent=2))
    print(f"results: {out / f'results-{dtype}.json'}")


if __name__ == "__main__":
    main()
