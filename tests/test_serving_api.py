"""``nima serve``'s OpenAI API, driven by the real ``openai`` client and raw HTTP: completions and
chat, streamed and not, usage, seeds, stop strings, n, concurrent clients, bad requests, API keys,
and a client that goes away mid-stream."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from serving_helpers import CONTEXT, start, write_checkpoint

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "served")


@pytest.fixture(scope="module")
def server(checkpoint: Path):
    with start(checkpoint, max_batch=4) as running:
        yield running


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
        yield c


def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def test_models_and_health(client, http):
    models = client.models.list().data
    assert [m.id for m in models] == ["served/step_150"] and models[0].owned_by == "nima"
    assert client.models.retrieve("served/step_150").id == "served/step_150"
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["running"] == 0


def test_completion_with_the_openai_client(client):
    out = client.completions.create(model=model_id(client), prompt=PROMPT, max_tokens=12, temperature=0)
    assert out.object == "text_completion" and len(out.choices) == 1
    choice = out.choices[0]
    assert choice.finish_reason in ("length", "stop") and choice.text
    assert out.usage.prompt_tokens == len(PROMPT.encode()) and 1 <= out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_completion_equals_the_whole_one(client):
    kwargs = {"model": model_id(client), "prompt": PROMPT, "max_tokens": 20, "temperature": 0.9, "seed": 3}
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_with_the_openai_client(client):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello. ¿Qué tal? 日本"},
    ]
    kwargs = {"model": model_id(client), "messages": messages, "max_tokens": 15, "seed": 7}
    whole = client.chat.completions.create(**kwargs)
    message = whole.choices[0].message
    assert whole.object == "chat.completion" and message.role == "assistant"
    assert not message.content.startswith(" ")
    stream = list(client.chat.completions.create(stream=True, **kwargs))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == message.content
    assert stream[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat_default_max_tokens_fills_the_context(client):
    out = client.chat.completions.create(
        model=model_id(client), messages=[{"role": "user", "content": "hi"}], temperature=0
    )
    assert out.usage.prompt_tokens + out.usage.completion_tokens <= CONTEXT


def test_the_same_seed_gives_the_same_text_and_n_gives_seed_plus_i(client):
    base = {"model": model_id(client), "prompt": PROMPT, "max_tokens": 10, "temperature": 1.0}
    three = client.completions.create(n=3, seed=100, **base)
    assert [c.index for c in three.choices] == [0, 1, 2]
    for i, choice in enumerate(three.choices):
        assert choice.text == client.completions.create(seed=100 + i, **base).choices[0].text
    assert len({c.text for c in three.choices}) > 1


def test_several_prompts_in_one_request(client):
    out = client.completions.create(
        model=model_id(client), prompt=["a", "bb"], max_tokens=4, temperature=0, n=2
    )
    assert len(out.choices) == 4 and out.usage.prompt_tokens == 3
    assert out.choices[0].text == out.choices[1].text  # greedy: n copies agree


def test_stop_strings_cut_the_answer_streamed_or_not(client):
    base = {"model": model_id(client), "prompt": PROMPT, "max_tokens": 40, "temperature": 0}
    full = client.completions.create(**base).choices[0].text
    stop = full[6:8]
    cut = full[: full.index(stop)]
    assert client.completions.create(stop=[stop, "\x00never"], **base).choices[0].text == cut
    streamed = client.completions.create(stop=stop, stream=True, **base)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_echo_returns_the_prompt_first(client):
    out = client.completions.create(model=model_id(client), prompt=PROMPT, max_tokens=3, echo=True)
    assert out.choices[0].text.startswith(PROMPT)


def test_two_clients_at_once_get_their_own_answers(client, server):
    requests = [
        {"prompt": PROMPT, "seed": 1, "max_tokens": 60, "temperature": 1.0},
        {"prompt": "Zebras and", "seed": 2, "max_tokens": 50, "temperature": 0.7, "top_p": 0.9},
    ]
    expected = [client.completions.create(model=model_id(client), **r).choices[0].text for r in requests]
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        own = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        stream = own.completions.create(model="served/step_150", stream=True, **requests[i])
        got[i] = "".join(c.choices[0].text for c in stream)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    steps = server.served.engine.steps
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == {0: expected[0], 1: expected[1]}
    # Batched together: fewer steps than the two answers' tokens one after another.
    assert server.served.engine.steps - steps < 60 + 50


def test_a_client_that_goes_away_mid_stream_frees_its_row(server, http):
    body = {"prompt": PROMPT, "max_tokens": CONTEXT - len(PROMPT), "stream": True, "temperature": 1.0}
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
        with c.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert http.get("/health").json()["running"] == 1
    deadline = time.monotonic() + 10
    while http.get("/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.get("/health").json()["running"] == 0


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


CMPL, CHAT = "/v1/completions", "/v1/chat/completions"
BAD_REQUESTS = {
    "invalid JSON": (CMPL, b'{"prompt": "x",', 400, None),
    "not an object": (CMPL, b"[1, 2]", 400, None),
    "unknown field": (CMPL, {"prompt": "x", "temprature": 1}, 400, "temprature"),
    "missing prompt": (CMPL, {"max_tokens": 3}, 400, "prompt"),
    "unknown model": (CMPL, {"prompt": "x", "model": "gpt-5"}, 404, "model"),
    "max_tokens over the context": (CMPL, {"prompt": "x", "max_tokens": CONTEXT}, 400, "max_tokens"),
    "prompt over the context": (CMPL, {"prompt": "x" * (CONTEXT + 1)}, 400, "prompt"),
    "negative temperature": (CMPL, {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    "temperature as text": (CMPL, {"prompt": "x", "temperature": "0.5"}, 400, "temperature"),
    "n over the limit": (CMPL, {"prompt": "x", "n": 17}, 400, "n"),
    "n of zero": (CMPL, {"prompt": "x", "n": 0}, 400, "n"),
    "empty stop": (CMPL, {"prompt": "x", "stop": [""]}, 400, "stop"),
    "five stops": (CMPL, {"prompt": "x", "stop": list("abcde")}, 400, "stop"),
    "token id out of range": (CMPL, {"prompt": [1, 300]}, 400, "prompt"),
    "logprobs": (CMPL, {"prompt": "x", "logprobs": 2}, 400, "logprobs"),
    "presence penalty": (CMPL, {"prompt": "x", "presence_penalty": 1.0}, 400, "presence_penalty"),
    "bad role": (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    "no messages": (CHAT, {"messages": []}, 400, "messages"),
    "chat over the context": (
        CHAT,
        {"messages": [{"role": "user", "content": "y" * CONTEXT}]},
        400,
        "messages",
    ),
    "too large": (CMPL, b"{" + b" " * (1 << 20) + b"}", 413, None),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_the_openai_error_shape_and_the_server_stays_up(http, name):
    path, body, status, param = BAD_REQUESTS[name]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["param"] == param and error["message"] and error["type"]
    assert "\n" not in error["message"]
    assert http.get("/health").json()["status"] == "ok"


def test_the_openai_client_raises_on_bad_requests(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=model_id(client), prompt="x", temperature=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="x")


def test_unknown_routes_and_methods_are_openai_errors(http):
    assert error_of(http.get("/v1/nothing"))["code"] == "not_found"
    assert http.get("/v1/completions").status_code == 405


def test_api_key(checkpoint):
    with start(checkpoint, api_key="s3cret") as server:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http:
            assert http.get("/health").status_code == 200  # for load balancers: no key
            assert http.get("/").status_code == 200
            missing = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
            wrong = http.get("/v1/models", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model="served/step_150", prompt="x", max_tokens=2).choices
        bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
