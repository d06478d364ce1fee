"""The backtest runner: queries → vintage per query → Ray Data actors score every method → parquet results.

Idempotent and incremental: rows are keyed by (query_id, method, model_key), where model_key hashes the
method's settings and the models it used for that query's vintage. A rerun scores only keys the output
does not hold yet: a scheduled run pays for new queries, and for old ones only where a model they use
changed (e.g. point_in_time after the full surrogate learnt a new period). Queries that cannot be
answered (as_of before every vintage, empty choices, no retrained model at the vintage) go to `errors/`
with a reason: nothing is dropped silently.
"""
from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from backtests import storage
from backtests.spec import BacktestSpec
from corpora.files import short_hash
from corpora.quiet_ray_data import QuietRayData
from corpora.timeline import latest_usable_expr
from vintage.precision import dtype_name
from vintage.registry import Registry, RegistryError, model_fingerprint
from vintage.surrogates import load_surrogate, surrogate_fingerprint
from vintage.watchdog import Watchdog, ray_resources

RESULT_COLUMNS = ["query_id", "method", "vintage_cutoff", "alpha", "choice_logprobs", "prediction", "correct",
                  "p_answer", "model_key", "run_id"]
ERROR_COLUMNS = ["query_id", "method", "as_of", "reason", "detail", "model_key", "run_id"]


@dataclass
class BacktestResult:
    output: str  # a local directory or a filesystem URI
    run_id: str
    scored: int  # rows written by this call
    errors: int  # error rows written by this call
    skipped: int  # (method, query) pairs already in the output


def read_table(directory: str | Path) -> pl.DataFrame | None:
    """A result dataset (local directory or filesystem URI) as one frame; None when it has no file yet."""
    return storage.read_table(directory)


def write_part(frame: pl.DataFrame, directory: str | Path) -> str:
    """One new parquet file, written under a temporary name and moved: readers never see half a file."""
    name = f"part-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
    target = storage.join(directory, name)
    storage.write_parquet(frame, target)
    return target


def load_queries(spec: BacktestSpec) -> pl.DataFrame:
    path = Path(spec.queries)
    if not path.exists():
        raise FileNotFoundError(f"queries: {path} does not exist")
    queries = pl.from_arrow(pq.read_table(path))
    missing = {"query_id", "as_of", "prompt", "choices", "answer"} - set(queries.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    if spec.kinds is not None:
        if "kind" not in queries.columns:
            raise ValueError(f"{path}: `kinds` is set but the queries have no `kind` column")
        queries = queries.filter(pl.col("kind").is_in(spec.kinds))
    duplicated = queries.filter(pl.col("query_id").is_duplicated())["query_id"].unique().to_list()
    if duplicated:
        raise ValueError(f"{path}: query_id must be unique; repeated: {duplicated[:5]}")
    return queries


def assign_vintages(queries: pl.DataFrame, cutoffs: list[str]) -> pl.DataFrame:
    """`vintage_cutoff` per query: the latest cutoff whose day fully passed before as_of (None: none did)."""
    return queries.with_columns(vintage_cutoff=latest_usable_expr("as_of", cutoffs))


def model_keys(spec: BacktestSpec, registry: Registry, cutoffs: list[str]) -> pl.DataFrame:
    """(method, vintage_cutoff, model_key) for every method and vintage."""
    if spec.frontier:
        frontier = Path(spec.frontier)
    else:  # the trained frontier/ or the user's own that the registry records
        frontier = registry.frontier_path() if registry.has_frontier() else registry.root / "frontier"
    frontier_fp = model_fingerprint(frontier) if frontier.exists() else str(frontier)
    compute = dtype_name(spec.dtype)
    manifest = registry.manifest
    full = registry.full_cutoff()
    rows = []
    for m in spec.methods:
        for c in cutoffs:
            if m.name == "frontier":
                used = [frontier_fp]
            elif m.name == "surrogate":
                used = [surrogate_fingerprint(registry, m.surrogate, c)]
            elif m.name == "retrained":
                seeds = registry.retrained_seeds(c)
                used = [model_fingerprint(registry.retrained_path(c, seeds[0]))] if seeds else []
            else:
                used = [frontier_fp, surrogate_fingerprint(registry, m.surrogate, full),
                        surrogate_fingerprint(registry, m.surrogate, c)]
                if m.fallback:
                    used.append(surrogate_fingerprint(registry, m.fallback, c))
            alpha = m.alpha
            if m.name == "point_in_time" and alpha == "calibrated":
                alpha = manifest.get("calibration", {}).get(c, {}).get("alpha")
            temperatures = None  # check_registry made sure they are there
            if m.confidence == "matched":
                temperatures = [registry.fitted_temperature(m.surrogate, c), registry.fitted_temperature(m.surrogate, full)]
                if m.fallback:
                    temperatures.append(registry.fitted_temperature(m.fallback, c))
            what = [m.key, m.name, alpha, m.plausibility, m.mode, m.k, m.margin, m.surrogate, temperatures, used]
            if m.fallback:  # appended only when set: keys of methods without one stay as they were
                what.append(m.fallback)
            if m.mode in ("blend", "adaptive"):  # likewise the width, for the modes that read it
                what.append(m.width)
            if m.gate_probability is not None:  # and the gate's probability, where one is set
                what.append(["gate_probability", m.gate_probability])
            if compute != "float32":  # likewise the dtype the models compute in
                what.append(["dtype", compute])
            rows.append(dict(method=m.key, vintage_cutoff=c,
                             model_key=short_hash(json.dumps(what, default=str))))
    return pl.DataFrame(rows)


class Scorer:
    """A Ray Data actor: loads the registry's models once (vintages lazily), scores a batch with every method."""

    def __init__(self, spec: dict, run_id: str, threads: int = 1):
        import torch
        from vintage.compact import load_causal_lm
        from transformers.utils import logging as hf_logging

        from backtests.spec import MethodSpec
        from vintage.tokenizer import load_tokenizer

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per model and actor is noise in the job log
        torch.set_num_threads(threads)
        self.registry = Registry(spec["registry"])
        self.methods = [MethodSpec(**m) for m in spec["methods"]]
        self.run_id = run_id
        self.tokenizer = load_tokenizer(self.registry.tokenizer_path())
        self.compute = spec.get("dtype", "float32")
        self._load = lambda path: load_causal_lm(path, compute=self.compute)
        self.frontier_dir = spec.get("frontier")
        self.cache: dict[str, object] = {}

    @property
    def frontier(self):
        return self.model("frontier", self.frontier_dir or self.registry.frontier_path())

    def model(self, key: str, path: Path):
        if key not in self.cache:
            self.cache[key] = self._load(path)
        return self.cache[key]

    def surrogate(self, kind: str, cutoff: str):
        """The vintage surrogate at `cutoff` of this kind (neural: the trained model; ngram: the counts)."""
        key = f"{kind}-{cutoff}"
        if key not in self.cache:
            self.cache[key] = load_surrogate(self.registry, kind, cutoff, compute=self.compute)
        return self.cache[key]

    def temperatures(self, method, cutoff: str):
        from vintage.modes import Temperatures

        if method.confidence == "raw":
            return Temperatures()
        return Temperatures(vintage=self.registry.fitted_temperature(method.surrogate, cutoff),
                            full=self.registry.fitted_temperature(method.surrogate, self.registry.full_cutoff()),
                            fallback=self.registry.fitted_temperature(method.fallback, cutoff) if method.fallback else 1.0)

    def lm(self, method, cutoff: str):
        from vintage.decoding import PointInTimeLM
        from vintage.modes import Steering

        tok = self.tokenizer
        if method.name == "frontier":
            return PointInTimeLM(self.frontier, None, None, tok), 0.0
        if method.name == "surrogate":
            return PointInTimeLM(self.surrogate(method.surrogate, cutoff), None, None, tok), 0.0
        if method.name == "retrained":
            seeds = self.registry.retrained_seeds(cutoff)
            if not seeds:
                return None, None
            return PointInTimeLM(self.model(f"retrained-{cutoff}", self.registry.retrained_path(cutoff, seeds[0])),
                                 None, None, tok), 0.0
        vintage = self.surrogate(method.surrogate, cutoff)
        full = self.surrogate(method.surrogate, self.registry.full_cutoff())
        alpha = None  # the linear contrast's strength, reported per row
        if method.mode in ("linear", "adaptive"):
            alpha = self.registry.calibrated_alpha(cutoff) if method.alpha == "calibrated" else float(method.alpha)
        steering = Steering(method.mode, alpha=alpha or 0.0, plausibility=method.plausibility, k=method.k,
                            margin=method.margin, width=method.width, temperatures=self.temperatures(method, cutoff),
                            gate_probability=method.gate_probability)
        fallback = self.surrogate(method.fallback, cutoff) if method.fallback else None
        return PointInTimeLM(self.frontier, vintage, full, tok, steering=steering, fallback=fallback), alpha

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        frame = pl.from_arrow(batch)
        rows = []
        with torch.inference_mode():
            for (cutoff, key, model_key), group in frame.group_by("vintage_cutoff", "method", "model_key",
                                                                  maintain_order=True):
                first = len(rows)
                method = next(m for m in self.methods if m.key == key)
                lm, alpha = self.lm(method, cutoff)
                if lm is None:
                    detail = f"no retrained model at vintage {cutoff}"
                    if "external_frontier" in self.registry.manifest:
                        detail += " (the frontier is your own, not a preset that could be retrained)"
                    rows += [dict(query_id=q, method=key, error="no_retrained_model", model_key=model_key,
                                  detail=detail) for q in group["query_id"]]
                    continue
                valid = []
                for q in group.iter_rows(named=True):
                    problem = self.untokenisable(q["prompt"], q["choices"])
                    if problem:
                        rows.append(dict(query_id=q["query_id"], method=key, error="untokenisable", detail=problem))
                    else:
                        valid.append(q)
                scored = lm.score([q["prompt"] for q in valid], [list(q["choices"]) for q in valid]) if valid else []
                for q, s in zip(valid, scored):
                    options = list(q["choices"])
                    truth = options.index(q["answer"]) if q["answer"] in options else -1
                    rows.append(dict(query_id=q["query_id"], method=key, vintage_cutoff=cutoff, alpha=alpha,
                                     choice_logprobs=s.choice_logprobs, prediction=options[s.prediction],
                                     correct=s.prediction == truth,
                                     p_answer=s.probabilities()[truth] if truth >= 0 else None))
                for row in rows[first:]:
                    row["model_key"] = model_key
        out = pl.DataFrame(rows, schema={"query_id": pl.String, "method": pl.String, "vintage_cutoff": pl.String,
                                         "alpha": pl.Float64, "choice_logprobs": pl.List(pl.Float64),
                                         "prediction": pl.String, "correct": pl.Boolean, "p_answer": pl.Float64,
                                         "error": pl.String, "detail": pl.String, "model_key": pl.String})
        return out.with_columns(run_id=pl.lit(self.run_id)).to_arrow()

    def untokenisable(self, prompt: str, choices) -> str | None:
        if not choices:
            return "no choices"
        if not self.tokenizer(prompt, add_special_tokens=False)["input_ids"]:
            return "the prompt is empty after tokenisation"
        empty = [c for c in choices if not self.tokenizer(c, add_special_tokens=False)["input_ids"]]
        return f"choice(s) {empty!r} empty after tokenisation" if empty else None


def check_registry(spec: BacktestSpec, registry: Registry) -> None:
    """Fail before scoring when a method needs what the registry lacks (n-gram counts, fitted temperatures)."""
    for m in spec.methods:
        kinds = [m.surrogate] + ([m.fallback] if m.fallback else [])
        if "ngram" in kinds and not (registry.root / "ngram" / "manifest.json").exists():
            raise ValueError(f"method {m.key}: {registry.root} has no n-gram counts; run "
                             f"`vintage ngram --registry {registry.root} --split SPLIT`")
        for kind in kinds if m.confidence == "matched" else []:
            missing = []
            for cutoff in registry.cutoffs():
                try:
                    registry.fitted_temperature(kind, cutoff)
                except RegistryError:
                    missing.append(cutoff)
            if missing:
                raise ValueError(f"method {m.key}: no fitted {kind} temperatures for vintage(s) {missing} "
                                 f"in {registry.root}; run `vintage fit-temperatures --registry {registry.root} "
                                 f"--split SPLIT`")


def run_backtest(spec: BacktestSpec, engine: str = "ray") -> BacktestResult:
    """Score what the output does not hold yet for this spec's run id; append results and errors."""
    from dataclasses import asdict

    for key in ("queries", "registry", "output"):
        if not getattr(spec, key):
            raise ValueError(f"backtest spec: `{key}` is required")
    registry = Registry(spec.registry)
    check_registry(spec, registry)
    run_id = spec.run_id(registry.manifest)
    output = str(spec.output)
    queries = assign_vintages(load_queries(spec), registry.cutoffs())
    pairs = queries.join(pl.DataFrame({"method": [m.key for m in spec.methods]}), how="cross")

    keys = model_keys(spec, registry, registry.cutoffs())
    pairs = pairs.join(keys, on=["method", "vintage_cutoff"], how="left").with_columns(
        model_key=pl.col("model_key").fill_null("none"))  # no vintage: keyed by the spec alone
    done = [t for t in (read_table(storage.join(output, "results")), read_table(storage.join(output, "errors")))
            if t is not None]
    before = pairs.height
    if done:
        held = pl.concat([t.select("query_id", "method", "model_key") for t in done]).unique()
        pairs = pairs.join(held, on=["query_id", "method", "model_key"], how="anti")
    skipped = before - pairs.height

    early = pairs.filter(pl.col("vintage_cutoff").is_null())
    errors = [early.select("query_id", "method", "as_of", reason=pl.lit("before_first_vintage"),
                           detail=pl.format("as_of precedes every vintage (first cutoff {})",
                                            pl.lit(registry.cutoffs()[0])), model_key="model_key")]
    todo = pairs.filter(pl.col("vintage_cutoff").is_not_null()).sort("vintage_cutoff", "method")
    compute = dtype_name(spec.dtype)
    print(f"[backtest] run {run_id}: {todo.height} (method, query) pairs to score, {skipped} already done, "
          f"{early.height} before the first vintage; computing in {compute}", flush=True)
    scored = None
    if todo.height:
        columns = todo.select("query_id", "method", "vintage_cutoff", "model_key", "prompt", "choices", "answer")
        spec_dict = asdict(spec)
        r = spec.resources
        if engine == "ray":
            import ray

            # one block per batch, cut here: every actor gets work, and no repartition task competes with
            # the actors for CPUs (a pool that holds every CPU would wait on it forever)
            table = columns.to_arrow()
            ds = ray.data.from_arrow([table.slice(i, r.batch_size) for i in range(0, table.num_rows, r.batch_size)])
            extra = {"num_gpus": r.gpus_per_actor} if r.gpus_per_actor else {}
            with QuietRayData(enable_progress_bars=False):  # our progress line, not Ray Data's INFO logs
                out = ds.map_batches(Scorer, fn_constructor_args=(spec_dict, run_id, r.threads),
                                     batch_size=r.batch_size, compute=ray.data.ActorPoolStrategy(size=r.actors),
                                     num_cpus=r.cpus_per_actor, batch_format="pyarrow", **extra)
                parts, done, started, shown = [], 0, time.perf_counter(), time.perf_counter()
                waiting = lambda: (f"{r.actors} scoring actors ({done} of {table.num_rows} pairs back); "  # noqa: E731
                                   f"{ray_resources()}")
                with Watchdog("backtest", waiting) as watchdog:
                    for part in out.iter_batches(batch_size=None, batch_format="pyarrow"):
                        watchdog.beat()
                        parts.append(part)
                        done += part.num_rows
                        if time.perf_counter() - shown >= 30 or done == table.num_rows:
                            shown = time.perf_counter()
                            print(f"[backtest] scored {done} / {table.num_rows} pairs "
                                  f"({shown - started:.0f} s, {r.actors} actors)", flush=True)
            scored = pl.from_arrow(pa.concat_tables(parts))
        else:  # one process: tests and small local runs
            scorer = Scorer(spec_dict, run_id, r.threads)
            table = columns.to_arrow()
            scored = pl.concat([pl.from_arrow(scorer(table.slice(i, r.batch_size)))
                                for i in range(0, columns.height, r.batch_size)])
        failed = scored.filter(pl.col("error").is_not_null())
        if failed.height:
            errors.append(failed.join(todo.select("query_id", "method", "as_of"), on=["query_id", "method"])
                          .select("query_id", "method", "as_of", reason="error", detail="detail", model_key="model_key"))
        scored = scored.filter(pl.col("error").is_null()).drop("error", "detail")
    n_results = 0
    if scored is not None and scored.height:
        fields = [c for c in queries.columns if c not in ("vintage_cutoff",)]
        rows = scored.join(queries.select(fields), on="query_id", how="left")
        write_part(rows, storage.join(output, "results"))
        n_results = rows.height
    error_rows = pl.concat([e.with_columns(run_id=pl.lit(run_id)) for e in errors if e.height]) \
        if any(e.height for e in errors) else None
    if error_rows is not None:
        write_part(error_rows, storage.join(output, "errors"))
    storage.write_text(storage.join(output, "run.json"),
                       json.dumps({"run_id": run_id, "dtype": compute, "spec": asdict(spec)}, indent=2, default=str))
    print(f"[backtest] wrote {n_results} result rows and {0 if error_rows is None else error_rows.height} error "
          f"rows to {output}", flush=True)
    return BacktestResult(output, run_id, n_results, 0 if error_rows is None else error_rows.height, skipped)
