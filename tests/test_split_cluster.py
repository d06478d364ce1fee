"""The split on a two-node Ray cluster: tasks run on both nodes and the output equals the one-node run's."""
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from corpora.split import read_slices, run_split
from corpora.worlds import generate_world
from tests.test_split import split_config, write_corpus


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_split_on_two_nodes_equals_one_process(two_nodes, tmp_path):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    world = generate_world("synthetic-market", "tiny", seed=2)
    corpus = write_corpus(world, tmp_path / "corpus", parts=4)
    distributed = run_split(split_config(corpus, tmp_path / "ray", engine="ray", batch_size=40, partitions=4))
    assert distributed.manifest["nodes"] == 2, distributed.manifest["node_ids"]
    reference = run_split(split_config(corpus, tmp_path / "polars"))
    assert read_slices(distributed.output).equals(read_slices(reference.output))
    a = pq.read_table(distributed.output / "quarantine.parquet")
    b = pq.read_table(reference.output / "quarantine.parquet")
    key = [(c, "ascending") for c in a.column_names]
    assert a.sort_by(key).equals(b.sort_by(key))
