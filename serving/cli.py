"""`vintage ask` and `vintage serve`: argument parsing, then one call into the library.

    vintage ask --registry out/tiny/models --as-of 2018-01-15 "Velmora 2017q4 results:"
    vintage ask --registry out/tiny/models --as-of 2018-01-15 --choices " beat" " miss" --compare "Velmora 2017q4 results:"
    VINTAGE_API_KEY=secret vintage serve --registry out/tiny/models --port 8000
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from serving.methods import DEFAULT_METHOD, parse_method
from serving.protocol import AS_OF_FORMAT, APIError, parse_as_of
from vintage.precision import DTYPES, dtype_name


def _as_of(value: str):
    try:
        return parse_as_of(value, "--as-of")
    except APIError as err:
        raise ValueError(err.message) from None


def ask(args) -> int:
    from transformers.utils import logging as hf_logging

    from vintage.decoding import PointInTimeLM

    hf_logging.disable_progress_bar()  # a bar per model load would bury the answer

    if args.prompt is None:  # `--choices " beat" " miss" "prompt"`: nargs="+" took the prompt as well
        if not args.choices or len(args.choices) < 2:
            raise ValueError("a prompt is required")
        *args.choices, args.prompt = args.choices
    from vintage.registry import Registry

    when, method = _as_of(args.as_of), parse_method(args.method)
    registry = Registry(args.registry)
    method = method.at_vintage(registry, registry.vintage_for(when)[0])
    lm = PointInTimeLM.from_registry(registry, when, frontier=args.frontier, dtype=args.dtype, **method.lm_kwargs())
    print(f"as of {when.date()}: vintage {lm.vintage_cutoff}, method {method.spec}, computing in "
          f"{dtype_name(args.dtype)}", file=sys.stderr)
    frontier = lm.with_settings(mode="frontier", fallback=None) if args.compare else None
    if args.choices:
        scored = lm.score([args.prompt], [args.choices])[0]
        columns = [("point-in-time", scored)]
        if frontier is not None:
            columns.append(("frontier", frontier.score([args.prompt], [args.choices])[0]))
        width = max(len(repr(c)) for c in args.choices)
        print(f"{'choice':<{width}}" + "".join(f"  {name + ' logprob':>22}  {'prob':>6}" for name, _ in columns))
        for i, choice in enumerate(args.choices):
            cells = "".join(f"  {s.choice_logprobs[i]:>22.4f}  {s.probabilities()[i]:>6.3f}" for _, s in columns)
            print(f"{choice!r:<{width}}{cells}")
        return 0
    greedy = args.temperature == 0
    options = dict(max_new_tokens=args.max_new_tokens, greedy=greedy, temperature=args.temperature or 1.0,
                   seed=args.seed)
    text = lm.generate([args.prompt], **options)[0]
    if frontier is None:
        print(text)
    else:
        print(f"point-in-time: {text}")
        print(f"frontier:      {frontier.generate([args.prompt], **options)[0]}")
    return 0


def serve(args) -> int:
    from vintage.registry import Registry
    from serving.config import load_config, read_api_key

    config = load_config(args.config)
    key = read_api_key(config, args.config)
    Registry(args.registry).frontier_path() if args.frontier is None else None  # fail before Ray starts
    os.environ.setdefault("OMP_NUM_THREADS", str(config.torch_threads))
    import ray
    from ray import serve as ray_serve

    from serving.app import build_app

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    try:
        ray_serve.start(http_options={"host": args.host, "port": args.port})
        ray_serve.run(build_app(args.registry, args.frontier, config, key), name="vintage", route_prefix="/")
        print(f"vintage serve: listening on http://{args.host}:{args.port}/v1 (registry {args.registry}; computing in "
              f"{dtype_name(config.dtype)})", flush=True)
        stop.wait()
    finally:
        try:
            ray_serve.shutdown()
        finally:
            ray.shutdown()
    return 0


def add_commands(commands) -> None:
    """Register `ask` and `serve` on the `vintage` command's subparsers."""
    a = commands.add_parser("ask", help="one question to the point-in-time model, from the shell")
    a.add_argument("prompt", nargs="?", help="the prompt (after --choices too: the last word given is the prompt)")
    a.add_argument("--registry", required=True, help="model registry directory")
    a.add_argument("--frontier", help="frontier directory (default: the registry's frontier/)")
    a.add_argument("--as-of", required=True, help=f"the date to answer as of: {AS_OF_FORMAT}")
    a.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"frontier | linear alpha=A | rank k=K margin=M | switch margin=M, each with an optional "
                        f"plausibility=P (default {DEFAULT_METHOD!r})")
    a.add_argument("--max-new-tokens", type=int, default=16)
    a.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    a.add_argument("--seed", type=int, help="for sampling (temperature > 0)")
    a.add_argument("--choices", nargs="+", help="score these continuations instead of generating")
    a.add_argument("--compare", action="store_true", help="also print the frontier's own answer")
    a.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="what the models compute in (auto: bfloat16 where the CPU or GPU has it; default float32)")
    a.set_defaults(func=ask)

    s = commands.add_parser("serve", help="an OpenAI-compatible HTTP API on Ray Serve (API key required)")
    s.add_argument("--registry", required=True, help="model registry directory")
    s.add_argument("--frontier", help="frontier directory (default: the registry's frontier/)")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--config", help="serve YAML (serving/config.py ServeConfig; e.g. configs/serve/local.yaml)")
    s.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    s.set_defaults(func=serve)
