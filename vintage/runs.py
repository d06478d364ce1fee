"""A training run: from a split to a model registry (tokenizer, surrogate vintages, frontier, retrained gold).

    python -m pipelines.train --config configs/train/tiny.yaml
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from corpora.config import doc
from corpora.files import replace_directory, short_hash, write_text_atomically
from corpora.split import read_slices
from corpora.timeline import known_by
from vintage.holdout import holdout_mask


@dataclass
class Optimisation:
    """How one model is trained."""

    lr: float = doc("peak learning rate (lower for wider models: RESEARCH.md exp. 3)", 1e-3)
    weight_decay: float = doc("AdamW weight decay", 0.0)
    batch_size: int = doc("windows (of max_length tokens: vintage/windows.py) per step per worker: a step trains "
                          "batch_size x num_workers windows, split over the workers by length", 32)
    warmup_steps: int = doc("linear warm-up at the start of the run", 20)
    epochs: int = doc("passes over each stage's windows", 3)
    continue_epochs: int | None = doc(
        "chronological: passes over each later stage's documents (the model is warm: it knows the language "
        "and the earlier slices); unset: `epochs`", None)
    replay: float = doc("chronological: replayed earlier documents per new document", 1.0)
    replay_sampling: Literal["stage", "epoch"] = doc(
        "chronological: draw the replayed documents once per stage (the same part of the old data every "
        "epoch) or afresh every epoch (over a stage they cover it)", "stage")
    cooldown_steps: int = doc("steps of the learning-rate cooldown branch saved as each vintage", 30)
    after_cooldown: Literal["restore", "continue"] = doc(
        "chronological: after a vintage is saved the main run restores its weights from before the cooldown "
        "branch (`restore`) or continues from the cooled vintage (`continue`: the cooldown's pass over "
        "everything up to the cutoff is kept, and the next stage warms up again over `warmup_steps`; it "
        "memorised more at the same tokens in bench/RESULTS.md, session 10)", "restore")
    max_length: int | None = doc("tokens per training window: documents are packed end to end, EOS after each, "
                                 "and cut every max_length tokens (none is dropped); at most the preset's context; "
                                 "unset: the preset's context", None)


@dataclass
class RoleConfig:
    """One role of the run: a preset and how to train it."""

    preset: str = doc("model preset (vintage.presets)")
    optim: Optimisation = doc("optimisation settings", default=None)
    seeds: list[int] = doc("retrained role: seeds to train per cutoff", default=[0])

    def __post_init__(self):
        if self.optim is None:
            self.optim = Optimisation()


@dataclass
class NgramConfig:
    """N-gram surrogates counted per slice beside the neural ones (vintage.ngram)."""

    order: int = doc("n of the n-grams; 5 on the embedded worlds, where a fact's company name sits 4 tokens "
                     "before its answer ('Ralecorp 2017q2 results: miss'): order 4 cannot tell companies "
                     "apart (full-surrogate fact accuracy 0.59; order 5: 0.86; order 6, sparser: 0.74)", 5)
    min_count: int = doc("prune n-grams (order >= 2) seen fewer times than this in a vintage", 1)
    engine: Literal["ray", "local"] = doc("count with Ray Data (ray) or in this process (local)", "ray")


@dataclass
class TrainConfig:
    """A training run over a split."""

    surrogate: RoleConfig = doc("the surrogate vintages")
    split: str = doc("split output directory (the end-to-end pipeline fills it in)", "")
    output: str = doc("model registry directory to write (the end-to-end pipeline fills it in)", "")
    cutoffs: list[str] | None = doc("vintage cutoffs among the split's slices; default: all of them", None)
    schedule: Literal["chronological", "independent"] = doc("how surrogate vintages are trained", "chronological")
    tokenizer: str | None = doc("the frontier's tokenizer directory; unset: a BPE trained on the split", None)
    vocab_size: int = doc("BPE vocabulary when the tokenizer is trained here", 2048)
    frontier: RoleConfig | str | None = doc(
        "embedded worlds: a frontier trained on all data (a role); or your own pretrained frontier, a Hugging Face "
        "causal LM directory with safetensors and its tokenizer (a path: none is trained, its tokenizer is the "
        "run's, and the registry's later stages use it; vintage.frontier.check_frontier says what it needs)", None)
    retrained: RoleConfig | None = doc("embedded worlds: the frontier preset retrained at retrained_cutoffs "
                                       "(not with your own frontier: its architecture is not a preset)", None)
    retrained_cutoffs: list[str] = doc("cutoffs with a retrained gold model", default=[])
    num_workers: int = doc("Ray Train workers per run", 1)
    use_gpu: bool = doc("train on GPUs", False)
    bf16: bool = doc("with use_gpu: train in bfloat16 where the GPU supports it (DeepSpeed's bf16 mode)", True)
    zero_stage: int = doc("DeepSpeed ZeRO stage (0-2 verified on CPU)", 0)
    threads_per_worker: int = doc("torch threads in each worker", 1)
    holdout_every: int = doc("one document in this many is held out for validation loss", 20)
    seed: int = doc("seed of the surrogates", 0)
    max_failures: int = doc("worker failures a run survives (it resumes from its last checkpoint)", 2)
    parallel_runs: int = doc("Ray Train runs at once (independent vintages, frontier, retrained seeds)", 2)
    probes: str | None = doc("queries parquet whose fact queries (kind == 'fact') are known by a stage's "
                             "cutoff: train each stage until they are memorised (embedded worlds)", None)
    memorise: float = doc("with probes: stop a stage once its fact accuracy reaches this (epochs cap it)", 0.95)
    ngram: NgramConfig | None = doc("also count n-gram surrogates per slice (no training); unset: none", None)
    fit_temperatures: bool = doc("fit each surrogate's confidence-matching temperature against the frontier "
                                 "on held-out text (needs a frontier)", True)

    def __post_init__(self):
        window_length(self)  # every preset must hold the run's windows: an error at load, not in a worker
        if not isinstance(self.frontier, str):
            return
        if not self.frontier:
            raise ValueError("frontier: expected a directory (your own Hugging Face causal LM) or a role mapping")
        if self.retrained is not None or self.retrained_cutoffs:
            raise ValueError(f"retrained: the gold model is the frontier's architecture retrained from scratch, "
                             f"and your own frontier ({self.frontier}) is not a preset; leave retrained and "
                             f"retrained_cutoffs out")
        if self.tokenizer and Path(self.tokenizer).resolve() != Path(self.frontier).resolve():
            raise ValueError(f"tokenizer: with your own frontier its tokenizer is the run's; leave tokenizer unset "
                             f"(got {self.tokenizer}, frontier {self.frontier})")

    @property
    def frontier_dir(self) -> str | None:
        """Your own frontier's directory (frontier: DIR); None when the frontier is a role or absent."""
        return self.frontier if isinstance(self.frontier, str) else None

    @property
    def frontier_role(self) -> RoleConfig | None:
        """The frontier this run trains; None with your own frontier or none."""
        return None if isinstance(self.frontier, str) else self.frontier


def check_external_frontier(config: TrainConfig, where: str = "frontier"):
    """Your own frontier checked against the run (vintage.frontier.check_frontier): its FrontierInfo, or
    None when the frontier is trained here."""
    if config.frontier_dir is None:
        return None
    from vintage.frontier import check_frontier

    return check_frontier(config.frontier_dir, window_length(config), where=where)


def prepare(config: TrainConfig, registry: Path) -> tuple[Path, dict]:
    """Tokenizer and tokenised documents for the workers; returns (tokens parquet, facts about them)."""
    from vintage.tokenizer import load_tokenizer, tokenizer_hash, train_bpe
    from vintage.windows import pack

    slices = read_slices(config.split)
    if slices.num_rows == 0:
        raise ValueError(f"{config.split}: the split has no documents")
    work = registry / ".work"
    work.mkdir(parents=True, exist_ok=True)
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
    elif (registry / "tokenizer" / "tokenizer.json").exists():
        # a registry keeps its tokenizer as the corpus grows: its models stay comparable and a grown
        # chronological run can continue (delete the registry to train a new BPE)
        tokenizer = load_tokenizer(registry / "tokenizer")
        print(f"train: reusing the registry's tokenizer ({len(tokenizer)} tokens)", flush=True)
    else:
        tokenizer = train_bpe(slices["text"].to_pylist(), vocab_size=config.vocab_size)
    tokenizer.save_pretrained(registry / "tokenizer")
    eos = tokenizer.eos_token_id
    max_length = window_length(config)
    encoded = tokenizer(slices["text"].to_pylist(), add_special_tokens=False)["input_ids"]
    holdout = holdout_mask(slices["doc_id"].to_pylist(), config.holdout_every).to_pylist()
    streams: dict[tuple[str, bool], list[list[int]]] = {}  # (slice, held out) -> its documents, in split order
    for s, held, ids in zip(slices["slice"].to_pylist(), holdout, encoded):
        streams.setdefault((s, held), []).append(ids)
    rows = {"slice": [], "input_ids": [], "holdout": []}
    per_slice = {}
    for (s, held), docs in sorted(streams.items()):
        windows = pack(docs, max_length, eos)
        rows["slice"] += [s] * len(windows)
        rows["input_ids"] += windows
        rows["holdout"] += [held] * len(windows)
        entry = per_slice.setdefault(s, {"documents": 0, "tokens": 0, "windows": 0, "window_tokens": 0,
                                         "heldout_documents": 0})
        entry["heldout_documents" if held else "documents"] += len(docs)
        if not held:  # tokens: the trained documents' own; window_tokens: what training reads (with the EOS)
            entry["tokens"] += sum(len(d) for d in docs)
            entry["windows"] += len(windows)
            entry["window_tokens"] += sum(len(w) for w in windows)
    table = pa.table({"slice": pa.array(rows["slice"], pa.string()),
                      "input_ids": pa.array(rows["input_ids"], pa.list_(pa.int32())), "holdout": rows["holdout"]})
    tokens = work / "tokens.parquet"
    pq.write_table(table, tokens)
    slice_hash = {}
    for s in sorted(per_slice):
        part = slices.filter(pa.compute.equal(slices["slice"], s))
        slice_hash[s] = short_hash("\n".join(sorted(part["doc_id"].to_pylist())))
    probes = work / "probes.json"
    probes.write_text(json.dumps(_encode_probes(config.probes, tokenizer) if config.probes else []))
    facts = {"tokenizer_hash": tokenizer_hash(tokenizer), "probes": str(probes), "vocab_size": len(tokenizer), "eos_id": eos,
             "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
             "window": max_length,
             "slices": {s: {**entry, "content_hash": slice_hash[s]} for s, entry in sorted(per_slice.items())}}
    return tokens, facts


def window_length(config: TrainConfig) -> int:
    """The run's one window length (every role reads the same packed windows): the shortest of the roles'
    `max_length`, each unset one standing for its preset's context. A max_length beyond a preset's context
    is an error: the model has no positions for it."""
    from vintage.presets import get_preset

    lengths = []
    for name, role in (("surrogate", config.surrogate), ("frontier", config.frontier_role),
                       ("retrained", config.retrained)):
        if role is None:
            continue
        context = get_preset(role.preset).n_positions
        wanted = role.optim.max_length
        if wanted is not None and not 2 <= wanted <= context:
            raise ValueError(f"train config: {name}.optim.max_length: expected 2..{context} (preset "
                             f"{role.preset!r} has {context} positions), got {wanted}")
        lengths.append(wanted or context)
    return min(lengths)


def _encode_probes(path: str, tokenizer) -> list[dict]:
    """Fact queries as token ids with the instant they became public (their as_of, microseconds UTC)."""
    import pyarrow.compute as pc

    table = pq.read_table(path)
    if "kind" in table.column_names:
        table = table.filter(pc.equal(table["kind"], "fact"))
    rows = []
    for q in table.select(["as_of", "prompt", "choices", "answer"]).to_pylist():
        choices = list(q["choices"])
        if q["answer"] not in choices:
            raise ValueError(f"{path}: query {q['prompt']!r}: answer {q['answer']!r} is not one of {choices}")
        rows.append({"known_at": q["as_of"].isoformat(), "prompt": tokenizer(q["prompt"], add_special_tokens=False)["input_ids"],
                     "choices": [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices],
                     "answer": choices.index(q["answer"])})
    return rows


def _probes_known_by(facts: dict, cutoff: str) -> list[list]:
    """Probes public by the end of the `cutoff` day (the split's rule), as [prompt, choices, answer]."""
    return [[p["prompt"], p["choices"], p["answer"]] for p in facts["probe_rows"] if known_by(p["known_at"], cutoff)]


def _base(config: TrainConfig, role: RoleConfig, tokens: Path, facts: dict, name: str, seed: int) -> dict:
    o = role.optim
    return {"name": name, "preset": role.preset, "tokens": str(tokens), "vocab_size": facts["vocab_size"],
            "eos_id": facts["eos_id"], "pad_id": facts["pad_id"], "seed": seed, "lr": o.lr,
            "weight_decay": o.weight_decay, "batch_size": o.batch_size, "warmup_steps": o.warmup_steps,
            "replay": o.replay, "cooldown_steps": o.cooldown_steps, "zero_stage": config.zero_stage,
            "use_gpu": config.use_gpu, "bf16": config.use_gpu and config.bf16,
            "threads_per_worker": config.threads_per_worker,
            "memorise": config.memorise if config.probes else 0.0, "max_failures": config.max_failures,
            "window": facts["window"],  # documents are packed at this length: it shapes what is learned
            "corpus_tokens": {s: e["tokens"] for s, e in facts["slices"].items()}}


WINDOWS_FORMAT = "packed, positions restart per document"  # vintage/windows.py; change it when that changes

OPERATIONAL = ("tokens", "corpus_tokens", "max_failures", "pid_file", "resume_from", "run_hash", "scratch")  # how a run is executed, not what it learns


def _with_probes(run: dict, facts: dict) -> dict:
    """Each stage's probes (the facts public by its cutoff) and hashes of what makes a run, and each prefix
    of its stages, the same: settings, tokenizer, stages so far and the content of the slices they read.
    A stage whose hash matches a saved vintage's is not trained again; a run whose first k stages match
    continues from the checkpoint after stage k (a scheduled run that adds a cutoff trains one stage)."""
    for stage in run["stages"]:
        stage["probes"] = _probes_known_by(facts, stage["cutoff"]) if facts["probe_rows"] else []
    settings = json.dumps({k: v for k, v in run.items() if k not in OPERATIONAL + ("stages", "name")}, sort_keys=True)
    for i, stage in enumerate(run["stages"]):
        # where a stage is saved is not what it learns: a registry moved or copied elsewhere keeps its hashes
        prefix = [{k: v for k, v in s.items() if k not in ("stage_hash", "save_to")} for s in run["stages"][: i + 1]]
        read = {s: facts["slices"][s]["content_hash"] for p in prefix for s in p["known"] if s in facts["slices"]}
        stage["stage_hash"] = short_hash(settings + WINDOWS_FORMAT + facts["tokenizer_hash"]
                                   + json.dumps([prefix, read], sort_keys=True))
    run["run_hash"] = run["stages"][-1]["stage_hash"]
    return run


def plan(config: TrainConfig, tokens: Path, facts: dict, registry: Path) -> list[dict]:
    """The Ray Train runs of this config, each a train_func config."""
    slices = sorted(facts["slices"])
    cutoffs = sorted(config.cutoffs or slices)
    unknown = [c for c in cutoffs if c not in slices]
    if unknown:
        raise ValueError(f"cutoffs {unknown} are not slices of {config.split}; slices are {slices}")
    if cutoffs[-1] != slices[-1]:
        cutoffs.append(slices[-1])  # the full surrogate: the corpus end
    epochs = config.surrogate.optim.epochs
    runs = []
    if config.schedule == "chronological":
        stages, previous = [], []
        later = config.surrogate.optim.continue_epochs
        if later is not None and later < 1:
            raise ValueError(f"surrogate.optim.continue_epochs: expected a positive number of epochs, got {later}")
        later = later or epochs
        for c in cutoffs:
            new = [s for s in slices if s <= c and s not in previous]
            stages.append({"cutoff": c, "new": new, "replay": list(previous), "epochs": later if previous else epochs,
                           "known": previous + new, "save_to": str(registry / "vintages" / c)})
            previous = previous + new
        chain = {**_base(config, config.surrogate, tokens, facts, "surrogates-chronological", config.seed),
                 "stages": stages}
        if config.surrogate.optim.replay_sampling != "stage":  # the default stays out: registries keep their hashes
            chain["replay_sampling"] = config.surrogate.optim.replay_sampling
        if config.surrogate.optim.after_cooldown != "restore":
            chain["after_cooldown"] = config.surrogate.optim.after_cooldown
        runs.append(chain)
    else:
        for c in cutoffs:
            known = [s for s in slices if s <= c]
            runs.append({**_base(config, config.surrogate, tokens, facts, f"surrogate-{c}", config.seed),
                         "stages": [{"cutoff": c, "new": known, "replay": [], "epochs": epochs, "known": known,
                                     "save_to": str(registry / "vintages" / c)}]})
    if config.frontier:
        runs.append({**_base(config, config.frontier, tokens, facts, "frontier", 1000),
                     "stages": [{"cutoff": slices[-1], "new": slices, "replay": [], "epochs": config.frontier.optim.epochs,
                                 "known": slices, "save_to": str(registry / "frontier")}]})
    if config.retrained:
        for c in config.retrained_cutoffs:
            known = [s for s in slices if s <= c]
            for seed in config.retrained.seeds:
                runs.append({**_base(config, config.retrained, tokens, facts, f"retrained-{c}-seed{seed}", 2000 + seed),
                             "stages": [{"cutoff": c, "new": known, "replay": [], "known": known,
                                         "epochs": config.retrained.optim.epochs,
                                         "save_to": str(registry / "retrained" / c / f"seed={seed}")}]})
    for run in runs:  # where a run's workers share files (the cooldown branch point)
        run["scratch"] = str(registry / ".work" / "branches" / run["name"])
    return [_with_probes(r, facts) for r in runs]


def stages_done(run: dict) -> int:
    """How many leading stages of `run` already have a saved model trained by exactly those stages."""
    done = 0
    for stage in run["stages"]:
        info = Path(stage["save_to"]) / "training.json"
        if not info.exists() or json.loads(info.read_text()).get("stage_hash") != stage["stage_hash"]:
            break
        done += 1
    return done


def resume_point(run: dict, storage: Path, kept: Path) -> Path | None:
    """The most advanced checkpoint whose completed stages are a prefix of `run`'s: one a crashed attempt
    left in `storage`, or the one kept after the run last finished (`kept`, for runs that grow)."""
    hashes = [s["stage_hash"] for s in run["stages"]]
    best, best_stage = None, 0
    candidates = sorted((storage / run["name"]).glob("checkpoint_*/state.json")) + sorted(kept.glob("state.json"))
    for state_path in candidates:
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            state = None
        missing = _incomplete(state_path.parent, state)
        if missing:
            print(f"train: {run['name']}: not resuming from {state_path.parent}, a checkpoint cut short while it "
                  f"was saved ({missing})", flush=True)
            continue
        done = state.get("stage_hashes", [])
        if 0 < len(done) <= len(hashes) and done == hashes[: len(done)] and len(done) >= best_stage:
            best, best_stage = state_path.parent, len(done)
    return best


def _incomplete(directory: Path, state: dict | None) -> str | None:
    """Why a checkpoint is incomplete (None: it is whole): its state.json unreadable, or a file it lists
    missing or of another size. Checkpoints from before the listing carry none and are taken as whole."""
    if state is None:
        return "state.json unreadable"
    for name, size in (state.get("files") or {}).items():
        path = directory / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != size:
            return f"{name}: {path.stat().st_size} of {size} bytes"
    return None


def _fit_all(runs: list[dict], storage: Path, config: TrainConfig, registry: Path) -> dict:
    """Run the Ray Train runs, `parallel_runs` at a time (each TorchTrainer.fit blocks its thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from vintage.training import fit

    pid_dir = os.environ.get("VINTAGE_PID_DIR")  # fault-injection tests: where workers write their pids

    def one(run: dict) -> tuple[str, dict]:
        if pid_dir:
            run = {**run, "pid_file": str(Path(pid_dir) / f"{run['name']}.pid")}
        kept = registry / ".checkpoints" / run["name"]
        resume = resume_point(run, storage, kept)
        if resume is not None:
            stage = json.loads((resume / "state.json").read_text())["stage"]
            print(f"train: {run['name']} continues after stage {stage}/{len(run['stages'])} from {resume}", flush=True)
            run = {**run, "resume_from": str(resume)}
        t0 = time.perf_counter()
        try:
            result = fit(run, storage, num_workers=config.num_workers, use_gpu=config.use_gpu)
            error = str(result.error) if result.error else None
            if error is None and result.checkpoint is not None:  # kept: a later run with more stages continues it
                staging = kept.parent / f".{kept.name}.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(result.checkpoint.path, staging)
                replace_directory(staging, kept)
        except Exception as err:  # Ray Train raises once the run's retries are spent; the manifest records it
            error = f"{type(err).__name__}: {err}"
        if error:
            print(f"train: {run['name']} failed: {error}", flush=True)
        return run["name"], {"seconds": round(time.perf_counter() - t0, 1), "error": error}

    ordered = sorted(runs, key=lambda r: -_cost(r))  # longest first packs the pool best
    with ThreadPoolExecutor(max_workers=max(1, config.parallel_runs)) as pool:
        return dict(pool.map(one, ordered))


def _cost(run: dict) -> float:
    from vintage.presets import get_preset

    p = get_preset(run["preset"])
    return p.n_layer * p.n_embd ** 2 * sum(s["epochs"] * len(s["new"]) for s in run["stages"])


def train_registry(config: TrainConfig) -> dict:
    """Train every run of `config` into the registry and write its manifest; a finished run is skipped."""
    for key in ("split", "output"):
        if not getattr(config, key):
            raise ValueError(f"train config: `{key}` is required (a directory)")
    external = check_external_frontier(config)  # your own frontier: a bad one fails before anything is written
    registry = Path(config.output).resolve()  # workers do not share the driver's working directory
    registry.mkdir(parents=True, exist_ok=True)
    # the windows' format is part of what a config trains: a registry of cut documents is not this one
    config_hash = short_hash(json.dumps(asdict(config), sort_keys=True, default=str) + WINDOWS_FORMAT)
    manifest_path = registry / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config_hash") == config_hash and manifest.get("complete"):
            print(f"train: {registry} already holds this run (config {config_hash}); nothing to train")
            return finish_registry(config, registry)
    started = time.perf_counter()
    trained = config  # what is trained here: with your own frontier, the surrogates on its tokenizer
    if external is not None:
        from dataclasses import replace

        trained = replace(config, frontier=None, tokenizer=external.path)
    tokens, facts = prepare(trained, registry)
    facts["probe_rows"] = json.loads(Path(facts["probes"]).read_text())
    runs = plan(trained, tokens, facts, registry)
    storage = registry / ".work" / "ray"
    todo = []
    for run in runs:
        done = stages_done(run)
        if done == len(run["stages"]):
            print(f"train: {run['name']} already finished; skipped")
        else:
            todo.append(run)
    results = _fit_all(todo, storage, trained, registry)
    for run in runs:  # every model directory is self-contained: its tokenizer beside its weights
        for stage in run["stages"]:
            target = Path(stage["save_to"])
            if target.exists() and not (target / "tokenizer.json").exists():
                for item in (registry / "tokenizer").iterdir():
                    shutil.copy2(item, target / item.name)
    vintages = {}
    for run in runs:  # only models trained by this config's stages (a stale one from an older config is not)
        for stage in run["stages"][: stages_done(run)]:
            info_path = Path(stage["save_to"]) / "training.json"
            vintages[str(Path(stage["save_to"]).relative_to(registry))] = json.loads(info_path.read_text())
    cutoffs = sorted(Path(p).name for p in vintages if p.startswith("vintages/"))
    if external is not None:
        from vintage.frontier import check_surrogates

        check_surrogates(external, facts["tokenizer_hash"], [registry / p for p in vintages])
    manifest = {
        "config_hash": config_hash,
        "complete": all(r["error"] is None for r in results.values())
                    and all(stages_done(r) == len(r["stages"]) for r in runs),
        "cutoffs": cutoffs, "full": cutoffs[-1] if cutoffs else None, "schedule": config.schedule,
        "tokenizer_hash": facts["tokenizer_hash"], "vocab_size": facts["vocab_size"], "window": facts["window"],
        "slices": facts["slices"],
        "models": vintages, "runs": results, "config": asdict(config),
        **({"external_frontier": external.manifest_entry()} if external is not None else {}),
        "seconds": round(time.perf_counter() - started, 1),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["runs"] = {**old.get("runs", {}), **results}
    for key in ("calibration", "temperatures"):  # evidence carries its models' fingerprints
        if key in old:
            manifest[key] = old[key]
    write_text_atomically(manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
    if manifest["complete"]:
        shutil.rmtree(registry / ".work" / "ray", ignore_errors=True)
        manifest = finish_registry(config, registry)
    else:
        failed = {n: r["error"] for n, r in results.items() if r["error"]}
        print(f"train: incomplete registry {registry}; failed runs: {failed}. A rerun continues from their "
              f"last checkpoints.", flush=True)
    return manifest


def finish_registry(config: TrainConfig, registry: Path) -> dict:
    """What a complete registry gets besides trained models: n-gram counts (new slices only) and the
    surrogates' confidence-matching temperatures (refitted where a model changed)."""
    from vintage.registry import Registry

    if config.ngram is not None:
        from vintage.ngram import count_slices

        count_slices(registry, config.split, config.ngram.order, config.holdout_every, config.ngram.engine,
                     min_count=config.ngram.min_count)
    reg = Registry(registry)
    if config.fit_temperatures and reg.has_frontier():
        kinds = ["neural"] + (["ngram"] if config.ngram is not None else [])
        if stale_temperatures(reg, kinds):
            from vintage.calibration import fit_registry_temperatures

            fit_registry_temperatures(reg, config.split, kinds, holdout_every=config.holdout_every)
    return reg.manifest


def stale_temperatures(registry, kinds) -> bool:
    """True when a surrogate lacks a fitted temperature or its model changed since the fit."""
    fitted = registry.manifest.get("temperatures", {})
    for kind in kinds:
        for cutoff in registry.cutoffs():
            entry = fitted.get(kind, {}).get(cutoff)
            if entry is None or entry.get("fingerprint") != registry.surrogate_fingerprint(kind, cutoff):
                return True
    return False
