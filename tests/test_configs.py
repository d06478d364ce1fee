"""Every YAML under configs/ loads into its dataclass; bad keys and values are named in the error."""
from pathlib import Path

import pytest
import yaml

from backtests.spec import BacktestSpec
from corpora.config import ConfigError, load_yaml
from corpora.validation import CorpusConfig
from corpora.split import SplitConfig
from pipelines.end_to_end import EndToEndConfig
from serving.config import ServeConfig
from vintage.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_CLASSES = {"corpora": CorpusConfig, "split": SplitConfig, "train": TrainConfig, "backtest": BacktestSpec,
                  "serve": ServeConfig, "": EndToEndConfig}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    folder = path.parent.relative_to(ROOT / "configs").as_posix()
    folder = "" if folder == "." else folder
    assert folder in CONFIG_CLASSES, f"{path}: no config class registered for configs/{folder}/"
    load_yaml(path, CONFIG_CLASSES[folder])


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("worlds:\n  - {name: synthetic-market, presett: tiny}\n")
    with pytest.raises(ConfigError, match=r"worlds\[0\]: unknown key\(s\) \['presett'\]"):
        load_yaml(path, EndToEndConfig)


def test_bad_value_names_key_and_expected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("worlds:\n  - {name: synthetic-market, preset: huge}\n")
    with pytest.raises(ConfigError, match=r"worlds\[0\].preset: 'huge' is not one of 'tiny', 'small', 'sparse', 'frontier', 'bench'"):
        load_yaml(path, EndToEndConfig)
    path.write_text("path: x.csv\nnaive_timestamps: maybe\n")
    with pytest.raises(ConfigError, match="naive_timestamps: 'maybe' is not one of"):
        load_yaml(path, CorpusConfig)
    path.write_text("path: x.csv\ncorpus_end: yesterday\n")
    with pytest.raises(ConfigError, match=r"corpus_end: 'yesterday' is not an ISO date"):
        load_yaml(path, CorpusConfig)


def test_overrides_apply(tmp_path):
    config = load_yaml(ROOT / "configs/tiny.yaml", EndToEndConfig)
    assert config.worlds[0].preset == "tiny"
    config = load_yaml(ROOT / "configs/corpora/example.yaml", CorpusConfig, {"columns.text": "content"})
    assert config.columns.text == "content" and config.columns.doc_id == "article_id"


def test_ray_cluster_yaml_is_a_valid_cluster_launcher_config():
    import json

    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    broken = dict(config, max_workers="eight")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
