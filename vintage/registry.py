"""Model registry: one directory per training run, read by decoding and backtests.

    tokenizer/                      the one tokenizer every model of the run uses
    frontier/                       HF causal LM (safetensors); or none, and manifest.json's
                                    `external_frontier` names the user's own (`frontier: DIR`)
    vintages/YYYY-MM-DD/            one surrogate per cutoff; the last cutoff (the corpus end) is `full`; with a
                                    frontier-sized tokenizer, vocabulary.json: the ids it is trained over
                                    (vintage/compact.py)
    retrained/YYYY-MM-DD/seed=N/    the frontier preset retrained on data <= cutoff (embedded worlds only)
    manifest.json                   cutoffs, roles, hashes, losses, config, calibration evidence

Lookup as of a date is loud: the vintage used is the latest whose cutoff day has fully passed before
`as_of`; a date before the first cutoff is an error listing the cutoffs there are.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from corpora.files import short_hash, write_text_atomically
from corpora.timeline import as_utc, usable_cutoffs


class RegistryError(ValueError):
    """The registry cannot answer: missing model, or a date before every vintage."""


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "manifest.json").exists():
            raise RegistryError(f"{self.root}: not a model registry (no manifest.json)")
        self._manifest, self._manifest_version = {}, None

    @property
    def manifest(self) -> dict:
        """manifest.json, parsed once per version of the file (another process may rewrite it: a stat per
        access tells). Read it, don't edit it: `update_manifest` writes."""
        path = self.root / "manifest.json"
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if version != self._manifest_version:
            self._manifest, self._manifest_version = json.loads(path.read_text()), version
        return self._manifest

    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer"

    def frontier_path(self) -> Path:
        """The user's own frontier the registry was trained against (its manifest's `external_frontier`:
        path and weight sizes, checked here), else the trained frontier/."""
        external = self.manifest.get("external_frontier")
        if external is None:
            path = self.root / "frontier"
            if not path.exists():
                raise RegistryError(f"{self.root}: no frontier/ in this registry; pass a frontier directory")
            return path
        path = Path(external["path"])
        where = f"{self.root}/manifest.json external_frontier"
        if not path.is_dir():
            raise RegistryError(f"{where}: the frontier {path} the surrogates were trained against is not there "
                                f"any more; restore it or pass a frontier directory")
        if safetensors_files(path) != external["weights"]:
            raise RegistryError(f"{where}: the frontier at {path} changed since training (weights "
                                f"{safetensors_files(path)}, expected {external['weights']}); retrain or pass "
                                f"a frontier directory")
        return path

    @property
    def holdout_every(self) -> int | None:
        """One document in this many was held out of training (vintage/holdout.py); None for a registry that
        records no training config."""
        every = self.manifest.get("config", {}).get("holdout_every")
        return None if every is None else int(every)

    def has_frontier(self) -> bool:
        """A trained frontier/ or a recorded external one."""
        return (self.root / "frontier").exists() or "external_frontier" in self.manifest

    def cutoffs(self) -> list[str]:
        """Vintage cutoffs (YYYY-MM-DD), ascending; the last one is the full surrogate."""
        listed = self.manifest.get("cutoffs")
        if listed is None:
            listed = sorted(p.name for p in (self.root / "vintages").iterdir() if p.is_dir())
        return sorted(listed)

    def vintage_path(self, cutoff: str) -> Path:
        path = self.root / "vintages" / cutoff
        if not path.exists():
            raise RegistryError(f"{self.root}: no vintage {cutoff}; vintages are {self.cutoffs()}")
        return path

    def full_cutoff(self) -> str:
        return self.manifest.get("full") or self.cutoffs()[-1]

    def full_path(self) -> Path:
        return self.vintage_path(self.full_cutoff())

    def retrained_path(self, cutoff: str, seed: int = 0) -> Path:
        path = self.root / "retrained" / cutoff / f"seed={seed}"
        if not path.exists():
            raise RegistryError(f"{self.root}: no retrained model for {cutoff} seed {seed}")
        return path

    def retrained_seeds(self, cutoff: str) -> list[int]:
        base = self.root / "retrained" / cutoff
        return sorted(int(p.name.split("=", 1)[1]) for p in base.glob("seed=*")) if base.exists() else []

    def vintage_for(self, as_of: Any) -> tuple[str, Path]:
        """(cutoff, directory) of the latest vintage usable at `as_of`."""
        when = as_utc(as_of)
        cutoffs = self.cutoffs()
        usable = usable_cutoffs(cutoffs, when)
        if not usable:
            raise RegistryError(f"as_of {when.isoformat()} precedes every vintage of {self.root} "
                                f"(cutoffs: {', '.join(cutoffs)}); no point-in-time model exists for it")
        return usable[-1], self.vintage_path(usable[-1])

    def calibrated_alpha(self, cutoff: str) -> float:
        evidence = self.manifest.get("calibration", {}).get(cutoff)
        if evidence is None:
            raise RegistryError(
                f"{self.root}: vintage {cutoff} has no calibrated alpha in manifest.json. The pipeline chooses one "
                f"on held-out text when the registry has a frontier (train.calibrate_strength, vintage/strength.py); "
                f"or calibrate on labelled facts with `vintage calibrate --registry {self.root} --world WORLD`, or "
                f"give alpha as a number")
        return float(evidence["alpha"])

    def update_manifest(self, **entries) -> dict:
        """Merge `entries` into manifest.json atomically (write a temp file, then rename)."""
        manifest = copy.deepcopy(self.manifest)
        for key, value in entries.items():
            if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                manifest[key] = {**manifest[key], **value}
            else:
                manifest[key] = value
        write_text_atomically(self.root / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
        return manifest

    def record_calibration(self, cutoff: str, evidence: dict) -> None:
        self.update_manifest(calibration={cutoff: evidence})

    def fitted_temperature(self, kind: str, cutoff: str) -> float:
        """The confidence-matching temperature fitted for the `kind` surrogate at `cutoff`."""
        entry = self.manifest.get("temperatures", {}).get(kind, {}).get(cutoff)
        if entry is None:
            raise RegistryError(f"{self.root}: no fitted {kind} temperature for vintage {cutoff}; run "
                                f"`vintage fit-temperatures --registry {self.root} --split SPLIT`")
        return float(entry["temperature"])


def safetensors_files(directory: Path) -> dict[str, int]:
    """The weights a directory holds as safetensors (a sharded index's shards included), name -> bytes."""
    return {p.name: p.stat().st_size for p in sorted(directory.glob("*.safetensors"))}


def model_fingerprint(directory: Path) -> str:
    """What a model is: its training stage hash (registry models), else the weights file's size and mtime."""
    info = directory / "training.json"
    if info.exists():
        stage = json.loads(info.read_text()).get("stage_hash")
        if stage:
            return stage
    weights = sorted(directory.glob("*.safetensors"))
    return short_hash(json.dumps([(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]))
