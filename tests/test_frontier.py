"""Your own frontier (`frontier: DIR`): every bad directory is a clear error before any training starts.

Tiny hand-made model directories (a 1-layer model over a 23-word tokenizer): milliseconds each.
"""
import json
import shutil

import pytest

from corpora.config import ConfigError, from_dict
from pipelines.end_to_end import EndToEndConfig
from tests.lm_fixtures import word_tokenizer
from vintage.frontier import FrontierError, check_frontier, check_surrogates
from vintage.presets import ModelPreset, build_model
from vintage.registry import Registry, RegistryError
from vintage.runs import train_registry
from vintage.train_config import Optimisation, RoleConfig, TrainConfig, window_length


def save_frontier(path, family="gpt2", vocab_delta=0, n_positions=64):
    tokenizer = word_tokenizer()
    preset = ModelPreset(family=family, n_layer=1, n_embd=16, n_head=2, n_positions=n_positions)
    model = build_model(preset, len(tokenizer) + vocab_delta, eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def frontier(tmp_path):
    return save_frontier(tmp_path / "frontier")


def test_a_good_frontier_is_described(frontier, tmp_path):
    info = check_frontier(frontier, max_length=64)
    assert info.architecture == "GPT2LMHeadModel" and info.vocab_rows == info.tokenizer_tokens == 23
    assert info.context == 64 and list(info.weights) == ["model.safetensors"]
    assert info.path == str(frontier.resolve()) and info.fingerprint == check_frontier(frontier, 8).fingerprint
    llama = check_frontier(save_frontier(tmp_path / "llama", family="llama"), max_length=64)
    assert llama.architecture == "LlamaForCausalLM"
    # more embedding rows than tokens (padded vocabularies): the decoding cuts the logits to the tokenizer
    assert check_frontier(save_frontier(tmp_path / "padded", vocab_delta=9), 64).vocab_rows == 32


def test_a_missing_directory_or_a_file(tmp_path):
    with pytest.raises(FrontierError, match=r"train.frontier: .*nope: no such directory \(expected a Hugging "
                                            r"Face causal LM directory with config.json, safetensors weights"):
        check_frontier(tmp_path / "nope", 64, where="train.frontier")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FrontierError, match="file: not a directory"):
        check_frontier(tmp_path / "file", 64)


def test_not_a_causal_lm(frontier):
    config = frontier / "config.json"
    raw = json.loads(config.read_text())
    config.write_text(json.dumps({**raw, "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(FrontierError, match=r"config.json: architectures \['BertForMaskedLM'\] is not a causal LM; "
                                            r"expected a \*ForCausalLM architecture"):
        check_frontier(frontier, 64)
    config.unlink()
    with pytest.raises(FrontierError, match="frontier: no config.json; not a Hugging Face model directory"):
        check_frontier(frontier, 64)


def test_pickled_weights_are_refused_never_read(frontier):
    (frontier / "model.safetensors").rename(frontier / "pytorch_model.bin")  # never opened: any bytes would do
    with pytest.raises(FrontierError, match=r"weights only as pickled files \['pytorch_model.bin'\]; refused \(they "
                                            r"are never unpickled\): expected \*.safetensors"):
        check_frontier(frontier, 64)
    (frontier / "pytorch_model.bin").unlink()
    with pytest.raises(FrontierError, match="no weights; expected model.safetensors"):
        check_frontier(frontier, 64)


def test_no_tokenizer(frontier):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (frontier / name).unlink(missing_ok=True)
    with pytest.raises(FrontierError, match=r"no tokenizer \(tokenizer.json or tokenizer_config.json\); the "
                                            r"frontier's tokenizer is the run's"):
        check_frontier(frontier, 64)


def test_a_vocabulary_the_surrogates_cannot_share(tmp_path):
    small = save_frontier(tmp_path / "small", vocab_delta=-3)
    with pytest.raises(FrontierError, match=r"the model has 20 embedding rows \(config.json vocab_size\) but its "
                                            r"tokenizer has 23 tokens; .* expected vocab_size >= 23"):
        check_frontier(small, 64)


def test_a_context_shorter_than_max_length(frontier):
    with pytest.raises(FrontierError, match=r"context 64 tokens \(config.json max_position_embeddings\) is shorter "
                                            r"than max_length 96; expected at least 96"):
        check_frontier(frontier, 96)


def test_every_surrogate_shares_the_frontiers_vocabulary(frontier, tmp_path):
    info = check_frontier(frontier, 64)
    check_surrogates(info, info.tokenizer_hash, [frontier])
    other = save_frontier(tmp_path / "other", vocab_delta=4)
    with pytest.raises(FrontierError, match=r"other/config.json: vocab_size 27; expected 23"):
        check_surrogates(info, info.tokenizer_hash, [frontier, other])
    with pytest.raises(FrontierError, match="the run's tokenizer .* is not the frontier's"):
        check_surrogates(info, "0" * 16, [frontier])


def test_train_config_with_your_own_frontier(frontier):
    base = {"surrogate": {"preset": "tiny", "optim": {"max_length": 64}}, "frontier": str(frontier)}
    config = from_dict(TrainConfig, base)
    assert config.frontier_dir == str(frontier) and config.frontier_role is None and window_length(config) == 64
    assert from_dict(TrainConfig, {**base, "frontier": {"preset": "tiny"}}).frontier_role.preset == "tiny"
    with pytest.raises(ConfigError, match="retrained: the gold model is the frontier's architecture retrained"):
        from_dict(TrainConfig, {**base, "retrained": {"preset": "tiny"}, "retrained_cutoffs": ["2017-12-31"]})
    with pytest.raises(ConfigError, match="tokenizer: with your own frontier its tokenizer is the run's"):
        from_dict(TrainConfig, {**base, "tokenizer": "elsewhere"})
    assert window_length(from_dict(TrainConfig, {**base, "surrogate": {"preset": "tiny"}})) == 64  # its context
    with pytest.raises(ConfigError, match=r"surrogate.optim.max_length: expected 2..64 \(preset 'tiny' has 64 "
                                          r"positions\), got 96"):
        from_dict(TrainConfig, {**base, "surrogate": {"preset": "tiny", "optim": {"max_length": 96}}})


def test_a_bad_frontier_fails_before_anything_is_written(tmp_path):
    surrogate = RoleConfig(preset="tiny", optim=Optimisation(max_length=64))
    config = TrainConfig(surrogate=surrogate, split=str(tmp_path / "split"), output=str(tmp_path / "models"),
                         frontier=str(tmp_path / "nope"))
    with pytest.raises(FrontierError, match="frontier: .*nope: no such directory"):
        train_registry(config)
    assert not (tmp_path / "models").exists()


def test_end_to_end_frontier_fills_the_train_stage(frontier, tmp_path):
    train = {"surrogate": {"preset": "tiny", "optim": {"max_length": 64}}}
    config = from_dict(EndToEndConfig, {"worlds": [], "frontier": str(frontier), "train": train})
    assert config.train.frontier_dir == str(frontier)
    with pytest.raises(ConfigError, match="frontier: your own frontier serves the training and the backtest; add a "
                                          "train section"):
        from_dict(EndToEndConfig, {"worlds": [], "frontier": str(frontier)})
    with pytest.raises(ConfigError, match="disagree"):
        from_dict(EndToEndConfig, {"worlds": [], "frontier": str(frontier),
                                   "train": {**train, "frontier": {"preset": "tiny"}}})
    from pipelines.end_to_end import run

    bad = from_dict(EndToEndConfig, {"worlds": [{"name": "synthetic-market", "preset": "tiny"}],
                                     "frontier": str(tmp_path / "nope"), "train": train})
    with pytest.raises(FrontierError, match="train.frontier: .*nope: no such directory"):
        run(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # not even the worlds


def test_the_registry_returns_the_recorded_external_frontier(frontier, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"cutoffs": []}))
    with pytest.raises(RegistryError, match="no frontier/ in this registry"):
        Registry(root).frontier_path()
    assert not Registry(root).has_frontier()
    entry = check_frontier(frontier, 64).manifest_entry()
    (root / "manifest.json").write_text(json.dumps({"cutoffs": [], "external_frontier": entry}))
    assert Registry(root).has_frontier() and Registry(root).frontier_path() == frontier.resolve()
    (root / "manifest.json").write_text(json.dumps({"cutoffs": [], "external_frontier": {
        **entry, "weights": {"model.safetensors": 1}}}))
    with pytest.raises(RegistryError, match=r"manifest.json external_frontier: the frontier at .* changed since "
                                            r"training"):
        Registry(root).frontier_path()
    shutil.rmtree(frontier)
    with pytest.raises(RegistryError, match="is not there any more"):
        Registry(root).frontier_path()
