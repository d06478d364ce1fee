"""`vintage ask` and `vintage serve`: method specs and request rules without a server, then a real server
(`vintage serve` in its own process group on 127.0.0.1) spoken to by the official `openai` client. Answers
must equal PointInTimeLM.generate token for token. The registry is hand-made from tiny random models."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from pipelines.cli import main as vintage_main
from serving.config import ServeConfig
from serving.engine import DecodeJob, Engine
from serving.methods import DEFAULT_METHOD, Method, MethodError, parse_method
from serving.protocol import APIError, parse_as_of, parse_chat, parse_completion
from tests.lm_fixtures import tiny_model, word_tokenizer
from tests.net import free_port
from vintage.decoding import PointInTimeLM
from vintage.modes import Steering
from vintage.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
CUTOFFS = ["2019-03-31", "2019-06-30", "2019-09-30"]
KEY = "test-key-not-secret"
PROMPT = "Acme 2019q1 results :"
METHODS = ["linear alpha=0.5", "frontier", "rank k=2 plausibility=0.1", "switch margin=0.1 plausibility=0.3"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_registry")
    tok = word_tokenizer()
    tok.save_pretrained(root / "tokenizer")
    for i, cutoff in enumerate(CUTOFFS):
        tiny_model(tok, seed=i).save_pretrained(root / "vintages" / cutoff)
        tok.save_pretrained(root / "vintages" / cutoff)
    tiny_model(tok, seed=10, n_embd=48).save_pretrained(root / "frontier")
    tok.save_pretrained(root / "frontier")
    (root / "manifest.json").write_text(json.dumps({"cutoffs": CUTOFFS, "full": CUTOFFS[-1],  # one vintage calibrated
                                                    "calibration": {"2019-06-30": {"alpha": 1.5}}}))
    return root


def reference(registry, as_of, method, prompt=PROMPT, max_new_tokens=10, dtype="float32", **sampling):
    """What PointInTimeLM answers for this as_of and method: the text, its tokens and each one's log-prob."""
    vintages = Registry(registry)
    resolved = parse_method(method).at_vintage(vintages, vintages.vintage_for(as_of)[0])
    lm = PointInTimeLM.from_registry(registry, as_of, dtype=dtype, **resolved.lm_kwargs())
    texts, ids, scores = lm.generate([prompt], max_new_tokens=max_new_tokens, return_scores=True, **sampling)
    eos = lm.tokenizer.eos_token_id
    tokens = [t for t in ids[0].tolist()]
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    logprobs = [float(scores[0, i, t]) for i, t in enumerate(tokens)]
    return texts[0], [lm.tokenizer.decode([t]) for t in tokens], logprobs


# -- without a server ----------------------------------------------------------------------------------------

def test_method_specs_parse_and_round_trip():
    assert parse_method(None) == parse_method(DEFAULT_METHOD)
    assert parse_method("linear alpha=0.5") == Method("linear", alpha=0.5)
    assert parse_method({"mode": "rank", "k": 2, "plausibility": 0.1}) == Method("rank", k=2, plausibility=0.1)
    for spec in ["frontier", "linear alpha=1.5 plausibility=0.3", "rank k=3 margin=0.2", "switch margin=0.1"]:
        assert parse_method(parse_method(spec).spec) == parse_method(spec)
    assert parse_method("rank k=2").lm_kwargs() == {"steering": Steering("rank", k=2, margin=0.0)}
    assert not parse_method("linear alpha=0").steered and not parse_method("frontier").steered
    with pytest.raises(MethodError, match="unknown method 'beam'; expected one of frontier, linear, rank, switch"):
        parse_method("beam")
    with pytest.raises(MethodError, match=r"method linear: unknown setting\(s\) \['k'\]"):
        parse_method("linear k=2")
    with pytest.raises(MethodError, match="alpha 9.0 outside"):
        parse_method("linear alpha=9")
    with pytest.raises(MethodError, match="k='x' is not an integer"):
        parse_method("rank k=x")


def test_request_rules_name_the_field():
    body = {"model": "frontier", "prompt": "a", "as_of": "2019-05-01"}
    assert parse_completion(body).sampling.as_of.isoformat() == "2019-05-01T00:00:00+00:00"
    assert parse_as_of("2019-05-01T16:00:00Z").hour == 16
    cases = [({k: v for k, v in body.items() if k != "as_of"}, "as_of", "as_of is required"),
             ({**body, "as_of": "05/01/2019"}, "as_of", "expected a date YYYY-MM-DD"),
             ({**body, "method": "beam"}, "method", "unknown method"),
             ({**body, "temperature": 3}, "temperature", "between 0 and 2"),
             ({**body, "top_p": 0.5}, "top_p", "not supported"),
             ({**body, "echo": True}, "echo", "unsupported parameter"),
             ({**body, "stop": [""]}, "stop", "stop must be"),
             ({**body, "prompt": [1, 2]}, "prompt", "token-id prompts")]
    for request, field, message in cases:
        with pytest.raises(APIError, match=message) as err:
            parse_completion(request)
        assert err.value.status == 400 and err.value.param == field
    with pytest.raises(APIError, match="top_logprobs needs logprobs") as err:
        parse_chat({"model": "m", "as_of": "2019-05-01", "messages": [{"role": "user", "content": "x"}],
                    "top_logprobs": 2})
    assert parse_chat({"model": "m", "as_of": "2019-05-01", "messages": [{"role": "user", "content": "x"}],
                       "logprobs": True, "top_logprobs": 2}).sampling.logprobs == 2


def test_the_end_of_text_token_is_no_part_of_the_answer():
    from serving.engine import TokenEvent
    from serving.protocol import chat_body, completion_choice

    events = [TokenEvent(5, "beat", "beat", -0.1), TokenEvent(2, "[EOS]", "", -0.2, None, "stop", eos=True)]
    choice = completion_choice(0, events, logprobs=True)
    assert choice["text"] == "beat" and choice["logprobs"]["tokens"] == ["beat"] and choice["finish_reason"] == "stop"
    body = chat_body("id", "m", events, True, 3, "2019-06-30", parse_method(None))
    assert body["usage"]["completion_tokens"] == 1 and len(body["choices"][0]["logprobs"]["content"]) == 1


def test_a_running_batch_that_rows_join_and_leave_equals_pointintimelm(registry):
    """Rows of every method and vintage join a running batch at different steps with different lengths and
    leave when done (caches padded, joined and sliced): each still answers as PointInTimeLM does alone."""
    engine = Engine(registry)
    vintages = {c: engine.load_vintage(c) for c in CUTOFFS}  # shared, as the server's LRU shares them
    cases = [(m, a, 4 + (i % 7)) for i, (m, a) in
             enumerate((m, a) for m in METHODS for a in ("2019-04-10", "2019-07-02", "2019-10-01"))]
    prompts = [PROMPT, "Brio 2019q2 preview points to a", "the market"]
    jobs = []
    for i, (method, as_of, n) in enumerate(cases):
        m = parse_method(method)
        vintage = vintages[engine.vintage_for(parse_as_of(as_of))] if m.steered else None
        jobs.append(DecodeJob(engine.encode(prompts[i % 3]), m, vintage, n))
    batch, later, texts, logprobs, widest, most_vintages = engine.start(jobs[:3]), jobs[3:], {}, {}, 0, 0
    while later or not batch.done:
        if later and (batch.steps % 2 == 1 or batch.done):
            batch.admit(later[:2])
            later = later[2:]
        for job, event in batch.step():
            texts[id(job)] = texts.get(id(job), "") + event.text
            if not event.eos:
                logprobs.setdefault(id(job), []).append(event.logprob)
        widest, most_vintages = max(widest, len(batch.rows)), max(most_vintages, batch.vintages)
    assert widest >= 6 and most_vintages == 3
    for i, ((method, as_of, n), job) in enumerate(zip(cases, jobs)):
        expected, _, expected_logprobs = reference(registry, as_of, method, prompt=prompts[i % 3], max_new_tokens=n)
        assert texts[id(job)] == expected, (method, as_of, n)
        # the texts of these random models hardly depend on the vintage or the method; the log-probs do: a row
        # steered to another row's vintage, or not steered, fails here. At the full vintage (2019-10-01) the pair is
        # one model, every divergence is 0 and rank's ban is decided by float noise of the batch (1e-7): left out
        if engine.vintage_for(parse_as_of(as_of)) != CUTOFFS[-1] or not parse_method(method).steered:
            assert logprobs[id(job)] == pytest.approx(expected_logprobs, abs=1e-4), (method, as_of, n)


def test_an_engine_in_bfloat16_answers_as_pointintimelm_in_bfloat16(registry):
    """ServeConfig.dtype reaches every model the engine loads; its log-probs are PointInTimeLM's in the same dtype
    (and not float32's exactly: the dtype is really used)."""
    from vintage.precision import AutocastLM

    engine = Engine(registry, dtype="bfloat16")
    assert isinstance(engine.frontier, AutocastLM) and isinstance(engine.full, AutocastLM)
    method, as_of = parse_method("linear alpha=0.5"), "2019-07-02"
    job = DecodeJob(engine.encode(PROMPT), method, engine.load_vintage(engine.vintage_for(parse_as_of(as_of))), 6)
    batch, logprobs = engine.start([job]), []
    while not batch.done:
        logprobs += [event.logprob for _, event in batch.step() if not event.eos]
    _, _, expected = reference(registry, as_of, "linear alpha=0.5", max_new_tokens=6, dtype="bfloat16")
    assert logprobs == pytest.approx(expected, abs=1e-4)
    assert logprobs != pytest.approx(reference(registry, as_of, "linear alpha=0.5", max_new_tokens=6)[2], abs=1e-6)
    with pytest.raises(ValueError, match="dtype must be one of"):
        ServeConfig(dtype="float16")


def test_a_cancelled_row_leaves_the_batch_and_the_others_go_on(registry):
    engine = Engine(registry)
    method = parse_method("linear alpha=0.5")
    vintage = engine.load_vintage("2019-06-30")
    gone, stays = (DecodeJob(engine.encode(p), method, vintage, 10) for p in ("the market", PROMPT))
    batch, text = engine.start([gone, stays]), ""
    for step in range(12):
        if step == 2:
            gone.cancelled = True  # what the server does when a client disconnects
        text += "".join(e.text for job, e in batch.step() if job is stays)
        if step >= 2:
            assert [row.job for row in batch.rows] in ([stays], [])
        if batch.done:
            break
    assert text == reference(registry, "2019-07-02", "linear alpha=0.5")[0]


def test_ask_prints_the_continuation_and_choices(registry, capsys):
    assert vintage_main(["ask", "--registry", str(registry), "--as-of", "2019-07-02", "--max-new-tokens", "10",
                         PROMPT]) == 0
    assert capsys.readouterr().out.strip() == reference(registry, "2019-07-02", DEFAULT_METHOD)[0].strip()
    assert vintage_main(["ask", "--registry", str(registry), "--as-of", "2019-07-02", "--compare",
                         "--choices", " beat", " miss", PROMPT]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "point-in-time logprob" in out[0] and "frontier logprob" in out[0] and len(out) == 3
    lm = PointInTimeLM.from_registry(registry, "2019-07-02", **parse_method(DEFAULT_METHOD).lm_kwargs())
    scored = lm.score([PROMPT], [[" beat", " miss"]])[0]
    assert f"{scored.choice_logprobs[0]:.4f}" in out[1] and f"{scored.probabilities()[1]:.3f}" in out[2]


def test_ask_errors_list_cutoffs_and_name_the_format(registry, capsys):
    assert vintage_main(["ask", "--registry", str(registry), "--as-of", "2019-01-01", PROMPT]) == 2
    assert "cutoffs: 2019-03-31, 2019-06-30, 2019-09-30" in capsys.readouterr().err
    assert vintage_main(["ask", "--registry", str(registry), "--as-of", "July 2019", PROMPT]) == 2
    assert "expected a date YYYY-MM-DD or an ISO 8601 timestamp" in capsys.readouterr().err


# -- a real server -------------------------------------------------------------------------------------------

def get(url, key=KEY):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    """`vintage serve` on a free 127.0.0.1 port in its own process group; ended by that group."""
    port, log = free_port(), tmp_path_factory.mktemp("serve_log") / "server.log"
    env = {**os.environ, "VINTAGE_API_KEY": KEY, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--registry", str(registry),
                                    "--port", str(port), "--num-cpus", "2"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vintage serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if get(f"{url}/v1/models")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vintage serve did not answer in time:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        pgid = os.getpgid(process.pid) if process.poll() is None else process.pid
        try:
            os.killpg(pgid, signal.SIGTERM)  # the CLI shuts Serve and its Ray down on SIGTERM
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_lists_the_frontier_and_every_vintage(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["frontier"] + [f"vintage-{c}" for c in CUTOFFS]


@pytest.mark.parametrize("as_of,method", [("2019-04-10", "linear alpha=0.5"), ("2019-07-02", "frontier"),
                                          ("2019-10-01T12:00:00Z", "rank k=2 plausibility=0.1"),
                                          ("2019-07-02", "switch margin=0.1 plausibility=0.3"),
                                          ("2019-07-02", "blend margin=0.1 width=1 plausibility=0.3"),
                                          ("2019-07-02", "linear alpha=calibrated")])
def test_greedy_completion_equals_pointintimelm_token_for_token(client, registry, as_of, method):
    text, tokens, logprobs = reference(registry, as_of, method)
    response = client.completions.create(model="frontier", prompt=PROMPT, max_tokens=10, temperature=0, logprobs=1,
                                         extra_body={"as_of": as_of, "method": method})
    choice = response.choices[0]
    assert choice.text == text and choice.logprobs.tokens == tokens
    # with these random models the greedy text is the same for every (as_of, method); the log-probs are not, so a
    # request answered by the wrong vintage or with its steering dropped fails here
    assert choice.logprobs.token_logprobs == pytest.approx(logprobs, abs=1e-4)
    assert response.usage.completion_tokens == len(tokens)
    vintages = {"2019-04-10": "2019-03-31", "2019-07-02": "2019-06-30", "2019-10-01": "2019-09-30"}
    assert response.vintage_cutoff == (None if method == "frontier" else vintages[as_of[:10]])
    stream = client.completions.create(model="frontier", prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
                                       extra_body={"as_of": as_of, "method": method})
    assert "".join(chunk.choices[0].text for chunk in stream) == text


def test_default_method_sampling_seed_and_stop(client, registry):
    as_of = "2019-07-02"
    response = client.completions.create(model="frontier", prompt=PROMPT, max_tokens=10, temperature=0,
                                         extra_body={"as_of": as_of})
    assert response.choices[0].text == reference(registry, as_of, DEFAULT_METHOD)[0]
    assert response.method == parse_method(DEFAULT_METHOD).spec
    sampled = client.completions.create(model="frontier", prompt=PROMPT, max_tokens=10, temperature=0.8, seed=3,
                                        extra_body={"as_of": as_of, "top_k": 5})
    assert sampled.choices[0].text == reference(registry, as_of, DEFAULT_METHOD, greedy=False, temperature=0.8,
                                                top_k=5, seed=3)[0]
    full = reference(registry, as_of, DEFAULT_METHOD)[0]
    word = full.split()[2]
    stopped = client.completions.create(model="frontier", prompt=PROMPT, max_tokens=10, temperature=0, stop=[word],
                                        extra_body={"as_of": as_of})
    assert stopped.choices[0].text == full[: full.index(word)] and stopped.choices[0].finish_reason == "stop"


def test_chat_completion_streams_the_same_text(client, registry):
    messages = [{"role": "user", "content": PROMPT}]
    text = reference(registry, "2019-07-02", "linear alpha=0.5", prompt=PROMPT)[0]  # no chat template: the content
    response = client.chat.completions.create(model="frontier", messages=messages, max_tokens=10, temperature=0,
                                              extra_body={"as_of": "2019-07-02", "method": "linear alpha=0.5"})
    assert response.choices[0].message.content == text
    stream = client.chat.completions.create(model="frontier", messages=messages, max_tokens=10, temperature=0,
                                            stream=True, extra_body={"as_of": "2019-07-02"})
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == text


def test_concurrent_requests_over_several_vintages_answer_as_alone(client, registry):
    cases = [(a, m) for a in ("2019-04-10", "2019-07-02", "2019-10-01") for m in ("linear alpha=1", "frontier")]

    def ask(case):
        return client.completions.create(model="frontier", prompt=PROMPT, max_tokens=10, temperature=0,
                                         extra_body={"as_of": case[0], "method": case[1]}).choices[0].text

    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(ask, cases))
    assert answers == [reference(registry, a, m)[0] for a, m in cases]


@pytest.mark.parametrize("extra,prompt,param,message", [
    ({}, PROMPT, "as_of", "as_of is required"),
    ({"as_of": "30/06/2019"}, PROMPT, "as_of", "expected a date YYYY-MM-DD or an ISO 8601 timestamp"),
    ({"as_of": "2019-03-31"}, PROMPT, "as_of", "cutoffs: 2019-03-31, 2019-06-30, 2019-09-30"),
    ({"as_of": "2019-07-02", "method": "beam k=4"}, PROMPT, "method", "unknown method 'beam'"),
    ({"as_of": "2019-04-10", "method": "linear alpha=calibrated"}, PROMPT, "method", "2019-03-31 has no calibrated"),
    ({"as_of": "2019-07-02"}, "   ", "prompt", "prompt is empty after tokenisation"),
    ({"as_of": "2019-07-02", "max_tokens": 100}, PROMPT, "max_tokens", "exceeds the model's 64 positions"),
])
def test_bad_requests_are_400_naming_the_field(client, extra, prompt, param, message):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="frontier", prompt=prompt, max_tokens=extra.pop("max_tokens", 5),
                                  extra_body=extra)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and message in err.value.body["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-5", prompt=PROMPT, extra_body={"as_of": "2019-07-02"})


def test_missing_or_wrong_key_is_refused(server):
    with pytest.raises(urllib.error.HTTPError) as err:
        get(f"{server}/v1/models", key=None)
    assert err.value.code == 401 and json.loads(err.value.read())["error"]["code"] == "missing_api_key"
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.completions.create(model="frontier", prompt=PROMPT, extra_body={"as_of": "2019-07-02"})
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"


def test_serve_refuses_to_start_without_a_key(registry, capsys, monkeypatch):
    monkeypatch.delenv("VINTAGE_API_KEY", raising=False)
    assert vintage_main(["serve", "--registry", str(registry)]) == 2
    assert "an API key is required: set VINTAGE_API_KEY" in capsys.readouterr().err


def test_defaults_bind_localhost_and_only_safetensors_load(registry, tmp_path):
    import shutil

    import torch

    from pipelines.cli import build_parser

    assert build_parser().parse_args(["serve", "--registry", "r"]).host == "127.0.0.1"
    copy = tmp_path / "registry"
    shutil.copytree(registry, copy)
    weights = copy / "frontier" / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), copy / "frontier" / "pytorch_model.bin")  # a pickle: must never be read
    weights.unlink()
    with pytest.raises(OSError):
        Engine(copy)


def test_the_api_key_comes_from_the_config_file_or_the_environment(tmp_path, monkeypatch):
    from corpora.config import ConfigError
    from serving.config import ServeConfig, key_digest, load_config, read_api_key

    monkeypatch.setenv("VINTAGE_API_KEY", "from-env")
    assert read_api_key(ServeConfig()) == "from-env"
    (tmp_path / "key.txt").write_text("from-file\n")
    (tmp_path / "serve.yaml").write_text("api_key_file: key.txt\nmax_vintages: 2\n")
    config = load_config(tmp_path / "serve.yaml")
    assert read_api_key(config, tmp_path / "serve.yaml") == "from-file" and config.max_vintages == 2
    assert key_digest("from-file") != "from-file"  # replicas hold only the digest
    (tmp_path / "key.txt").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_api_key(config, tmp_path / "serve.yaml")
    (tmp_path / "bad.yaml").write_text("max_batch_size: 32\nmax_ongoing_requests: 8\n")
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        load_config(tmp_path / "bad.yaml")
