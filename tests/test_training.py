"""Surrogate training under Ray Train + DeepSpeed on the tiny world: registry contents, reuse, two workers,
a killed worker, a crashed run continued by a rerun, roles, and the memorisation probe's plumbing."""
import datetime as dt
import json
from types import SimpleNamespace
import math
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from corpora.split import SplitConfig, run_split
from corpora.validation import CorpusConfig
from corpora.worlds import generate_world
from vintage.decoding import PointInTimeLM
from vintage.registry import Registry, RegistryError
from vintage.post_training import stale_temperatures
from vintage.runs import split_identity, train_registry
from vintage.train_config import NgramConfig, Optimisation, RoleConfig, TrainConfig

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    world = generate_world("synthetic-market", "tiny", seed=0)
    world.write(base / "world")
    (base / "corpus").mkdir()
    pq.write_table(world.documents, base / "corpus" / "documents.parquet")
    run_split(SplitConfig(corpus=CorpusConfig(path=str(base / "corpus")), output=str(base / "split"),
                          cutoffs=[dt.datetime(2017, 6, 30, tzinfo=UTC), dt.datetime(2017, 12, 31, tzinfo=UTC),
                                   dt.datetime(2019, 12, 31, tzinfo=UTC)], engine="polars"))
    return base


def tiny_config(base: Path, out: Path, **changes) -> TrainConfig:
    optim = Optimisation(lr=3e-3, batch_size=16, epochs=2, cooldown_steps=3, warmup_steps=2)
    config = TrainConfig(split=str(base / "split"), output=str(out), vocab_size=400,
                         surrogate=RoleConfig(preset="tiny", optim=optim))
    return replace(config, **changes)


def corpus_tokens(registry: Path, cutoff: str) -> int:
    """Tokens of the documents a vintage trains on, counted here from the split (the held-out ones left out)."""
    from corpora.split import read_slices
    from vintage.holdout import is_holdout
    from vintage.tokenizer import load_tokenizer

    config = json.loads((registry / "manifest.json").read_text())["config"]
    docs = read_slices(config["split"]).to_pylist()
    texts = [d["text"] for d in docs if d["slice"] <= cutoff and not is_holdout(d["doc_id"], config["holdout_every"])]
    return sum(len(ids) for ids in load_tokenizer(registry / "tokenizer")(texts, add_special_tokens=False)["input_ids"])


def weights(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def roles_config(base: Path, out: Path) -> TrainConfig:
    """Chronological surrogates plus a frontier and two retrained seeds, two runs at a time; n-gram
    surrogates counted beside them."""
    optim = Optimisation(lr=3e-3, batch_size=16, epochs=2, cooldown_steps=2, warmup_steps=2)
    return tiny_config(base, out, parallel_runs=2, frontier=RoleConfig(preset="tiny", optim=optim),
                       retrained=RoleConfig(preset="tiny", optim=optim, seeds=[0, 1]),
                       retrained_cutoffs=["2017-06-30"], ngram=NgramConfig(order=3))


@pytest.fixture(scope="module")
def reference(ray_local, tiny_split, tmp_path_factory):
    """An uninterrupted run: the registry the fault-tolerance tests must reproduce (their surrogate run is
    the same run: other roles do not change it)."""
    out = tmp_path_factory.mktemp("reference") / "models"
    return out, train_registry(roles_config(tiny_split, out))


@pytest.mark.slow
def test_chronological_training_writes_a_loadable_registry(reference):
    out, manifest = reference
    assert manifest["complete"] and manifest["cutoffs"] == ["2017-06-30", "2017-12-31", "2019-12-31"]
    assert manifest["full"] == "2019-12-31"
    for cutoff in manifest["cutoffs"]:
        vintage = out / "vintages" / cutoff
        assert (vintage / "model.safetensors").exists() and not list(vintage.glob("*.bin"))
        assert (vintage / "tokenizer.json").exists()  # every model directory is self-contained
        info = json.loads((vintage / "training.json").read_text())
        assert info["tokens_seen"] > 0 and info["validation_loss"] > 0 and info["peak_memory_mib"] > 0
        # the branch's own share of the tokens these weights saw: its steps' documents
        assert 0 < info["cooldown_tokens"] <= info["cooldown_steps"] * 16 * 96
        assert info["cooldown_tokens"] < info["tokens_seen"]
        # documents packed into windows, none cut: a pass reads every token of the cutoff's documents
        assert info["corpus_tokens"] == corpus_tokens(out, cutoff) > 0
        assert info["tokens_per_epoch"] >= 0.95 * info["corpus_tokens"]
    models = [manifest["models"][f"vintages/{c}"] for c in manifest["cutoffs"]]
    main = [m["tokens_seen"] - m["cooldown_tokens"] for m in models]
    assert main == sorted(main) and main[0] < main[-1]  # one main run continued through the cutoffs
    assert set(manifest["slices"]) == set(manifest["cutoffs"])
    # the n-gram counts cover the same tokens as the windows (every trained document and its EOS)
    ngram = json.loads((out / "ngram" / "manifest.json").read_text())["slices"]
    assert {s: e["tokens"] for s, e in ngram.items()} == {s: e["window_tokens"] for s, e in manifest["slices"].items()}
    assert all(len(s["content_hash"]) == 16 for s in manifest["slices"].values())
    assert len(manifest["tokenizer_hash"]) == 16
    # decoding loads it: the tiny registry has no frontier, so the full surrogate stands in for one
    lm = PointInTimeLM.from_registry(out, "2018-06-01", frontier=out / "vintages" / "2019-12-31", alpha=0.5)
    assert lm.vintage_cutoff == "2017-12-31"
    (scored,) = lm.score(["Velormora 2017q3 results:"], [[" beat", " miss"]])
    assert len(scored.choice_logprobs) == 2
    with pytest.raises(RegistryError, match="precedes every vintage.*2017-06-30"):
        Registry(out).vintage_for("2017-06-30T12:00:00Z")


@pytest.mark.slow
def test_a_chain_can_continue_from_each_cooled_vintage(reference, tmp_path):
    """after_cooldown: continue keeps each cooldown in the main run instead of restoring the weights from
    before it. The first stage and its vintage are the default chain's; every later stage trained the same
    main-run steps on top of the kept cooldowns, so a vintage's steps and tokens count them; the weights
    differ from the default chain's after the first cutoff."""
    out, manifest = reference
    config = tiny_config(Path(manifest["config"]["split"]).parent, tmp_path / "models")
    config.surrogate.optim.after_cooldown = "continue"
    kept = train_registry(config)
    assert kept["complete"], kept["runs"]
    cutoffs = manifest["cutoffs"]
    restored = [manifest["models"][f"vintages/{c}"] for c in cutoffs]
    continued = [kept["models"][f"vintages/{c}"] for c in cutoffs]
    assert [m["after_cooldown"] for m in continued] == ["continue"] * 3
    assert same_weights(out / "vintages" / cutoffs[0], tmp_path / "models" / "vintages" / cutoffs[0])
    assert not same_weights(out / "vintages" / cutoffs[1], tmp_path / "models" / "vintages" / cutoffs[1])
    steps = 3  # tiny_config's cooldown
    for k in (1, 2):
        # a vintage's steps: the main run's up to its cutoff, no cooldown in them when restored; continued,
        # the kept cooldowns are part of the main run, so each later vintage is one cooldown further on
        # (its tokens_seen likewise, beside its own cooldown's tokens, which both count)
        assert continued[k]["steps"] - continued[k - 1]["steps"] == restored[k]["steps"] - restored[k - 1]["steps"] + steps
        assert (continued[k]["tokens_seen"] - continued[k - 1]["tokens_seen"]
                == restored[k]["tokens_seen"] - restored[k - 1]["tokens_seen"] + restored[k - 1]["cooldown_tokens"])
    assert continued[-1]["tokens_seen"] - sum(m["cooldown_tokens"] for m in continued) == \
        restored[-1]["tokens_seen"] - restored[-1]["cooldown_tokens"]  # the same main-run tokens


@pytest.mark.slow
def test_ngram_counts_and_fitted_temperatures_complete_the_registry(reference):
    from vintage.ngram import NgramLM
    from vintage.registry import model_fingerprint

    out, manifest = reference
    registry = Registry(out)
    for kind in ("neural", "ngram"):
        fitted = manifest["temperatures"][kind]
        assert sorted(fitted) == manifest["cutoffs"]
        for cutoff, entry in fitted.items():
            assert 0.05 <= entry["temperature"] <= 20 and entry["positions"] > 0
            assert entry["kl_after"] <= entry["kl_before"] + 1e-6  # the fit never moves away from the frontier
    assert manifest["temperatures"]["neural"]["2017-06-30"]["fingerprint"] == \
        model_fingerprint(out / "vintages" / "2017-06-30")
    assert not stale_temperatures(registry, ["neural", "ngram"])
    ngram = json.loads((out / "ngram" / "manifest.json").read_text())
    assert ngram["order"] == 3 and sorted(ngram["slices"]) == manifest["cutoffs"]
    assert NgramLM.from_registry(out, "2017-12-31").rows > NgramLM.from_registry(out, "2017-06-30").rows


@pytest.mark.slow
def test_rerun_of_a_finished_config_is_a_no_op(reference):
    out, manifest = reference
    before = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    again = train_registry(roles_config(Path(manifest["config"]["split"]).parent, out))
    assert again["created_at"] == manifest["created_at"]
    assert manifest["split_identity"] == split_identity(manifest["config"]["split"]) is not None
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == before


@pytest.mark.slow
def test_a_copied_registry_is_complete_where_it_lands(reference, tmp_path):
    import shutil

    out, manifest = reference
    copy = tmp_path / "moved"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".work", ".checkpoints"))
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("model.safetensors")}
    again = train_registry(roles_config(Path(manifest["config"]["split"]).parent, copy))
    assert again["complete"] and sorted(again["models"]) == sorted(manifest["models"])
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("model.safetensors")} == before  # nothing retrained


def _kill_after_first_checkpoint(storage: Path, pid_file: Path, killed: list) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        if list(storage.glob("surrogates-chronological/checkpoint_*/state.json")) and pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def start_killer(out: Path, tmp_path: Path) -> tuple[threading.Thread, list]:
    """Workers write their pids under tmp_path; a thread kills the surrogate run's after its first checkpoint."""
    killed: list[int] = []
    killer = threading.Thread(target=_kill_after_first_checkpoint, daemon=True,
                              args=(out / ".work" / "ray", tmp_path / "surrogates-chronological.pid", killed))
    killer.start()
    return killer, killed


@pytest.mark.slow
def test_a_killed_worker_resumes_and_gives_the_same_registry(reference, tiny_split, tmp_path):
    ref_out, ref_manifest = reference
    out = tmp_path / "models"
    killer, killed = start_killer(out, tmp_path)
    manifest = train_registry(tiny_config(tiny_split, out), pid_dir=tmp_path)
    killer.join()
    assert killed, "the worker was never killed: the test did not exercise a failure"
    assert manifest["complete"] and manifest["cutoffs"] == ref_manifest["cutoffs"]
    for cutoff in manifest["cutoffs"]:
        assert same_weights(out / "vintages" / cutoff, ref_out / "vintages" / cutoff), cutoff


@pytest.mark.slow
def test_a_crashed_run_is_continued_by_a_rerun(reference, tiny_split, tmp_path):
    """No retries left: the run fails; the registry says so; a rerun continues from the last checkpoint."""
    ref_out, ref_manifest = reference
    out = tmp_path / "models"
    killer, killed = start_killer(out, tmp_path)
    crashed = train_registry(tiny_config(tiny_split, out, max_failures=0), pid_dir=tmp_path)
    killer.join()
    assert killed and not crashed["complete"]
    assert (out / "vintages" / "2017-06-30").exists() and not (out / "vintages" / "2019-12-31").exists()
    resumed = train_registry(tiny_config(tiny_split, out, max_failures=0))
    assert resumed["complete"]
    for cutoff in resumed["cutoffs"]:
        assert same_weights(out / "vintages" / cutoff, ref_out / "vintages" / cutoff), cutoff


def test_a_checkpoint_cut_short_while_saved_is_not_resumed(tmp_path, capsys):
    """A crash while Ray persists a checkpoint can leave state.json beside a truncated file: the rerun
    takes the last whole checkpoint instead (here an earlier one) and says why."""
    from vintage.resume import resume_point

    run = SimpleNamespace(name="chain", stages=[SimpleNamespace(stage_hash="a"), SimpleNamespace(stage_hash="b")])
    storage = tmp_path / "ray"

    def checkpoint(name: str, stages: list[str], written: int) -> Path:
        directory = storage / "chain" / name
        (directory / "main").mkdir(parents=True)
        (directory / "main" / "model_states.pt").write_bytes(b"x" * written)
        state = {"stage": len(stages), "stage_hashes": stages, "files": {"main/model_states.pt": 10}}
        (directory / "state.json").write_text(json.dumps(state))
        return directory

    first = checkpoint("checkpoint_000000", ["a"], written=10)
    checkpoint("checkpoint_000001", ["a", "b"], written=4)
    assert resume_point(run, storage, tmp_path / "kept") == first
    assert "main/model_states.pt: 4 of 10 bytes" in capsys.readouterr().out
    (storage / "chain" / "checkpoint_000001" / "main" / "model_states.pt").write_bytes(b"x" * 10)
    assert resume_point(run, storage, tmp_path / "kept").name == "checkpoint_000001"


@pytest.mark.slow
def test_every_role_is_a_loadable_model(reference):
    out, manifest = reference
    registry = Registry(out)
    assert registry.retrained_seeds("2017-06-30") == [0, 1]
    assert not same_weights(registry.retrained_path("2017-06-30", 0), registry.retrained_path("2017-06-30", 1))
    assert (registry.frontier_path() / "model.safetensors").exists()
    assert set(manifest["runs"]) == {"surrogates-chronological", "frontier", "retrained-2017-06-30-seed0",
                                     "retrained-2017-06-30-seed1"}
    retrained = json.loads((registry.retrained_path("2017-06-30", 0) / "training.json").read_text())
    assert retrained["slices"] == ["2017-06-30"]  # the gold model saw nothing after its cutoff


@pytest.mark.slow
def test_two_deepspeed_workers_independent_schedule_and_probes(ray_local, tiny_split, tmp_path):
    """Two Ray Train workers (gloo, ZeRO-1), vintages from scratch as separate runs, and training until
    the facts public by each cutoff are memorised (probes; the 2-epoch cap stops first here)."""
    config = tiny_config(tiny_split, tmp_path / "models", schedule="independent", num_workers=2, zero_stage=1,
                         cutoffs=["2017-06-30"], parallel_runs=1,
                         probes=str(tiny_split / "world" / "queries.parquet"), memorise=0.99)
    manifest = train_registry(config)
    assert manifest["complete"], manifest["runs"]
    assert Registry(tmp_path / "models").cutoffs() == ["2017-06-30", "2019-12-31"]
    infos = manifest["models"]
    # independent: each vintage from scratch, so the earlier one saw fewer tokens
    assert infos["vintages/2017-06-30"]["tokens_seen"] < infos["vintages/2019-12-31"]["tokens_seen"]
    assert 0 < infos["vintages/2017-06-30"]["facts"] < infos["vintages/2019-12-31"]["facts"]
    assert all(0 <= v["fact_accuracy"] <= 1 for v in infos.values())
    # each worker scored half of the probes and the counts were summed: the same as one process scoring all
    from transformers import AutoModelForCausalLM

    from vintage.plan import _probes_known_by
    from vintage.train_metrics import fact_accuracy

    rows = json.loads((tmp_path / "models" / ".work" / "probes.json").read_text())
    for path, info in infos.items():
        probes = _probes_known_by({"probe_rows": rows}, info["cutoff"])
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / path)
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id
        assert len(probes) == info["facts"] > 1
        assert fact_accuracy(model, probes, pad, torch.device("cpu")) == info["fact_accuracy"]


def test_a_corrected_text_under_the_same_id_retrains_the_vintages_that_read_it(tiny_split, tmp_path):
    """A slice's content hash is its documents' ids and texts: a text corrected under its id changes the hash of
    every stage that reads its slice (they are trained again), and of no earlier one (they are reused)."""
    import shutil

    from tests.corpus_edits import correct_one_text
    from vintage.plan import plan
    from vintage.prepare import prepare

    shutil.copytree(tiny_split / "split", tmp_path / "split")
    config = tiny_config(tmp_path, tmp_path / "models")

    def stage_hashes():
        tokens, facts = prepare(config, tmp_path / "models")
        chain = plan(config, tokens, {**facts, "probe_rows": []}, tmp_path / "models")[0]
        return [(s.cutoff, s.stage_hash) for s in chain.stages]

    before = stage_hashes()
    assert [c for c, _ in before] == ["2017-06-30", "2017-12-31", "2019-12-31"]
    correct_one_text(tmp_path / "split", "2017-12-31")
    after = stage_hashes()
    assert after[0] == before[0] and all(a != b for a, b in zip(after[1:], before[1:]))
    # a finished registry is taken as it is only while its split is the one it recorded: a split rewritten from a
    # corrected corpus (another input fingerprint) goes through the hashes above
    manifest_path = tmp_path / "split" / "manifest.json"
    recorded = split_identity(tmp_path / "split")
    written = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**written, "input_fingerprint": "corrected"}))
    assert recorded is not None and split_identity(tmp_path / "split") != recorded


def test_replay_sampled_per_epoch_covers_the_old_documents():
    import random

    from vintage.schedule import _epoch_documents

    new, old = [[i] for i in range(10)], [[100 + i] for i in range(200)]
    seen = {}
    for per_epoch in (True, False):
        epochs = _epoch_documents(new, old, 0.5, per_epoch, random.Random(0))
        docs = [next(epochs) for _ in range(20)]
        assert all(len(d) == 15 and d[:10] == new for d in docs)  # 10 new + round(0.5 x 10) replayed
        seen[per_epoch] = {tuple(x) for d in docs for x in d[10:]}
    assert len(seen[False]) == 5  # once per stage: the same five old documents every epoch
    assert len(seen[True]) > 60  # afresh: 100 draws from 200 (76 with this seed; about 79 expected)
    capped = next(_epoch_documents(new, old[:3], 1.0, True, random.Random(0)))
    assert sorted(capped[10:]) == old[:3]  # a sample is capped by the old data


def test_plan_later_stage_epochs_and_replay_sampling(tmp_path):
    """continue_epochs sets the chain's later stages; per-epoch replay sampling and continuing from the
    cooled vintages are part of what a chain learns (its hash), not of a one-stage run (the frontier's hash
    does not move); the defaults leave existing registries' hashes as they were."""
    from vintage.plan import plan

    slices = ["2017-06-30", "2017-12-31", "2019-12-31"]
    facts = {"slices": {s: {"content_hash": s, "tokens": 10} for s in slices}, "probe_rows": [], "vocab_size": 400,
             "eos_id": 0, "pad_id": 0, "tokenizer_hash": "t", "window": 64}

    def runs(**optim):
        config = TrainConfig(split="split", output=str(tmp_path), surrogate=RoleConfig(
            preset="tiny", optim=Optimisation(epochs=5, **optim)), frontier=RoleConfig(preset="tiny"))
        return plan(config, tmp_path / "tokens.parquet", facts, tmp_path)

    chain, frontier = runs(continue_epochs=2)
    assert [s.epochs for s in chain.stages] == [5, 2, 2] and "replay_sampling" not in chain.settings_json()
    assert [s.epochs for s in runs()[0].stages] == [5, 5, 5]
    other_chain, other_frontier = runs(continue_epochs=2, replay_sampling="epoch")
    assert other_chain.replay_sampling == "epoch" and other_chain.run_hash != chain.run_hash
    assert other_frontier.run_hash == frontier.run_hash
    kept_chain, kept_frontier = runs(continue_epochs=2, after_cooldown="continue")  # likewise
    assert kept_chain.after_cooldown == "continue" and "after_cooldown" not in chain.settings_json()
    assert kept_chain.run_hash != chain.run_hash and kept_frontier.run_hash == frontier.run_hash
    # the hashes the plan gave before RunSpec was a dataclass (a dict then): registries keep theirs
    assert [s.stage_hash for s in chain.stages] == ["45ae704d7904719d", "49814fc61877d713", "72e48d17a8ca3feb"]
    assert [s.stage_hash for s in runs()[0].stages] == ["45ae704d7904719d", "19f4b804b77b09a5", "1b62649a559d566a"]
    assert other_chain.run_hash == "fa982db2ed3168ed" and kept_chain.run_hash == "0a67201cc0e54010"
    assert frontier.run_hash == "2bfb62bb8751580e"
    # dtype auto keeps a narrow model in float32 on a CPU (it trains no faster in bf16): the hashes above hold
    assert not chain.bf16 and not frontier.bf16
    config = TrainConfig(split="split", output=str(tmp_path), surrogate=RoleConfig(preset="tiny"), dtype="bfloat16")
    (bf16_run,) = plan(config, tmp_path / "tokens.parquet", facts, tmp_path)
    assert bf16_run.bf16 and bf16_run.run_hash != runs()[0].run_hash  # another dtype learns other weights


def test_dtype_auto_trains_in_bf16_where_it_pays():
    """auto: bf16 on a GPU (its worker checks support), and on a CPU with native bf16 for models at least
    CPU_BF16_MIN_WIDTH wide; float32 and bfloat16 as named; a bad name is an error."""
    from vintage.precision import CPU_BF16_MIN_WIDTH, bf16_native, trains_in_bf16

    assert trains_in_bf16("auto", 32, use_gpu=True)
    assert not trains_in_bf16("auto", CPU_BF16_MIN_WIDTH - 1, use_gpu=False)
    assert trains_in_bf16("auto", CPU_BF16_MIN_WIDTH, use_gpu=False) == bf16_native("cpu")
    assert trains_in_bf16("bfloat16", 32, use_gpu=False) and not trains_in_bf16("float32", 768, use_gpu=True)
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, got 'fp16'"):
        trains_in_bf16("fp16", 32, use_gpu=False)


@pytest.mark.slow
def test_training_in_bfloat16_computes_under_autocast_and_records_it(ray_local, tiny_split, tmp_path):
    """dtype: bfloat16 on a CPU trains the same run under autocast: other weights than float32's (the matmuls are
    rounded), still float32 (the optimizer's updates are not rounded away), a validation loss as good, and
    training.json says which."""
    optim = Optimisation(lr=3e-3, batch_size=16, epochs=2, cooldown_steps=1, warmup_steps=1)
    vintages = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(tiny_split, tmp_path / dtype, schedule="independent", cutoffs=["2019-12-31"],
                             surrogate=RoleConfig(preset="tiny", optim=optim), dtype=dtype, fit_temperatures=False,
                             calibrate_strength=False)
        train_registry(config)
        vintages[dtype] = tmp_path / dtype / "vintages" / "2019-12-31"
    info = {d: json.loads((v / "training.json").read_text()) for d, v in vintages.items()}
    assert info["float32"]["dtype"] == "float32" and info["bfloat16"]["dtype"] == "bfloat16"
    assert not same_weights(vintages["float32"], vintages["bfloat16"])
    assert all(w.dtype == torch.float32 for w in weights(vintages["bfloat16"]).values())
    assert info["bfloat16"]["validation_loss"] == pytest.approx(info["float32"]["validation_loss"], rel=0.02)


def test_probe_checks_on_hand_made_scores():
    """The memorisation checks: frontier and full know the late facts, the vintage does not."""
    import polars as pl

    from vintage.probe import summarise

    def rows(model, role, cutoff, correct_early, correct_late):
        early = [dt.datetime(2017, 3, 1, tzinfo=UTC)] * 4
        late = [dt.datetime(2018, 3, 1, tzinfo=UTC)] * 10
        return pl.DataFrame({"model": model, "role": role, "cutoff": cutoff, "query_id": [f"q{i}" for i in range(14)],
                             "as_of": early + late, "correct": correct_early + correct_late, "p_answer": 0.5})

    scores = pl.concat([
        rows("frontier", "frontier", "2019-12-31", [True] * 4, [True] * 10),
        rows("vintages/2019-12-31", "full", "2019-12-31", [True] * 4, [True] * 8 + [False] * 2),
        rows("vintages/2017-06-30", "vintage", "2017-06-30", [True] * 4, [True] * 5 + [False] * 5),
        rows("retrained/2017-06-30/seed=0", "retrained", "2017-06-30", [True] * 4, [True] * 4 + [False] * 6)])
    table, checks = summarise(scores)
    got = {r["model"]: (r["value"], r["passed"]) for r in checks.to_dicts()}
    assert got["frontier"] == (1.0, True) and got["vintages/2019-12-31"] == (0.8, True)
    assert got["vintages/2017-06-30"] == (0.5, True)  # 0.5 <= 0.4 + 1.96 * sqrt(0.25 / 10 + 0.25 / 10) = 0.84
    bound = checks.filter(pl.col("model") == "vintages/2017-06-30")["bound"].item()
    assert bound == pytest.approx(0.4 + 1.96 * math.sqrt(0.05))
    pre = table.filter((pl.col("model") == "vintages/2017-06-30") & (pl.col("side") == "pre"))
    assert pre["n"].item() == 4 and pre["accuracy"].item() == 1.0
    worse = scores.with_columns(correct=pl.when(pl.col("model") == "vintages/2017-06-30").then(True)
                                .otherwise(pl.col("correct")))
    assert not summarise(worse)[1].filter(pl.col("model") == "vintages/2017-06-30")["passed"].item()


def test_fact_accuracy_scores_each_choice_as_a_continuation():
    """Against log-probs from the full logits, computed here step by step: the fast path sends only the
    choice positions through the output layer; shards of the probes add up to the whole."""
    import random

    from vintage.presets import PRESETS, build_model
    from vintage.train_metrics import _fact_hits, fact_accuracy

    rng = random.Random(0)
    probes = [[[rng.randrange(1, 300) for _ in range(rng.randrange(1, 9))],
               [[rng.randrange(1, 300) for _ in range(rng.randrange(1, 4))] for _ in range(rng.randrange(2, 5))],
               rng.randrange(2)] for _ in range(60)]
    for family in ("gpt2", "llama"):
        model = build_model(PRESETS["tiny"].with_(family=family), 300, pad_token_id=0).eval()
        with torch.no_grad():
            for weight in model.parameters():  # an untrained model is near uniform: make the choices differ
                weight.add_(torch.randn_like(weight) * 0.5)
        hits = 0
        for prompt, choices, answer in probes:
            totals = []
            for choice in choices:
                with torch.no_grad():
                    logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + choice])).logits[0].double(), -1)
                totals.append(sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(choice)))
            hits += int(max(range(len(choices)), key=totals.__getitem__) == answer)
        assert 0 < hits < len(probes)
        assert fact_accuracy(model, probes, 0, torch.device("cpu"), batch=7) == hits / len(probes)
        assert sum(_fact_hits(model, probes[r::3], 0, torch.device("cpu"), 256) for r in range(3)) == hits
    assert math.isnan(fact_accuracy(model, [], 0, torch.device("cpu")))


def test_shards_balance_padded_size_and_keep_every_document():
    """A step's documents over the workers: each exactly once, the largest padded size (documents x longest)
    the smallest any split reaches (brute force over every assignment), and never above dealing them out
    in turn; one worker keeps the batch as it is."""
    import itertools
    import random

    from vintage.schedule import _shards

    def padded(shard):
        return len(shard) * max((len(d) for d in shard), default=0)

    rng = random.Random(0)
    for trial in range(60):
        world = 2 + trial % 2
        rows = [[trial, i] + [0] * rng.choice([7, 9, 12, 13, 14, 28, 29]) for i in range(rng.randrange(1, 9))]
        shards = _shards(rows, world)
        assert len(shards) == world
        assert sorted(map(tuple, (d for s in shards for d in s))) == sorted(map(tuple, rows))
        assert all(shards[:len(rows)])  # a worker is idle only when there are fewer documents than workers
        best = min(max(padded([r for r, w in zip(rows, assign) if w == k]) for k in range(world))
                   for assign in itertools.product(range(world), repeat=len(rows)))
        assert max(map(padded, shards)) == best
        assert best <= max(padded(rows[k::world]) for k in range(world))
    rows = [[1] * n for n in (5, 30, 12)]
    assert _shards(rows, 1) == [rows]


def test_weighted_shards_give_the_whole_batch_gradient():
    """Shards of unequal size, each loss weighted by shard_weight and the gradients averaged over the
    workers (what DeepSpeed's all-reduce does): the gradient of the whole batch on one worker."""
    import random

    from vintage.presets import build_model
    from vintage.schedule import _shards, shard_weight
    from vintage.train_metrics import _collate

    rng = random.Random(1)
    rows = [[rng.randrange(1, 300) for _ in range(rng.choice([3, 5, 17, 30]))] for _ in range(13)]
    model = build_model("tiny", 300, pad_token_id=0)

    def gradient(docs, weight=1.0):
        model.zero_grad()
        ids, mask, labels = _collate(docs, 0)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss * weight
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]), float(loss.detach())

    whole, whole_loss = gradient(rows)
    for world in (2, 3, 4):
        shards = _shards(rows, world)
        assert len({len(s) for s in shards}) > 1  # uneven: unweighted means would not add up
        parts = [gradient(s, shard_weight(s, rows, world)) for s in shards]
        assert torch.allclose(sum(g for g, _ in parts) / world, whole, atol=1e-6), world
        # what step_loss all-reduces: the workers' shares add up to world x the step's loss
        assert sum(share for _, share in parts) / world == pytest.approx(whole_loss, rel=1e-6)
    assert shard_weight([], rows, 2) == 0


@pytest.mark.slow
def test_compact_surrogates_train_over_the_corpus_ids_and_answer_over_the_tokenizers(ray_local, tiny_split,
                                                                                    tmp_path):
    from corpora.split import read_slices
    from vintage.compact import CompactLM, CompactVocabulary
    from vintage.surrogates import load_surrogate
    from vintage.tokenizer import load_tokenizer

    out = tmp_path / "models"
    config = tiny_config(tiny_split, out, compact_vocabulary="always",
                         surrogate=RoleConfig(preset="tiny", optim=Optimisation(lr=3e-3, batch_size=16, epochs=1,
                                                                                cooldown_steps=2, warmup_steps=2)))
    manifest = train_registry(config)
    tokenizer = load_tokenizer(out / "tokenizer")
    texts = read_slices(str(tiny_split / "split"))["text"].to_pylist()
    used = {i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids}
    used |= {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) if t is not None}
    vocab = CompactVocabulary.load(out / "vintages" / "2019-12-31")
    assert set(vocab.ids) == used and vocab.size == len(tokenizer) and vocab.rows < len(tokenizer)
    assert manifest["compact_vocabulary"] == {"ids": len(used), "rows": len(used) + 1}
    for cutoff in manifest["cutoffs"]:
        assert json.loads((out / "vintages" / cutoff / "config.json").read_text())["vocab_size"] == vocab.rows
        assert CompactVocabulary.load(out / "vintages" / cutoff) == vocab  # one set for every vintage
    surrogate = load_surrogate(Registry(out), "neural", "2017-06-30")
    assert isinstance(surrogate, CompactLM) and surrogate.config.vocab_size == len(tokenizer)
    lm = PointInTimeLM.from_registry(out, "2018-06-01", frontier=out / "vintages" / "2019-12-31", alpha=0.5)
    assert math.isfinite(lm.perplexity(texts[:4]))


@pytest.mark.slow
def test_a_stale_build_lock_left_by_an_interrupted_start_does_not_hang_training(ray_local, tiny_split, tmp_path,
                                                                              capfd):
    """Every DeepSpeed start takes torch's build lock of its ops; one left by an interrupted start used to make every
    later start wait forever, silently (issue 39 §3)."""
    from vintage.extension_locks import extensions_root

    lock = extensions_root() / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()  # what a start killed while it held the lock leaves behind
    built = any(lock.parent.glob("*.so"))
    out = tmp_path / "models"
    config = tiny_config(tiny_split, out, schedule="independent", cutoffs=["2019-12-31"],
                         surrogate=RoleConfig(preset="tiny", optim=Optimisation(lr=3e-3, batch_size=16, epochs=1,
                                                                                cooldown_steps=1, warmup_steps=1)))
    result = {}
    worker = threading.Thread(target=lambda: result.update(manifest=train_registry(config)), daemon=True)
    started = time.perf_counter()
    worker.start()
    worker.join(timeout=60 if built else 240)  # a first start also compiles the op (about a minute here)
    assert not worker.is_alive(), f"training still waiting after {time.perf_counter() - started:.0f} s"
    assert result["manifest"]["complete"] and not lock.exists()
    assert f"removed a stale build lock {lock}" in capfd.readouterr().out
