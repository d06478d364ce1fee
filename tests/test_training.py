"""Surrogate training under Ray Train + DeepSpeed (tiny presets): a registry that decoding can load.

The fuller training issue (two workers, killed-worker resume, memorisation probe) is still open; this
covers what exists: the chronological schedule with cooldown branches, the registry and its reuse.
"""
import datetime as dt
import json
import os

import pyarrow.parquet as pq
import pytest
import ray

from corpora.split import SplitConfig, run_split
from corpora.validation import CorpusConfig
from corpora.worlds import generate_world
from vintage.decoding import PointInTimeLM
from vintage.runs import Optimisation, RoleConfig, TrainConfig, train_registry

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".build/torch_extensions"))
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_chronological_training_writes_a_loadable_registry(ray_local, tmp_path):
    world = generate_world("synthetic-market", "tiny", seed=0)
    (tmp_path / "corpus").mkdir()
    pq.write_table(world.documents, tmp_path / "corpus" / "documents.parquet")
    run_split(SplitConfig(corpus=CorpusConfig(path=str(tmp_path / "corpus")), output=str(tmp_path / "split"),
                          cutoffs=[dt.datetime(2017, 12, 31, tzinfo=UTC), dt.datetime(2019, 12, 31, tzinfo=UTC)],
                          engine="polars"))
    config = TrainConfig(split=str(tmp_path / "split"), output=str(tmp_path / "models"), vocab_size=400,
                         surrogate=RoleConfig(preset="tiny", optim=Optimisation(lr=3e-3, batch_size=16, epochs=1,
                                                                                  cooldown_steps=3, warmup_steps=2)))
    manifest = train_registry(config)
    assert manifest["complete"] and manifest["cutoffs"] == ["2017-12-31", "2019-12-31"]
    assert manifest["full"] == "2019-12-31"
    for cutoff in manifest["cutoffs"]:
        vintage = tmp_path / "models" / "vintages" / cutoff
        assert (vintage / "model.safetensors").exists() and not list(vintage.glob("*.bin"))
        info = json.loads((vintage / "training.json").read_text())
        assert info["tokens_seen"] > 0 and info["validation_loss"] > 0
    first, full = (manifest["models"][f"vintages/{c}"] for c in manifest["cutoffs"])
    assert full["tokens_seen"] > first["tokens_seen"]  # the chronological run continued past the first cutoff
    assert set(manifest["slices"]) == {"2017-12-31", "2019-12-31"}
    assert all(len(s["content_hash"]) == 16 for s in manifest["slices"].values())
    # decoding loads it: the tiny registry has no frontier, so the full surrogate stands in for one
    lm = PointInTimeLM.from_registry(tmp_path / "models", "2018-06-01", frontier=tmp_path / "models" / "vintages" /
                                     "2019-12-31", alpha=0.5)
    assert lm.vintage_cutoff == "2017-12-31"
    (scored,) = lm.score(["Velormora 2017q3 results:"], [[" beat", " miss"]])
    assert len(scored.choice_logprobs) == 2
    again = train_registry(config)  # a finished run is not trained again
    assert again["created_at"] == manifest["created_at"]
