"""The Ray Serve application: an OpenAI-compatible HTTP API over a point-in-time model.

    GET  /v1/models                the frontier and the registry's vintages
    POST /v1/completions           prompt + as_of (+ method, max_tokens, temperature, top_k, stop, logprobs, seed)
    POST /v1/chat/completions      messages + as_of (the frontier's chat template when it has one)

Each replica loads the frontier and the full surrogate once; vintage surrogates are loaded on demand and kept
in an LRU (@serve.multiplexed, called with the cutoff rather than routed by a multiplexed-model header, which
would also split batches by vintage); concurrent requests are batched into one steered decoding step by the
replica's decoding loop (serving/scheduler.py: @serve.batch fragments long generations, see there).
Every request needs `Authorization: Bearer KEY`.
"""
# no `from __future__ import annotations`: FastAPI reads the route signatures' annotations at runtime
import asyncio
import hmac
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from serving import protocol
from serving.config import ServeConfig, key_digest
from serving.engine import DecodeJob, Engine
from serving.scheduler import DecodeLoop
from serving.protocol import APIError
from vintage.registry import RegistryError

app = FastAPI(title="vintage", description="point-in-time language models, OpenAI-compatible")


@app.exception_handler(APIError)
async def _api_error(_request: Request, err: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def vintage_model_id(cutoff: str) -> str:
    return f"vintage-{cutoff}"


@serve.deployment
@serve.ingress(app)
class VintageServer:
    def __init__(self, registry: str, frontier: str | None, config: ServeConfig, digest: str):
        import torch

        torch.set_num_threads(config.torch_threads)
        self.config, self._digest = config, digest
        self.engine = Engine(registry, frontier, config.dtype)
        self.frontier_id = self.engine.frontier_dir.name
        self.loop = DecodeLoop(self.engine, config.max_batch_size, config.batch_wait_timeout_s)

        async def load(cutoff: str):
            return await asyncio.to_thread(self.engine.load_vintage, cutoff)

        self._vintage = serve.multiplexed(max_num_models_per_replica=config.max_vintages)(load)

    # -- request checks ----------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "missing API key: send Authorization: Bearer KEY", None, "missing_api_key",
                           "authentication_error")
        if not hmac.compare_digest(key_digest(key.strip()), self._digest):
            raise APIError(401, "incorrect API key", None, "invalid_api_key", "authentication_error")

    async def _body(self, request: Request):
        self._authorize(request)
        try:
            return json.loads(await request.body())
        except ValueError:
            raise APIError(400, "the request body is not valid JSON", None) from None

    def _cutoff(self, sampling: protocol.Sampling) -> str | None:
        """The vintage for the request's as_of (always looked up, so a date before every vintage is an error
        even for the frontier method), checked against a vintage named as the model."""
        try:
            cutoff = self.engine.vintage_for(sampling.as_of)
        except RegistryError:  # its message names the registry's path, which clients need not see
            raise APIError(400, f"as_of {sampling.as_of.isoformat()} precedes every vintage (cutoffs: "
                                f"{', '.join(self.engine.cutoffs())}); no point-in-time model exists for it",
                           "as_of", "before_first_vintage") from None
        known = {self.frontier_id} | {vintage_model_id(c) for c in self.engine.cutoffs()}
        if sampling.model not in known:
            raise APIError(404, f"model {sampling.model!r} does not exist; GET /v1/models lists "
                                f"{sorted(known)}", "model", "model_not_found")
        if sampling.model != self.frontier_id and sampling.model != vintage_model_id(cutoff):
            raise APIError(400, f"model {sampling.model} does not match as_of {sampling.as_of.isoformat()}, "
                                f"which uses vintage {cutoff}; send model={self.frontier_id!r}", "model")
        return cutoff

    async def _jobs(self, sampling: protocol.Sampling, prompts: list[str], cutoff: str) -> list[DecodeJob]:
        try:
            method = sampling.method.at_vintage(self.engine.registry, cutoff)
        except RegistryError:
            raise APIError(400, f"method {sampling.method.spec!r}: vintage {cutoff} has no calibrated alpha in the "
                                f"registry; give alpha as a number", "method", "not_calibrated") from None
        jobs = []
        for i, prompt in enumerate(prompts):
            ids = self.engine.encode(prompt)
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if not ids:
                raise APIError(400, f"{where} is empty after tokenisation", "prompt", "empty_prompt")
            if len(ids) + sampling.max_tokens > self.engine.max_positions:
                raise APIError(400, f"{where} has {len(ids)} tokens; with max_tokens {sampling.max_tokens} it "
                                    f"exceeds the model's {self.engine.max_positions} positions", "max_tokens",
                               "context_length_exceeded")
            jobs.append(DecodeJob(ids, method, None, sampling.max_tokens, sampling.temperature,
                                  sampling.top_k, sampling.stop, sampling.logprobs, sampling.seed))
        if method.steered:
            vintage = await self._vintage(cutoff)
            for job in jobs:
                job.vintage = vintage
        return jobs

    # -- routes ------------------------------------------------------------------------------------------

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        created = int(Path(self.engine.registry.root / "manifest.json").stat().st_mtime)
        data = [{"id": self.frontier_id, "object": "model", "created": created, "owned_by": "vintage",
                 "role": "frontier", "cutoffs": self.engine.cutoffs()}]
        data += [{"id": vintage_model_id(c), "object": "model", "created": created, "owned_by": "vintage",
                  "role": "vintage", "cutoff": c} for c in self.engine.cutoffs()]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/vintage/stats")
    async def stats(self, request: Request) -> JSONResponse:
        """Not OpenAI's: decoding steps this replica ran and the rows they advanced (for bench/serve.py)."""
        self._authorize(request)
        return JSONResponse({"steps": self.loop.steps, "rows": self.loop.rows})

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        req = protocol.parse_completion(await self._body(request), self.config.default_max_tokens,
                                        self.config.default_method)
        s = req.sampling
        cutoff = self._cutoff(s)
        jobs = await self._jobs(s, req.prompts, cutoff)
        rid, model = protocol.new_id("cmpl"), protocol.served_model(self.frontier_id, cutoff if s.method.steered
                                                                     else None)
        if s.stream:
            return StreamingResponse(self._stream_completion(rid, model, jobs[0], s), media_type="text/event-stream")
        results = await asyncio.gather(*(self.loop.collect(job) for job in jobs))
        choices = [protocol.completion_choice(i, events, s.logprobs is not None) for i, events in enumerate(results)]
        body = protocol.completion_body(rid, model, choices, sum(len(j.prompt_ids) for j in jobs),
                                        sum(len(protocol.answered(e)) for e in results),
                                        cutoff if s.method.steered else None,
                                        s.method)
        return JSONResponse(body)

    async def _stream_completion(self, rid, model, job, s):
        offset, count = 0, 0
        try:
            async for ready in self.loop.events(job):
                message = []
                for event in ready:
                    count += not event.eos
                    message.append(protocol.sse(protocol.completion_chunk(rid, model, event, s.logprobs is not None,
                                                                          offset)))
                    offset += len(event.token)
                yield "".join(message)
        except Exception as err:  # noqa: BLE001 - the status is sent already; report in-band as OpenAI does
            yield protocol.sse(APIError(500, f"generation failed: {err}", None, "server_error", "server_error").body())
        if s.include_usage:
            chunk = protocol.completion_chunk(rid, model, None, False)
            chunk["usage"] = protocol.usage(len(job.prompt_ids), count)
            yield protocol.sse(chunk)
        yield protocol.sse("[DONE]")

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        req = protocol.parse_chat(await self._body(request), self.config.default_max_tokens,
                                  self.config.default_method)
        s = req.sampling
        cutoff = self._cutoff(s)
        (job,) = await self._jobs(s, [self.engine.chat_prompt(req.messages)], cutoff)
        rid, model = protocol.new_id("chatcmpl"), protocol.served_model(self.frontier_id, cutoff if s.method.steered
                                                                         else None)
        if s.stream:
            return StreamingResponse(self._stream_chat(rid, model, job, s), media_type="text/event-stream")
        events = await self.loop.collect(job)
        return JSONResponse(protocol.chat_body(rid, model, events, s.logprobs is not None, len(job.prompt_ids),
                                               cutoff if s.method.steered else None, s.method))

    async def _stream_chat(self, rid, model, job, s):
        count, first = 0, True
        try:
            async for ready in self.loop.events(job):
                message = []
                for event in ready:
                    message.append(protocol.sse(protocol.chat_chunk(rid, model, event, s.logprobs is not None,
                                                                    first=first)))
                    first, count = False, count + (not event.eos)
                yield "".join(message)
        except Exception as err:  # noqa: BLE001 - as in _stream_completion
            yield protocol.sse(APIError(500, f"generation failed: {err}", None, "server_error", "server_error").body())
        if s.include_usage:
            chunk = protocol.chat_chunk(rid, model, None, False)
            chunk["usage"] = protocol.usage(len(job.prompt_ids), count)
            yield protocol.sse(chunk)
        yield protocol.sse("[DONE]")


def build_app(registry: str | Path, frontier: str | Path | None, config: ServeConfig, api_key: str):
    """The bound application for serve.run (the replicas get the key's digest, never the key)."""
    deployment = VintageServer.options(
        num_replicas=config.num_replicas, max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.cpus_per_replica},
        logging_config={"enable_access_log": config.access_log})
    return deployment.bind(str(Path(registry).resolve()), str(Path(frontier).resolve()) if frontier else None,
                           config, key_digest(api_key))
