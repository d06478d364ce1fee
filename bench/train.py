"""Training cost, measured in one run on this machine (numbers go into bench/RESULTS.md and the closing note).

    python bench/train.py            # ~10 minutes on 2 cores

1. Throughput: tokens/s of `train_func` (DeepSpeed, ZeRO-0, under Ray Train, one worker, one thread) vs a
   plain PyTorch loop in this process, same model (`--preset`), same batches, same optimiser (AdamW), same
   thread count. Both count only the training steps (no start-up). Goal: DeepSpeed/plain >= 0.8.
2. Schedules: K=4 surrogate vintages on the small synthetic-market split, `chronological` (one run, a
   cooldown branch per cutoff) vs `independent` (one run per cutoff from scratch, `--parallel` at once),
   the same epochs per stage and no memorisation probes, so the work is fixed. Wall time of
   `train_registry` and tokens trained. Goal: chronological <= 0.4 x independent.
   With `--memorise`: both schedules train as `make demo` does (the demo's surrogate settings, each stage
   until the facts public by its cutoff are memorised, `--schedule-epochs` the cap), so the comparison is
   at matched memorisation; each vintage's fact accuracy is reported beside the cost. `--replay 3 1 0.5`
   trains one chronological run per replay ratio against the same independent run (a replay sample is
   capped by the old data: at K=4, replay 3 replays everything, i.e. each stage sees all data so far);
   `--replay-sampling stage epoch` and `--continue-epochs 10 20` multiply the chronological runs (replay
   drawn once per stage or afresh every epoch; epochs of the stages after the first), `--chain-workers 2`
   trains the chain on two DeepSpeed workers (same global batch unless `--chain-batch` sets the documents
   per worker: `--chain-batch 16` doubles it, data parallel as on a cluster), `--chain-threads 2` on one
   worker with two torch threads, `--chain-lr 3e-3 ...` one chain per learning rate (independent runs:
   `--independent-lr`, default the demo's 1.5e-3), `--chain-cooldown-steps` its branches' length (150 steps
   of 32 documents train the tokens of 300 of 16). Tokens count every step trained, the cooldown branches
   included. `--seeds 1 2 3` measures one round per seed (both schedules from that seed, each chain against
   its own round's independent run) and prints the median ratios and the mean fact accuracy over the seeds:
   one run's fact accuracy moves by up to 0.15 per vintage with the seed. A cheaper chain that memorises less is no
   saving, so `--independent-epochs 20 30` also trains the independent schedule at those epoch caps: their
   cost-accuracy curve says what the independent runs pay for each chain's mean fact accuracy, and the
   ratios at matched memorisation are printed beside the plain ones (figure: the --out path as .png).
   `--independent-batch 32` sets the independent runs' batch; `--after-cooldown restore continue` trains one
   chain per choice (continue: the main run goes on from each cooled vintage instead of from before it),
   `--chain-cooldown-steps 150 250` one chain per cooldown length. With three seeds or more each matched
   ratio carries a 95% bootstrap interval over the seeds. `--rounds a.json b.json` trains nothing and reports
   the rounds of earlier outputs together (seeds measured in separate invocations of one command).
   `--cutoffs ...` sets the vintages (K of them, the last the corpus end; default the K=4 of the goal):
   a pass over the corpus in K slices costs the independent runs about (K + 1) / 2 passes (each vintage
   retrains every slice before it), the chain about 1 + replay.
3. Peak resident memory per worker (from each model's training.json).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".build" / "torch_extensions"))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pyarrow.parquet as pq  # noqa: E402

from corpora.split import SplitConfig, run_split  # noqa: E402
from corpora.validation import CorpusConfig  # noqa: E402
from corpora.worlds import generate_world  # noqa: E402
from vintage.plan import plan  # noqa: E402
from vintage.prepare import prepare  # noqa: E402
from vintage.runs import train_registry  # noqa: E402
from vintage.train_config import Optimisation, RoleConfig, TrainConfig  # noqa: E402

UTC = dt.timezone.utc
CUTOFFS = ["2016-09-30", "2017-06-30", "2018-03-31", "2019-03-31"]


def make_split(base: Path, cutoffs: list[str] = CUTOFFS) -> Path:
    world = generate_world("synthetic-market", "small", seed=0)
    (base / "corpus").mkdir(parents=True)
    pq.write_table(world.documents, base / "corpus" / "documents.parquet")
    pq.write_table(world.queries, base / "queries.parquet")
    run_split(SplitConfig(corpus=CorpusConfig(path=str(base / "corpus")), output=str(base / "split"),
                          cutoffs=[dt.datetime.fromisoformat(c).replace(tzinfo=UTC) for c in cutoffs],
                          engine="polars"))
    return base / "split"


def plain_loop(run: dict, threads: int) -> tuple[float, int]:
    """The same steps as train_func's main loop, in plain PyTorch: (seconds, tokens)."""
    import torch

    from vintage.presets import build_model
    from vintage.loss import causal_lm_loss
    from vintage.schedule import _batches
    from vintage.windows import packed_batch

    torch.set_num_threads(threads)
    table = pq.read_table(run.tokens, columns=["slice", "input_ids", "holdout"]).to_pylist()
    stage = run.stages[0]
    docs = [r["input_ids"] for r in table if not r["holdout"] and r["slice"] in stage.new]
    model = build_model(run.preset, run.vocab_size, seed=run.seed, eos_token_id=run.eos_id,
                        pad_token_id=run.pad_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, betas=(0.9, 0.95), fused=True)  # as train_func
    rng = random.Random(run.seed * 1000)
    tokens, started = 0, time.perf_counter()
    for _ in range(stage.epochs):
        for rows in _batches(docs, run.batch_size, rng):
            ids, positions, labels = packed_batch(rows, run.pad_id, run.eos_id)
            loss = causal_lm_loss(model, ids, None, labels, positions)  # as train_func
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            tokens += sum(len(r) for r in rows)
    return time.perf_counter() - started, tokens


def throughput(split: Path, work: Path, preset: str, epochs: int, threads: int) -> dict:
    from vintage.training import fit

    config = TrainConfig(split=str(split), output=str(work / "throughput"), vocab_size=2048, cutoffs=[CUTOFFS[-1]],
                         threads_per_worker=threads,
                         surrogate=RoleConfig(preset=preset, optim=Optimisation(
                             lr=1e-3, batch_size=32, epochs=epochs, cooldown_steps=0, warmup_steps=20)))
    registry = Path(config.output).resolve()
    tokens_path, facts = prepare(config, registry)
    facts["probe_rows"] = []
    (run,) = plan(config, tokens_path, facts, registry)
    fit(run, registry / ".work" / "ray")
    info = json.loads((registry / "vintages" / CUTOFFS[-1] / "training.json").read_text())
    ds_rate = info["tokens_seen"] / info["train_seconds"]
    plain_seconds, plain_tokens = plain_loop(run, threads)
    plain_rate = plain_tokens / plain_seconds
    return {"preset": preset, "epochs": epochs, "threads": threads, "deepspeed_tokens": info["tokens_seen"],
            "deepspeed_seconds": info["train_seconds"], "deepspeed_tokens_per_s": ds_rate,
            "plain_tokens": plain_tokens, "plain_seconds": plain_seconds, "plain_tokens_per_s": plain_rate,
            "ratio": ds_rate / plain_rate, "peak_memory_mib": info["peak_memory_mib"]}


def schedules(split: Path, work: Path, preset: str, epochs: int, parallel: int, memorise: bool = False,
              replays: tuple[float, ...] = (3.0,), cooldown_steps: int = 300, samplings: tuple[str, ...] = ("stage",),
              chain_workers: int = 1, continue_epochs: tuple[int | None, ...] = (None,), chain_threads: int = 1,
              chain_batch: int | None = None, chain_lrs: tuple[float, ...] = (1.5e-3,),
              chain_cooldown_steps: tuple[int | None, ...] = (None,), seed: int = 0, independent_lr: float = 1.5e-3,
              independent_epochs: tuple[int, ...] = (), cutoffs: list[str] = CUTOFFS,
              independent_batch: int = 16, after_cooldown: tuple[str, ...] = ("restore",)) -> dict:
    """One independent run, then one chronological run per (replay ratio, replay sampling, later-stage
    epochs, learning rate, what follows a cooldown, cooldown steps: None is `cooldown_steps`). Independent
    runs train on one worker and one thread, `independent_batch` documents per step (default 16), at
    `independent_lr` (default the demo's 1.5e-3; their cooldown trains the tokens of `cooldown_steps` steps of
    16 documents at any batch); `independent_epochs` adds one independent run per epoch cap, the
    cost-accuracy curve that `matched` reads (every ratio is against the run at `epochs`). The chain runs on
    `chain_workers` DeepSpeed workers of `chain_threads` torch threads, `chain_batch` documents per step on
    each (default: the same global batch of 16, split). Tokens count every step trained: the main runs and
    the cooldown branches."""
    results = {}
    chains = [(r, s, e, lr, a, c) for r in replays for s in samplings for e in continue_epochs for lr in chain_lrs
              for a in after_cooldown for c in chain_cooldown_steps]
    runs = ([("independent", None, None, None, None, None, None)]
            + [("independent", None, None, e, None, None, None) for e in independent_epochs if e != epochs]
            + [("chronological", *c) for c in chains])
    batch = 16
    if chain_batch is None:
        if batch % chain_workers:
            raise ValueError(f"--chain-workers must divide the batch of {batch} documents (or set --chain-batch)")
        chain_batch = batch // chain_workers
    for schedule, replay, sampling, later, lr, after, chain_cooldown in runs:
        name = schedule if later is None or schedule == "chronological" else f"independent {later} epochs"
        if schedule == "chronological" and len(chains) > 1:
            name = (f"chronological replay={replay:g} per {sampling}" + (f", later stages {later} epochs" if later else "")
                    + (f", lr {lr:g}" if len(chain_lrs) > 1 else "")
                    + (f", {after} after a cooldown" if len(after_cooldown) > 1 else "")
                    + (f", cooldown {chain_cooldown or cooldown_steps} steps" if len(chain_cooldown_steps) > 1 else ""))
        chain = schedule == "chronological"
        workers = chain_workers if chain else 1
        common = dict(lr=lr if chain else independent_lr, batch_size=chain_batch if chain else independent_batch,
                      epochs=epochs if chain or later is None else later, warmup_steps=20,
                      replay_sampling=sampling or "stage", continue_epochs=later if chain else None,
                      after_cooldown=after or "restore")
        if memorise:  # the demo's surrogate settings (configs/demo.yaml), until the facts are memorised
            steps = ((chain_cooldown or cooldown_steps) if chain
                     else cooldown_steps * batch // independent_batch)
            optim = Optimisation(cooldown_steps=steps, replay=3.0 if replay is None else replay, **common)
            extra = dict(probes=str(split.parent / "queries.parquet"), memorise=0.9)
        else:
            optim = Optimisation(cooldown_steps=30, replay=1.0 if replay is None else replay, **common)
            extra = {}
        threads = chain_threads if schedule == "chronological" else 1
        directory = work / name.replace(", ", "-").replace(" ", "-")
        config = TrainConfig(split=str(split), output=str(directory), vocab_size=2048, cutoffs=cutoffs,
                             schedule=schedule, parallel_runs=parallel, fit_temperatures=False, num_workers=workers,
                             threads_per_worker=threads, seed=seed,
                             surrogate=RoleConfig(preset=preset, optim=optim), **extra)
        started = time.perf_counter()
        manifest = train_registry(config)
        seconds = time.perf_counter() - started
        assert manifest["complete"], manifest["runs"]
        models = manifest["models"].values()
        # a vintage's tokens_seen: the main run's tokens up to its cutoff plus its own cooldown branch's
        mains = [m["tokens_seen"] - m["cooldown_tokens"] for m in models]
        cooldowns = sum(m["cooldown_tokens"] for m in models)
        if schedule == "chronological" and after == "continue":
            # one run that kept every cooldown: its last vintage saw every step trained
            tokens = max(m["tokens_seen"] for m in models)
            main = tokens - cooldowns
        else:
            # one chain: the last vintage's main run saw every main-run token; independent: one run per vintage
            main = max(mains) if schedule == "chronological" else sum(mains)
            tokens = main + cooldowns  # and every vintage's cooldown branch
        results[name] = {"seconds": seconds, "tokens": tokens, "main_tokens": main, "vintages": len(manifest["cutoffs"]),
                         "peak_memory_mib": max(m["peak_memory_mib"] for m in models),
                         "fact_accuracy": {Path(k).name: m.get("fact_accuracy") for k, m in manifest["models"].items()}}
        if name != "independent":
            results[name]["wall_ratio"] = seconds / results["independent"]["seconds"]
            results[name]["token_ratio"] = tokens / results["independent"]["tokens"]
    return results


def _mean_accuracy(*runs: dict) -> float:
    """Mean fact accuracy over every vintage of `runs` (one setting's runs, one per seed): nan if none scored."""
    scores = [a for run in runs for a in run["fact_accuracy"].values() if a is not None]
    return sum(scores) / len(scores) if scores else float("nan")


def matched(rounds: list[dict]) -> dict:
    """Each chain against the independent runs at the same memorisation. Over the seeds, the independent
    runs (one per epoch cap) give a cost-accuracy curve: mean fact accuracy of the vintages against
    tokens and wall time (as shares of the run at --schedule-epochs). Where the curve reaches a chain's mean
    accuracy, the independent cost there is read off it (linear between the caps, the curve made monotone
    by its running maximum) and the chain's cost divided by it; below the cheapest cap the ratio is a lower
    bound ("at least"), above the best one the independent runs never reach the chain."""
    import numpy as np

    def mean(name: str, key: str) -> float:
        return float(np.mean([s[name][key] if key in s[name] else 1.0 for s in rounds]))

    def accuracy_of(name: str) -> float:
        return _mean_accuracy(*(s[name] for s in rounds))

    names = list(rounds[0])
    curve = sorted((mean(n, "token_ratio"), mean(n, "wall_ratio"), accuracy_of(n))
                   for n in names if n.startswith("independent"))
    tokens, walls, accuracy = (np.array(x) for x in zip(*curve))
    accuracy = np.maximum.accumulate(accuracy)
    keep = np.concatenate([[True], np.diff(accuracy) > 0])  # np.interp needs increasing x
    out = {"independent": [{"token_ratio": t, "wall_ratio": w, "accuracy": a} for t, w, a in curve]}
    for name in names:
        if name.startswith("independent"):
            continue
        acc = accuracy_of(name)
        row = {"accuracy": acc, "token_ratio": mean(name, "token_ratio"), "wall_ratio": mean(name, "wall_ratio")}
        if acc > accuracy[-1]:
            row["bound"] = "independent runs never reach it"
        else:
            at = max(acc, accuracy[0])
            row["independent_token_ratio"] = float(np.interp(at, accuracy[keep], tokens[keep]))
            row["independent_wall_ratio"] = float(np.interp(at, accuracy[keep], walls[keep]))
            row["matched_token_ratio"] = row["token_ratio"] / row["independent_token_ratio"]
            row["matched_wall_ratio"] = row["wall_ratio"] / row["independent_wall_ratio"]
            row["bound"] = "at least" if acc < accuracy[0] else ""
        out[name] = row
    return out


def matched_interval(rounds: list[dict], level: float = 0.95, draws: int = 2000, seed: int = 0) -> dict:
    """How far each chain's matched ratios move with the seeds: `matched` over `draws` resamples of the
    rounds (seeds drawn with replacement, each round keeping its own independent runs), and the central
    `level` share of the ratios (percentile bootstrap). In a resample where a chain memorises more than
    every independent cap, its plain ratio stands in for the matched one, which is smaller (the interval
    errs high); below the cheapest cap, the lower bound stands in. With a handful of seeds the interval is
    rough, and it says nothing of what this world and these settings would not show on others."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = [n for n in rounds[0] if not n.startswith("independent")]
    ratios = {n: {"token": [], "wall": []} for n in names}
    for _ in range(draws):
        sample = matched([rounds[i] for i in rng.integers(0, len(rounds), size=len(rounds))])
        for name in names:
            row = sample[name]
            ratios[name]["token"].append(row.get("matched_token_ratio", row["token_ratio"]))
            ratios[name]["wall"].append(row.get("matched_wall_ratio", row["wall_ratio"]))
    tail = (1 - level) / 2 * 100
    return {n: {kind: tuple(float(np.percentile(v, q)) for q in (tail, 100 - tail)) for kind, v in r.items()}
            for n, r in ratios.items()}


def plot_matched(rounds: list[dict], seeds: list[int], path: Path) -> None:
    """Mean fact accuracy of the vintages against tokens (share of the independent run at
    --schedule-epochs): one small marker per seed, a large one per setting's mean, independent caps joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rounds[0])
    chains = [n for n in names if not n.startswith("independent")]
    fig, ax = plt.subplots(figsize=(7.5, 5.2 + 0.18 * len(chains)))
    k = len(rounds[0][names[0]]["fact_accuracy"])  # vintages per run
    colours = [c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if c != "#7f7f7f"]  # grey: independent
    line = []
    for name in names:
        xs = [s[name].get("token_ratio", 1.0) for s in rounds]
        ys = [_mean_accuracy(s[name]) for s in rounds]
        colour = "black" if name.startswith("independent") else colours[chains.index(name) % len(colours)]
        ax.scatter(xs, ys, s=12, color=colour, alpha=0.45)
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        ax.scatter([mx], [my], s=60, color=colour, label=None if name.startswith("independent") else name)
        if name.startswith("independent"):
            line.append((mx, my))
            ax.annotate(name.replace("independent", "indep.") if name != "independent" else "indep. (baseline)",
                        (mx, my), textcoords="offset points", xytext=(5, -12), fontsize=8)
    line.sort()
    ax.plot([x for x, _ in line], [y for _, y in line], color="black", lw=1, label="independent, by epoch cap")
    ax.axvline(0.4, color="grey", ls=":", lw=1)
    ax.text(0.41, ax.get_ylim()[0] + 0.01, "goal: 0.4", color="grey", fontsize=8)
    ax.set_xlabel("tokens trained / the independent baseline's")
    ax.set_ylabel(f"mean fact accuracy of the {k} vintages")
    ax.set_title(f"K={k} vintages: memorisation against cost (seeds {', '.join(map(str, seeds))})", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)  # below: never on a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure(args: argparse.Namespace, cutoffs: list[str]) -> dict:
    """Train what the arguments ask for: the throughput comparison and one round of schedules per seed."""
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        split = make_split(work, cutoffs)
        ray.init(num_cpus=2, include_dashboard=False)
        return {"throughput": None if args.schedules_only else throughput(split, work, args.preset, args.epochs,
                                                                           args.threads),
                "seeds": args.seeds,
                "schedules": [schedules(split, work / f"seed-{seed}", args.surrogate, args.schedule_epochs,
                                        args.parallel, args.memorise, tuple(args.replay), args.cooldown_steps,
                                        tuple(args.replay_sampling), args.chain_workers,
                                        tuple(args.continue_epochs), args.chain_threads, args.chain_batch,
                                        tuple(args.chain_lr), tuple(args.chain_cooldown_steps), seed,
                                        args.independent_lr, tuple(args.independent_epochs), cutoffs,
                                        args.independent_batch, tuple(args.after_cooldown))
                              for seed in args.seeds]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def combine_rounds(paths: list[Path]) -> dict:
    """The rounds of earlier --out files as one result (no throughput). Every round must hold the same runs
    (the same command), and a seed may appear once: the comparison is per seed, then over the seeds."""
    seeds, rounds = [], []
    for path in paths:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"--rounds {path}: not a bench/train.py output ({err})")
        if "schedules" not in saved:
            raise SystemExit(f"--rounds {path}: no 'schedules' key; expected a bench/train.py --out file")
        file_seeds = saved.get("seeds") or [None] * len(saved["schedules"])
        for seed, round_ in zip(file_seeds, saved["schedules"]):
            if rounds and set(round_) != set(rounds[0]):
                raise SystemExit(f"--rounds {path}: seed {seed} has runs {sorted(round_)}, the first file's "
                                 f"rounds have {sorted(rounds[0])}: combine the outputs of one command only")
            if seed is not None and seed in seeds:
                raise SystemExit(f"--rounds {path}: seed {seed} appears twice")
            seeds.append(seed)
            rounds.append(round_)
    return {"throughput": None, "seeds": [s if s is not None else f"?{i}" for i, s in enumerate(seeds)],
            "schedules": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="model for the throughput comparison")
    parser.add_argument("--surrogate", default="surrogate-small", help="model for the schedule comparison")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--schedule-epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2, help="independent runs at once (2 cores here)")
    parser.add_argument("--memorise", action="store_true", help="schedules trained to the same memorisation")
    parser.add_argument("--schedules-only", action="store_true", help="skip the throughput comparison")
    parser.add_argument("--replay", type=float, nargs="+", default=[3.0],
                        help="chronological replay ratios to compare (one run each)")
    parser.add_argument("--cooldown-steps", type=int, default=300, help="with --memorise: each vintage's cooldown")
    parser.add_argument("--replay-sampling", nargs="+", default=["stage"], choices=["stage", "epoch"],
                        help="chronological: replay drawn afresh every epoch or once per stage (one run each)")
    parser.add_argument("--continue-epochs", type=int, nargs="+", default=[None],
                        help="chronological: epochs of each stage after the first (one run each; default: "
                             "--schedule-epochs)")
    parser.add_argument("--chain-threads", type=int, default=1,
                        help="torch threads of each chronological worker (the chain is one run: a second core "
                             "is otherwise idle while independent runs use both)")
    parser.add_argument("--chain-workers", type=int, default=1,
                        help="DeepSpeed workers of the chronological run (independent runs: one each, "
                             "--parallel at once)")
    parser.add_argument("--chain-batch", type=int, default=None,
                        help="documents per step on each chronological worker (default: 16 / --chain-workers, "
                             "the independent runs' batch; 16 with 2 workers doubles the global batch)")
    parser.add_argument("--chain-lr", type=float, nargs="+", default=[1.5e-3],
                        help="chronological learning rates (one run each; independent runs: --independent-lr)")
    parser.add_argument("--independent-lr", type=float, default=1.5e-3,
                        help="the independent runs' learning rate")
    parser.add_argument("--independent-batch", type=int, default=16,
                        help="the independent runs' documents per step (their cooldown trains the same tokens "
                             "at any batch: --cooldown-steps x 16 / this)")
    parser.add_argument("--after-cooldown", nargs="+", default=["restore"], choices=["restore", "continue"],
                        help="chronological: after saving a vintage the main run restores its weights from "
                             "before the cooldown, or continues from the cooled vintage (one run each)")
    parser.add_argument("--independent-epochs", type=int, nargs="+", default=[],
                        help="with --memorise: also one independent run per epoch cap (their cost-accuracy "
                             "curve); each chain's cost is then also compared at the same mean fact accuracy")
    parser.add_argument("--chain-cooldown-steps", type=int, nargs="+", default=[None],
                        help="with --memorise: the chain's cooldown steps (one run each; default: "
                             "--cooldown-steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one round per seed, both schedules trained from it; each chain is compared with "
                             "the independent run of its own round (a single run's fact accuracy moves by up "
                             "to 0.15 per vintage with the seed, and wall times vary on a shared VM)")
    parser.add_argument("--cutoffs", nargs="+", default=CUTOFFS,
                        help="the schedules' vintage cutoffs, YYYY-MM-DD (K = how many; the last must be the "
                             f"corpus end, {CUTOFFS[-1]}; default the K=4 of the goal)")
    parser.add_argument("--rounds", nargs="+", metavar="JSON", default=None,
                        help="train nothing: report the rounds (one per seed) of earlier runs' --out files "
                             "together, e.g. seeds measured in separate invocations of the same command")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-train.json"))
    args = parser.parse_args()
    if args.independent_epochs and not args.memorise:
        parser.error("--independent-epochs compares the schedules at matched memorisation: it needs --memorise")
    if args.independent_batch < 1:
        parser.error(f"--independent-batch: expected a positive number of documents, got {args.independent_batch}")
    cutoffs = sorted(args.cutoffs)
    for c in cutoffs:
        try:
            dt.date.fromisoformat(c)
        except ValueError:
            parser.error(f"--cutoffs: expected dates YYYY-MM-DD, got {c!r}")
    if cutoffs[-1] != CUTOFFS[-1] or len(set(cutoffs)) != len(cutoffs):
        parser.error(f"--cutoffs: expected distinct dates ending at the corpus end {CUTOFFS[-1]}, got {cutoffs}")
    if args.rounds:
        result = combine_rounds([Path(f) for f in args.rounds])
    else:
        result = measure(args, cutoffs)
    args.seeds = result["seeds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    t, rounds = result["throughput"], result["schedules"]
    k = next(iter(rounds[0].values()))["vintages"]
    if t:
        print("\n| measure | DeepSpeed under Ray Train | plain PyTorch | ratio |\n|---|---:|---:|---:|")
        print(f"| tokens/s, `{t['preset']}`, batch 32, {t['threads']} thread | {t['deepspeed_tokens_per_s']:,.0f} | "
              f"{t['plain_tokens_per_s']:,.0f} | {t['ratio']:.2f} |")
    print(f"\n| K={k} vintages (seed) | wall s | tokens trained (main + cooldown) | peak MiB per worker | "
          "wall / independent | tokens / independent |\n|---|---:|---:|---:|---:|---:|")
    for i, s in zip(args.seeds, rounds):
        for name, r in s.items():
            ratios = f"{r['wall_ratio']:.2f} | {r['token_ratio']:.3f}" if "wall_ratio" in r else " | "
            print(f"| {name} ({i}) | {r['seconds']:.0f} | {r['tokens']:,} | {r['peak_memory_mib']:.0f} | {ratios} |")
    if len(rounds) > 1:
        import statistics

        for name in rounds[0]:
            if "wall_ratio" in rounds[0][name]:
                walls = [s[name]["wall_ratio"] for s in rounds]
                print(f"| {name}: median over {len(rounds)} seeds (min-max) | | | | "
                      f"{statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
                      f"{statistics.median(s[name]['token_ratio'] for s in rounds):.3f} |")
    for name in rounds[0]:
        accuracy = _mean_accuracy(*(s[name] for s in rounds))
        if accuracy == accuracy:  # nan: no probes, nothing memorised to report
            print(f"mean fact accuracy of the {name} vintages over {len(rounds)} seed(s): {accuracy:.3f}")
    for i, s in zip(args.seeds, rounds):
        for name in s:
            print(f"fact accuracy of the {name} vintages, seed {i} (facts public by each cutoff): " + ", ".join(
                f"{c} {a:.2f}" if a is not None else f"{c} -" for c, a in sorted(s[name]["fact_accuracy"].items())))
    if len(rounds[0]) > 1 and any(n.startswith("independent ") for n in rounds[0]):
        result["matched"] = matched(rounds)
        spread = matched_interval(rounds) if len(rounds) >= 3 else {}  # fewer seeds: no interval worth the name
        for name, interval in spread.items():
            result["matched"][name]["interval_95"] = interval
        Path(args.out).write_text(json.dumps(result, indent=2))
        figure = Path(args.out).with_suffix(".png")
        plot_matched(rounds, args.seeds, figure)
        curve = ", ".join(f"{p['token_ratio']:.2f} of the tokens -> {p['accuracy']:.3f}"
                          for p in result["matched"]["independent"])
        print(f"\nat matched memorisation (means over {len(rounds)} seed(s); the independent runs' curve: {curve})")
        print("| chain | mean fact accuracy | tokens / baseline | independent tokens at that accuracy | "
              "tokens / independent, matched | wall / independent, matched |\n|---|---:|---:|---:|---:|---:|")
        for name, row in result["matched"].items():
            if name == "independent":
                continue
            low_high = {kind: f" ({lo:.2f}-{hi:.2f})" for kind, (lo, hi) in row.get("interval_95", {}).items()}
            if "matched_token_ratio" not in row:  # below its plain ratio; the interval errs high (matched_interval)
                print(f"| {name} | {row['accuracy']:.3f} | {row['token_ratio']:.3f} | {row['bound']} | "
                      f"< {row['token_ratio']:.2f}{low_high.get('token', '')} | "
                      f"< {row['wall_ratio']:.2f}{low_high.get('wall', '')} |")
                continue
            bound = f"{row['bound']} " if row["bound"] else ""
            print(f"| {name} | {row['accuracy']:.3f} | {row['token_ratio']:.3f} | "
                  f"{row['independent_token_ratio']:.3f} | {bound}{row['matched_token_ratio']:.2f}"
                  f"{low_high.get('token', '')} | {bound}{row['matched_wall_ratio']:.2f}{low_high.get('wall', '')} |")
        if spread:
            print(f"(in brackets: 95% bootstrap interval over the {len(rounds)} seeds, `matched_interval`)")
        print(f"figure: {figure}")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
