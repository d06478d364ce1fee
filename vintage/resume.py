"""Where a run continues: the stages already saved, and the most advanced whole checkpoint that is a
prefix of the run (a crashed attempt's, or the one kept after the run last finished)."""
from __future__ import annotations

import json
from pathlib import Path

from vintage.run_spec import RunSpec


def stages_done(run: RunSpec) -> int:
    """How many leading stages of `run` already have a saved model trained by exactly those stages."""
    done = 0
    for stage in run.stages:
        info = Path(stage.save_to) / "training.json"
        if not info.exists() or json.loads(info.read_text()).get("stage_hash") != stage.stage_hash:
            break
        done += 1
    return done


def resume_point(run: RunSpec, storage: Path, kept: Path) -> Path | None:
    """The most advanced checkpoint whose completed stages are a prefix of `run`'s: one a crashed attempt
    left in `storage`, or the one kept after the run last finished (`kept`, for runs that grow)."""
    hashes = [s.stage_hash for s in run.stages]
    best, best_stage = None, 0
    candidates = sorted((storage / run.name).glob("checkpoint_*/state.json")) + sorted(kept.glob("state.json"))
    for state_path in candidates:
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            state = None
        missing = _incomplete(state_path.parent, state)
        if missing:
            print(f"train: {run.name}: not resuming from {state_path.parent}, a checkpoint cut short while it "
                  f"was saved ({missing})", flush=True)
            continue
        done = state.get("stage_hashes", [])
        if 0 < len(done) <= len(hashes) and done == hashes[: len(done)] and len(done) >= best_stage:
            best, best_stage = state_path.parent, len(done)
    return best


def _incomplete(directory: Path, state: dict | None) -> str | None:
    """Why a checkpoint is incomplete (None: it is whole): its state.json unreadable, or a file it lists
    missing or of another size. Checkpoints from before the listing carry none and are taken as whole."""
    if state is None:
        return "state.json unreadable"
    for name, size in (state.get("files") or {}).items():
        path = directory / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != size:
            return f"{name}: {path.stat().st_size} of {size} bytes"
    return None
