"""A user's own pretrained frontier (`frontier: DIR`): checked once, before any training starts.

Any Hugging Face causal LM directory with safetensors weights and its tokenizer. Its tokenizer becomes the
run's, so every surrogate shares its vocabulary; pickled weights are refused, never unpickled.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from corpora.files import short_hash
from vintage.registry import safetensors_files

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class FrontierError(ValueError):
    """The frontier directory cannot serve as the run's frontier; the message names the path and why."""


@dataclass(frozen=True)
class FrontierInfo:
    """What the checks found, recorded in the registry manifest (`external_frontier`)."""

    path: str  # absolute directory
    architecture: str  # e.g. LlamaForCausalLM
    vocab_rows: int  # the model's embedding (and output) rows
    tokenizer_tokens: int  # len(tokenizer): what the surrogates are built with
    context: int | None  # max_position_embeddings (n_positions); None: the config states none
    weights: dict[str, int]  # safetensors file -> bytes
    tokenizer_hash: str  # vintage.tokenizer.tokenizer_hash of its tokenizer
    fingerprint: str  # config.json, weight sizes and tokenizer hash, hashed

    def manifest_entry(self) -> dict:
        return asdict(self)


def _causal_lm_architectures() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def check_frontier(path: str | Path, max_length: int, where: str = "frontier") -> FrontierInfo:
    """Check that `path` is a causal LM the surrogates can be trained against, or raise a FrontierError
    naming `where` (the config key), the path and what was expected. Reads config.json, the tokenizer and
    file sizes only; the weights are not loaded."""
    from transformers import AutoConfig

    from vintage.tokenizer import load_tokenizer, tokenizer_hash

    directory = Path(path).expanduser()
    here = f"{where}: {directory}"
    if not directory.exists():
        raise FrontierError(f"{here}: no such directory (expected a Hugging Face causal LM directory with "
                            f"config.json, safetensors weights and a tokenizer)")
    if not directory.is_dir():
        raise FrontierError(f"{here}: not a directory (expected a Hugging Face causal LM directory)")
    directory = directory.resolve()
    here = f"{where}: {directory}"
    config_file = directory / "config.json"
    if not config_file.exists():
        raise FrontierError(f"{here}: no config.json; not a Hugging Face model directory (expected "
                            f"config.json, safetensors weights and a tokenizer)")
    try:
        raw = json.loads(config_file.read_text())
    except ValueError as err:
        raise FrontierError(f"{here}/config.json: not valid JSON ({err})") from err
    architectures = raw.get("architectures") or []
    known = _causal_lm_architectures()
    causal = [a for a in architectures if a.endswith("ForCausalLM") or a in known]
    if not causal:
        raise FrontierError(f"{here}/config.json: architectures {architectures} is not a causal LM; expected a "
                            f"*ForCausalLM architecture (or another of transformers' causal LMs, e.g. GPT2LMHeadModel)")

    weights = safetensors_files(directory)
    if not weights:
        pickled = sorted(p.name for pattern in PICKLED for p in directory.glob(pattern))
        if pickled:
            raise FrontierError(f"{here}: weights only as pickled files {pickled}; refused (they are never "
                                f"unpickled): expected *.safetensors (convert them with safetensors first)")
        raise FrontierError(f"{here}: no weights; expected model.safetensors (or sharded *.safetensors)")
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if s not in weights]
        if missing:
            raise FrontierError(f"{here}: model.safetensors.index.json lists shards that are not there: {missing}")

    try:
        config = AutoConfig.from_pretrained(str(directory))  # never trust_remote_code
    except (ValueError, KeyError, OSError) as err:
        raise FrontierError(f"{here}/config.json: transformers cannot read it ({err})") from err
    text = config.get_text_config()
    vocab_rows = getattr(text, "vocab_size", None)
    if not isinstance(vocab_rows, int) or vocab_rows <= 0:
        raise FrontierError(f"{here}/config.json: no vocab_size; expected the embedding's row count")
    context = getattr(text, "max_position_embeddings", None)

    if not any((directory / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FrontierError(f"{here}: no tokenizer (tokenizer.json or tokenizer_config.json); the frontier's "
                            f"tokenizer is the run's, so it must be saved beside the weights")
    try:
        tokenizer = load_tokenizer(directory)
    except Exception as err:  # transformers raises many kinds for a broken tokenizer
        raise FrontierError(f"{here}: its tokenizer does not load ({type(err).__name__}: {err})") from err
    if tokenizer.eos_token_id is None:
        raise FrontierError(f"{here}: its tokenizer has no EOS token; expected one (training ends every "
                            f"document with it)")
    tokens = len(tokenizer)
    if vocab_rows < tokens:
        raise FrontierError(f"{here}: the model has {vocab_rows} embedding rows (config.json vocab_size) but its "
                            f"tokenizer has {tokens} tokens; surrogates are built with len(tokenizer) rows, so "
                            f"expected vocab_size >= {tokens}")
    if context is not None and context < max_length:
        raise FrontierError(f"{here}: context {context} tokens (config.json max_position_embeddings) is shorter "
                            f"than max_length {max_length}; expected at least {max_length} (or lower max_length)")

    token_hash = tokenizer_hash(tokenizer)
    fingerprint = short_hash(json.dumps([config_file.read_text(), weights, token_hash]))
    return FrontierInfo(path=str(directory), architecture=causal[0], vocab_rows=vocab_rows, tokenizer_tokens=tokens,
                        context=context, weights=weights, tokenizer_hash=token_hash, fingerprint=fingerprint)


def check_surrogates(info: FrontierInfo, tokenizer_hash: str, models: list[Path]) -> None:
    """Every trained surrogate shares the frontier's vocabulary: the run's tokenizer is the frontier's and
    each model's output rows equal its length (the decoding lines their logits up token by token), or, for a
    compact surrogate (vintage/compact.py), its vocabulary.json maps its rows onto that length."""
    if tokenizer_hash != info.tokenizer_hash:
        raise FrontierError(f"frontier: {info.path}: the run's tokenizer (hash {tokenizer_hash}) is not the "
                            f"frontier's ({info.tokenizer_hash})")
    from vintage.compact import CompactVocabulary

    for model in models:
        rows = json.loads((Path(model) / "config.json").read_text()).get("vocab_size")
        compact = CompactVocabulary.load(model)
        if compact is not None:
            if compact.size != info.tokenizer_tokens or rows != compact.rows:
                raise FrontierError(f"{model}: a compact surrogate of {rows} rows over a {compact.size}-token "
                                    f"vocabulary (vocabulary.json); expected {compact.rows} rows over "
                                    f"{info.tokenizer_tokens}, the length of the frontier's tokenizer ({info.path})")
        elif rows != info.tokenizer_tokens:
            raise FrontierError(f"{model}/config.json: vocab_size {rows}; expected {info.tokenizer_tokens}, the "
                                f"length of the frontier's tokenizer ({info.path})")
