"""`vintage serve` settings (YAML, validated at load) and where the API key comes from."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from corpora.config import ConfigError, doc, load_yaml
from serving.methods import DEFAULT_METHOD, MethodError, parse_method
from vintage.precision import DTYPES

API_KEY_ENV = "VINTAGE_API_KEY"


@dataclass
class ServeConfig:
    """How the Ray Serve application batches, caches and answers."""

    api_key_file: str | None = doc(f"file whose first line is the API key; unset: the {API_KEY_ENV} environment "
                                   "variable (one of the two is required)", None)
    default_method: str = doc("method of requests that name none (serving/methods.py spec string)", DEFAULT_METHOD)
    default_max_tokens: int = doc("max_tokens of requests that give none (OpenAI's completions default)", 16)
    max_batch_size: int = doc("most requests decoded together in one steered step (serving/scheduler.py)", 16)
    batch_wait_timeout_s: float = doc("when idle, how long the first request waits for others to start with it",
                                      0.005)
    max_vintages: int = doc("vintage surrogates kept loaded per replica (LRU, @serve.multiplexed)", 8)
    num_replicas: int = doc("replicas of the application; each loads the frontier once", 1)
    cpus_per_replica: float = doc("Ray CPUs reserved per replica", 1.0)
    torch_threads: int = doc("torch threads per replica (1: under contention more threads run slower)", 1)
    max_ongoing_requests: int = doc("requests a replica accepts at once (>= max_batch_size)", 64)
    access_log: bool = doc("one line per request in the replica's log (Ray Serve's access log)", True)
    dtype: str = doc("what the models compute in: float32, bfloat16 (torch.autocast; logits and log-softmax stay "
                     "float32) or auto (bfloat16 where the CPU or GPU has it natively)", "float32")

    def __post_init__(self):
        try:
            parse_method(self.default_method)
        except MethodError as err:
            raise ValueError(f"default_method: {err}") from None
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("default_max_tokens", "max_batch_size", "max_vintages", "num_replicas", "torch_threads",
                     "max_ongoing_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                             f"({self.max_batch_size})")
        if self.batch_wait_timeout_s < 0 or self.cpus_per_replica < 0:
            raise ValueError("batch_wait_timeout_s and cpus_per_replica must be >= 0")


def load_config(path: str | Path | None) -> ServeConfig:
    return ServeConfig() if path is None else load_yaml(path, ServeConfig)


def read_api_key(config: ServeConfig, config_path: str | Path | None = None) -> str:
    """The key clients must send (Authorization: Bearer KEY): from the config's file, else the environment.
    A server without one refuses to start."""
    if config.api_key_file:
        path = Path(config.api_key_file)
        if not path.is_absolute() and config_path is not None:
            path = Path(config_path).parent / path
        if not path.exists():
            raise ConfigError(f"api_key_file: {path} does not exist")
        lines = path.read_text().splitlines()
        key = lines[0].strip() if lines else ""
        if not key:
            raise ConfigError(f"api_key_file: {path} is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise ConfigError(f"an API key is required: set {API_KEY_ENV} or name api_key_file in the serve config")
    return key


def key_digest(key: str) -> str:
    """What the replicas hold instead of the key itself (actor arguments live in Ray's control store)."""
    return hashlib.sha256(key.encode()).hexdigest()
