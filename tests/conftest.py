"""Shared test setup: one thread per torch op, no usage stats, and the module-scoped local Ray fixture."""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of 2 CPUs for one test module (no dashboard), shut down after it."""
    import ray

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".build/torch_extensions"))
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()
