"""ray_cluster.yaml validates against the Ray cluster launcher's own JSON schema (the one `ray up` uses)."""
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_cluster_config_matches_rays_schema():
    config = load()
    jsonschema.validate(config, SCHEMA)
    assert config["head_node_type"] in config["available_node_types"]
    workers = config["available_node_types"]
    assert {"cpu_worker", "gpu_worker"} <= set(workers)
    assert sum(w.get("max_workers", 0) for w in workers.values()) <= config["max_workers"]
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    # a job's `python` is the one on the PATH of its node's `ray start` (tests/test_jobs.py runs the head's)
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[kind] if "ray start" in c]
        assert starts and all(c.startswith("source ~/venv/bin/activate;") for c in starts), (kind, starts)


def test_the_schema_check_catches_a_bad_key():
    config = load()
    config["available_node_types"]["head"]["node_confg"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMA)
