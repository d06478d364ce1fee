"""Fidelity with a real pretrained frontier (issue 26): SmolLM2-135M continued on the tiny world, end to end.

The plumbing of bench/fidelity_real.py at the smallest scale (one epoch, the last two blocks): the base continued
into a frontier and two gold seeds, the surrogates trained with its tokenizer, the gold in the registry's retrained
layout, and the fidelity table written as JSON with exactly one recommended row. The numbers come from the bench
(bench/results/fidelity_real_frontier.json), not from here."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from vintage.continued import ContinueSettings, Probe, continue_pretrained, probe_accuracy
from vintage.pretrained import real_frontier

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
FIELDS = {"method", "gap_closed", "gap_closed_low", "gap_closed_high", "pre_accuracy", "frontier_pre_accuracy", "ppl_ratio_world", "ppl_ratio_general",
          "ks_p", "gold_ks_floor", "forecast_accuracy", "recommended"}


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smollm():
    return real_frontier("smollm2-135m")


def test_continued_training_learns_a_handful_of_facts(smollm, tmp_path):
    from transformers import AutoModelForCausalLM

    from vintage.tokenizer import load_tokenizer

    names = ["Zorblax", "Quimtar", "Velmora", "Tandrix", "Orvequil", "Pelutron", "Galvion", "Kelnix"]
    outcomes = [" beat", " miss", " miss", " beat", " beat", " miss", " beat", " miss"]
    facts = [(f"{n} 2031q1 results:", o) for n, o in zip(names, outcomes)]  # 8 facts the base cannot know
    texts = [f"{prompt}{answer}." for prompt, answer in facts] * 3
    probes = [Probe(p, (" beat", " miss"), a) for p, a in facts]
    settings = ContinueSettings(max_epochs=8, min_epochs=1, target=1.0, lr=2e-3, rank=None, top_layers=4,
                                batch_size=4)  # measured: all 8 by epoch 3, 15 s on 2 busy cores
    torch.set_num_threads(2)
    info = continue_pretrained(smollm, texts, tmp_path / "continued", settings, probes, progress=False)
    assert info["probe_accuracy"] == 1.0 and info["epochs"] <= 8 and info["tokens_seen"] > 0
    assert info["history"][0]["probe_accuracy"] < 1.0  # it learnt them: the base did not know them
    assert [h["epoch"] for h in info["history"]] == list(range(1, info["epochs"] + 1))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "continued"), use_safetensors=True).eval()
    assert probe_accuracy(model, load_tokenizer(tmp_path / "continued"), probes) == 1.0  # what was saved knows it
    assert not list((tmp_path / "continued").glob("*.bin"))  # safetensors only
    with pytest.raises(ValueError, match="no documents"):
        continue_pretrained(smollm, [], tmp_path / "none", settings)


def test_a_killed_continued_run_resumes_after_its_last_finished_epoch(smollm, tmp_path, monkeypatch):
    """Killed in its second epoch, a rerun resumes after the first (parameters, optimizer moments, schedule and
    shuffling restored) and ends where the uninterrupted run ends."""
    from safetensors.torch import load_file

    import vintage.continued as continued

    facts = [(f"{n} 2031q1 results:", o) for n, o in zip(["Zorblax", "Quimtar", "Velmora", "Tandrix"],
                                                          [" beat", " miss", " miss", " beat"])]
    texts = [f"{prompt}{answer}." for prompt, answer in facts] * 3
    probes = [Probe(p, (" beat", " miss"), a) for p, a in facts]
    settings = ContinueSettings(max_epochs=3, min_epochs=3, target=1.0, top_layers=1, batch_size=4)
    torch.set_num_threads(2)
    whole = continue_pretrained(smollm, texts, tmp_path / "whole", settings, probes, progress=False)
    real, calls = continued.probe_accuracy, []

    def killed_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args)

    monkeypatch.setattr(continued, "probe_accuracy", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        continue_pretrained(smollm, texts, tmp_path / "cut", settings, probes, progress=False)
    assert json.loads((tmp_path / ".cut.epochs" / "state.json").read_text())["epoch"] == 1
    assert not (tmp_path / "cut").exists()
    epochs_run = []
    monkeypatch.setattr(continued, "probe_accuracy", lambda *args: epochs_run.append(1) or real(*args))
    resumed = continue_pretrained(smollm, texts, tmp_path / "cut", settings, probes, progress=False)
    assert len(epochs_run) == 2  # epochs 2 and 3: the first was not trained again
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3] and resumed["tokens_seen"] == whole["tokens_seen"]
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in whole["history"]], abs=1e-5)
    ours, theirs = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("cut", "whole"))
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-5)
    assert not (tmp_path / ".cut.epochs").exists()  # a finished run leaves no checkpoint


def test_the_fidelity_bench_with_the_real_base_on_the_tiny_world(smollm, tmp_path, ray_local):
    bench = load_bench("fidelity_real")
    out, table = tmp_path / "fr", tmp_path / "fidelity_real_frontier.json"
    assert bench.main(["--out", str(out), "--preset", "tiny", "--max-epochs", "1", "--top-layers", "2", "--seeds", "0", "1",
                       "--general", "none", "--methods", "smoke", "--json", str(table),
                       "--surrogate-preset", "tiny", "--surrogate-epochs", "2"]) == 0
    frontier = json.loads((out / "frontier" / "training.json").read_text())
    assert frontier["epochs"] == 1 and frontier["probes"] == 43  # every fact of the tiny world
    gold = json.loads((out / "gold" / "2017-12-31" / "seed=1" / "training.json").read_text())
    assert gold["settings"]["seed"] == 1 and gold["documents"] < frontier["documents"]
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    assert manifest["external_frontier"]["path"] == str((out / "frontier").resolve())
    assert (out / "models" / "retrained" / "2017-12-31" / "seed=0" / "model.safetensors").exists()

    rows = json.loads(table.read_text())["rows"]
    assert all(FIELDS <= set(r) for r in rows) and sum(r["recommended"] for r in rows) == 1
    names = {r["method"] for r in rows}
    from vintage import recommended

    assert [r["spec"] for r in rows if r["recommended"]] == [recommended.SPEC]
    assert any(n.startswith("linear a=held-out=") for n in names)
    strength = manifest["calibration"]["2017-12-31"]  # the pipeline chose the vintage's alpha on held-out text
    assert strength["reference"] == "held-out text" and 0 <= strength["alpha"] <= 4
    for r in rows:
        assert 0 <= r["pre_accuracy"] <= 1 and math.isfinite(r["ppl_ratio_world"]) and r["ppl_ratio_general"] is None
    assert (out / "fidelity" / "fidelity.md").exists()
