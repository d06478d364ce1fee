"""Epoch checkpoints of a continued-training run (vintage/continued.py): a run killed mid-way resumes from its last
finished epoch instead of starting again (one gold model of a real frontier takes 35-55 minutes on 2 cores).

What an epoch leaves beside the output directory (`.NAME.epochs/`): the trained parameters and the optimizer's
moments (safetensors), and state.json (the epoch, the history, tokens seen, seconds spent, the learning-rate
schedule, the shuffling RNG, the fingerprint of the run's inputs). A checkpoint of other inputs (another base,
other documents, probes or settings) is never resumed: it is removed with a message.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from corpora.files import short_hash, staged_directory


@dataclass
class Resumed:
    """Where a resumed run stands after its last finished epoch."""

    epoch: int
    history: list[dict]
    tokens_seen: int
    seconds: float


class EpochCheckpoint:
    """The checkpoint directory of the run writing `out`, for the inputs `fingerprint` names."""

    def __init__(self, out: str | Path, fingerprint: str):
        out = Path(out)
        self.path = out.parent / f".{out.name}.epochs"
        self.fingerprint = fingerprint

    @staticmethod
    def fingerprint_of(*parts) -> str:
        """A hash of the run's inputs (json-serialisable parts)."""
        return short_hash(json.dumps(parts, sort_keys=True, default=str))

    def save(self, epoch: int, model, optimizer, schedule, order: random.Random, history: list[dict],
             tokens_seen: int, seconds: float) -> None:
        """Write the state after `epoch`: staged, then swapped in (a kill while writing keeps the last checkpoint; one
        between the swap's two renames leaves none, and `resume` then starts afresh)."""
        with staged_directory(self.path) as staging:
            self._write(staging, epoch, model, optimizer, schedule, order, history, tokens_seen, seconds)

    def _write(self, staging: Path, epoch: int, model, optimizer, schedule, order: random.Random,
               history: list[dict], tokens_seen: int, seconds: float) -> None:
        from safetensors.torch import save_file

        staging.mkdir()
        names = {id(p): n for n, p in model.named_parameters()}
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(staging / "trained.safetensors"))
        moments = {}
        state = optimizer.state_dict()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, entry in state["state"].items():
            for key, value in entry.items():
                moments[f"{names[id(params[index])]}::{key}"] = torch.as_tensor(value).detach().contiguous()
        save_file(moments, str(staging / "optimizer.safetensors"))
        version, internal, gauss = order.getstate()
        (staging / "state.json").write_text(json.dumps({
            "fingerprint": self.fingerprint, "epoch": epoch, "history": history, "tokens_seen": tokens_seen,
            "seconds": seconds, "schedule": schedule.state_dict(), "param_groups": state["param_groups"],
            "order": [version, list(internal), gauss]}, default=str))

    def resume(self, model, optimizer, schedule, order: random.Random) -> Resumed | None:
        """Load the last finished epoch into the model, optimizer, schedule and RNG; None when there is none (or
        it is of other inputs: then it is removed)."""
        from safetensors.torch import load_file

        state_path = self.path / "state.json"
        files = [state_path, self.path / "trained.safetensors", self.path / "optimizer.safetensors"]
        if not state_path.exists():
            return None
        if not all(f.exists() for f in files):
            print(f"[continue] {self.path}: an incomplete checkpoint; starting afresh", flush=True)
            self.clear()
            return None
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") != self.fingerprint:
            print(f"[continue] {self.path}: a checkpoint of other inputs; starting afresh", flush=True)
            self.clear()
            return None
        trained = load_file(str(self.path / "trained.safetensors"))
        missing = set(trained) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"{self.path}: parameters {sorted(missing)[:3]} are not the model's")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in trained:
                    param.copy_(trained[name])
        moments = load_file(str(self.path / "optimizer.safetensors"))
        params = [p for group in optimizer.param_groups for p in group["params"]]
        names = {id(p): n for n, p in model.named_parameters()}
        restored = {}
        for index, param in enumerate(params):
            prefix = f"{names[id(param)]}::"
            entry = {k[len(prefix):]: v for k, v in moments.items() if k.startswith(prefix)}
            if entry:
                restored[index] = entry
        optimizer.load_state_dict({"state": restored, "param_groups": state["param_groups"]})
        schedule.load_state_dict(state["schedule"])
        version, internal, gauss = state["order"]
        order.setstate((version, tuple(internal), gauss))
        print(f"[continue] resuming after epoch {state['epoch']} ({self.path})", flush=True)
        return Resumed(state["epoch"], state["history"], state["tokens_seen"], state["seconds"])

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
