"""The HTTP API end to end: one scheduler and one gateway actor on the session's Ray cluster, a
real CPU LLM, a real tool pool and a real search index, driven over HTTP by httpx and by the
official `openai` client. A second gateway in front of the same scheduler has small limits, so
the limit checks need no large bodies (one real 20 MB body goes to the first)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")

from support.serving import serving, wait_warm  # noqa: E402

from hermesflow.api.deployment import start_gateway, stop_gateway  # noqa: E402
from hermesflow.api.models.control import SchedulerStats  # noqa: E402
from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.backends.calls import AttentionMethod, LLMCall  # noqa: E402
from hermesflow.config import ApiLimits  # noqa: E402
from hermesflow.journal import RunJournal  # noqa: E402
from hermesflow.schedulers.runtime_config import NAMESPACE, RuntimeConfig  # noqa: E402
from hermesflow.store import Store  # noqa: E402

try:
    from hermesflow.apps.suite import REFERENCE_APPS
except ImportError:  # the suite is optional for these tests
    REFERENCE_APPS = {}

TOKEN = f"test-token-{uuid.uuid4().hex}"
PROGRAM = "map_reduce"
"""The reference class submitted as a program run: own short text, one chunk (two LLM calls)."""
MAX_TOKENS = 8
MAX_INPUT_TOKENS = 256
"""The LLM's longest prompt here: small, so a prompt over it is cheap to build, and cut, here."""
PASSAGES = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital of France."},
    {"id": "rome", "title": "Rome", "text": "Rome is the capital of Italy."},
]
"""The search backend's corpus: two passages embed in no time."""
CALCULATE = {"kind": "tool", "tool": "calculator", "args": {"expression": "2 + 3 * 4"}}
LIMITS = ApiLimits(
    max_body_bytes=4096, max_labels=2, max_label_key_chars=16, max_label_value_chars=32
)
"""The second gateway's limits."""
INTERNALS = ("Traceback", 'File "', "pid=", "actor_id", "RayTaskError", "ray::")
"""What a remote traceback shows and no answer may: source paths, the pid, the actor id."""


def _backends(corpus: Path) -> list[BackendSpec]:
    """Tools and the LLM (warm at start), a search index (cold: its signature is learned at its
    first warm-up) and a tool pool that cannot start (its tool's module does not exist)."""
    return [
        BackendSpec(
            name="tools", type="python-tools", options={"workers": 2}, expected_warmup_s=2.0
        ),
        BackendSpec(
            name="llm",
            type="transformers",
            options={"max_batch": 4, "max_input_tokens": MAX_INPUT_TOKENS},
            num_cpus=1,
            expected_warmup_s=5.0,
        ),
        BackendSpec(
            name="search", type="search", options={"corpus": str(corpus)}, expected_warmup_s=5.0
        ),
        BackendSpec(
            name="broken",
            type="python-tools",
            options={"tools": {"missing": "no_such_module:run"}, "workers": 1},
            expected_warmup_s=1.0,
        ),
    ]


@pytest.fixture(scope="module")
def served(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One scheduler (tools + the CPU LLM, both warm; search and the broken pool cold) and one
    gateway with a token, under names no other test module uses."""
    folder = tmp_path_factory.mktemp("gateway")
    db_url = f"sqlite:///{folder / 'hermes.db'}"
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    programs = {}
    if PROGRAM in REFERENCE_APPS:
        cls = REFERENCE_APPS[PROGRAM]
        programs[PROGRAM] = f"{cls.__module__}:{cls.__qualname__}"
    config = RuntimeConfig(
        db_url=db_url, backends=_backends(corpus), programs=programs, warm_at_start=("llm", "tools")
    )
    with serving(config, TOKEN, "gw") as served:
        wait_warm(served.url, TOKEN, ("llm", "tools"), timeout_s=300)
        yield Served(served.url, db_url, served.scheduler_name, served.gateway_name)


@pytest.fixture(scope="module")
def limited(served: Served) -> Iterator[str]:
    """A second gateway in front of the same scheduler, with `LIMITS`; its base URL."""
    name = f"gw-limited-{uuid.uuid4().hex[:8]}"
    url = start_gateway(
        port=0, token=TOKEN, scheduler_name=served.scheduler_name, name=name, limits=LIMITS
    )
    try:
        yield url
    finally:
        stop_gateway(name)


@dataclass
class Served:
    url: str
    db_url: str
    scheduler_name: str
    gateway_name: str


@pytest.fixture
def api(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    ) as client:
        yield client


@pytest.fixture
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


def _sse_documents(response: httpx.Response) -> list[Any]:
    """The `data:` documents of a Server-Sent Events response (`[DONE]` kept as a string)."""
    documents = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            text = line.removeprefix("data: ")
            documents.append(text if text == "[DONE]" else json.loads(text))
    return documents


def _assert_no_internals(text: str) -> None:
    leaked = [marker for marker in INTERNALS if marker in text]
    assert not leaked, f"the answer shows {leaked}: {text[:2000]}"


def _app_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def _events(api: httpx.Client, app_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/apps/{app_id}/events", params={"follow": "false"})
    assert response.status_code == 200, response.text
    return response.json()


# -- health, auth, schema ------------------------------------------------------------------------


def test_healthz_needs_no_token(served: Served) -> None:
    response = httpx.get(f"{served.url}/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/v1/backends", "/v1/models", "/openapi.json", "/docs"])
def test_routes_need_the_bearer_token(served: Served, path: str) -> None:
    missing = httpx.get(f"{served.url}{path}")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{served.url}{path}", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    right = httpx.get(f"{served.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200


def test_a_wrong_token_is_an_authentication_error_for_openai_clients(served: Served) -> None:
    bad = openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        bad.models.list()
    assert raised.value.code == "invalid_api_key"
    assert raised.value.body["type"] == "authentication_error"


def test_openapi_schema_lists_every_route_with_tags(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        "/healthz": "get",
        "/v1/apps": "post",
        "/v1/apps/{app_id}": "get",
        "/v1/apps/{app_id}/events": "get",
        "/v1/apps/{app_id}/steps": "post",
        "/v1/apps/{app_id}/finish": "post",
        "/v1/backends": "get",
        "/v1/stats": "get",
        "/v1/classes/{name}/graph": "get",
        "/v1/models": "get",
        "/v1/chat/completions": "post",
        "/v1/completions": "post",
    }
    for path, method in expected.items():
        operation = paths[path][method]
        assert operation["tags"] and operation["summary"], path
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert {"AppSubmission", "AppView", "StepSubmission", "ChatCompletionRequest"} <= set(
        schema["components"]["schemas"]
    )


# -- OpenAI-compatible API -----------------------------------------------------------------------


def test_models_are_the_llm_backends(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["llm"]


def test_models_retrieve_reads_one_llm_backend(client: openai.OpenAI) -> None:
    model = client.models.retrieve("llm")
    assert model.id == "llm" and model.object == "model"
    for name in ("tools", "gpt-nope"):
        with pytest.raises(openai.NotFoundError) as raised:
            client.models.retrieve(name)
        assert raised.value.code == "model_not_found" and name in raised.value.message


def test_chat_completion_is_a_one_step_application(
    client: openai.OpenAI, api: httpx.Client
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="llm", messages=[{"role": "user", "content": "Say hello."}], max_tokens=MAX_TOKENS
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= MAX_TOKENS
    assert (
        completion.usage.total_tokens
        == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    app_id = raw.headers["x-hermesflow-app"]
    view = api.get(f"/v1/apps/{app_id}").json()
    assert view["app_class"] == "openai" and view["phase"] == "finished"


def test_chat_completion_streams_deltas_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="llm",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."},
        ],
        max_completion_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text and finishes in (["stop"], ["length"])
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and 0 < usage.completion_tokens <= MAX_TOKENS


def test_completion_streams_text(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="llm", prompt="The capital of France is", max_tokens=MAX_TOKENS, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.object == "text_completion" for c in chunks)


def test_completion_without_stream(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="llm", prompt="1, 2, 3,", max_tokens=4, stop=["\n"]
    )
    assert completion.choices[0].text is not None and completion.usage.completion_tokens <= 4


def test_requests_with_the_same_user_are_one_application(
    client: openai.OpenAI, api: httpx.Client
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    for question in ("Say one.", "Say two."):
        client.chat.completions.create(
            model="llm", messages=[{"role": "user", "content": question}], max_tokens=4, user=user
        )
    kinds = [e["kind"] for e in _events(api, user)]
    assert kinds.count("admit") == 1 and kinds.count("complete") == 2
    view = api.get(f"/v1/apps/{user}").json()
    assert view["app_class"] == "openai" and view["phase"] == "running" and view["step"] == 1
    assert api.post(f"/v1/apps/{user}/finish").json()["phase"] == "finished"


def test_headers_name_the_application_class_and_stage(
    client: openai.OpenAI, api: httpx.Client, served: Served
) -> None:
    app_id = f"agent-{uuid.uuid4().hex[:8]}"
    headers = {
        "X-Hermesflow-App": app_id,
        "X-Hermesflow-Class": "my_agent",
        "X-Hermesflow-Stage": "plan",
    }
    client.chat.completions.create(
        model="llm",
        messages=[{"role": "user", "content": "Plan."}],
        max_tokens=4,
        extra_headers=headers,
    )
    api.post(f"/v1/apps/{app_id}/finish")
    run = RunJournal(Store(served.db_url)).run(app_id)
    assert run.app_class == "my_agent"
    assert [c.stage for c in RunJournal(Store(served.db_url)).calls(run.id)] == ["plan"]


def test_unknown_model_is_a_404_in_openai_format(client: openai.OpenAI, served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.body["code"] == "model_not_found"
    response = httpx.post(
        f"{served.url}/v1/completions",
        json={"model": "tools", "prompt": "x"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"model": "llm", "messages": []}, "messages"),
        (
            {"model": "llm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        ({"model": "llm", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {"model": "llm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100_000},
            "max_tokens",
        ),
    ],
)
def test_invalid_openai_requests_are_400_in_openai_format(
    api: httpx.Client, body: dict, problem: str
) -> None:
    response = api.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and problem in error["message"]


# -- control API ---------------------------------------------------------------------------------


def _require_program() -> None:
    if PROGRAM not in REFERENCE_APPS:
        pytest.skip(f"hermesflow.apps.suite has no {PROGRAM!r} program yet")


def test_program_run_long_poll_and_event_stream(api: httpx.Client) -> None:
    _require_program()
    app_id = f"run-{uuid.uuid4().hex[:8]}"
    body = {
        "app_class": PROGRAM,
        "inputs": {"text": "Cats sleep a lot. They also purr.", "max_chunks": 1},
        "app_id": app_id,
    }
    created = api.post("/v1/apps", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["app_id"] == app_id and created.json()["phase"] in ("admitted", "running")
    again = api.post("/v1/apps", json={**body, "inputs": {"text": "Something else entirely."}})
    assert (
        again.json()["app_id"] == app_id
        and again.json()["submitted_at"] == created.json()["submitted_at"]
    )
    with api.stream("GET", f"/v1/apps/{app_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _sse_documents(stream)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "admit" and kinds[-1] == "finish"
    assert kinds.count("complete") == 2  # map (one chunk), then reduce
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    view = api.get(f"/v1/apps/{app_id}", params={"wait": 60}).json()
    assert view["phase"] == "finished" and view["act_s"] > 0
    assert view["result"]["summary"] and view["result"]["chunks"] == 1
    after = events[-2]["id"]
    assert [
        e["kind"]
        for e in api.get(
            f"/v1/apps/{app_id}/events", params={"follow": "false", "after": after}
        ).json()
    ] == ["finish"]


def test_long_poll_returns_after_the_timeout_for_a_running_app(api: httpx.Client) -> None:
    app_id = f"open-{uuid.uuid4().hex[:8]}"
    api.post(
        f"/v1/apps/{app_id}/steps",
        json={"app_class": "notebook", "stage": "calc", "backend": "tools", "call": CALCULATE},
    )
    view = api.get(f"/v1/apps/{app_id}", params={"wait": 0.3}).json()
    assert view["phase"] == "running"
    assert api.post(f"/v1/apps/{app_id}/finish").json()["phase"] == "finished"


def test_single_tool_steps_of_an_open_application(api: httpx.Client, served: Served) -> None:
    app_id = f"steps-{uuid.uuid4().hex[:8]}"
    step = {"app_class": "notebook", "stage": "calc", "backend": "tools", "call": CALCULATE}
    first = api.post(f"/v1/apps/{app_id}/steps", json=step)
    assert first.status_code == 200, first.text
    assert first.json()["value"] == 14 and first.json()["finish_reason"] == "stop"
    with api.stream("POST", f"/v1/apps/{app_id}/steps", json={**step, "stream": True}) as stream:
        documents = _sse_documents(stream)
    assert documents[-1]["result"]["value"] == 14
    finished = api.post(f"/v1/apps/{app_id}/finish")
    assert finished.status_code == 200 and finished.json()["phase"] == "finished"
    observations = Store(served.db_url).observations("notebook", limit=10)
    assert [
        o.next_stage
        for o in observations
        if o.run_id == RunJournal(Store(served.db_url)).run(app_id).id
    ] == [
        "calc",
        "__end__",
    ]
    with api.stream(
        "GET", f"/v1/apps/{app_id}/events"
    ) as stream:  # ended: the stream closes at once
        assert _sse_documents(stream)[-1]["kind"] == "finish"


def test_streamed_llm_step_sends_deltas_then_the_result(api: httpx.Client) -> None:
    app_id = f"llm-step-{uuid.uuid4().hex[:8]}"
    call = {"kind": "llm", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS}
    with api.stream(
        "POST",
        f"/v1/apps/{app_id}/steps",
        json={"app_class": "notebook", "stage": "write", "call": call, "stream": True},
    ) as stream:
        documents = _sse_documents(stream)
    deltas = "".join(d["delta"] for d in documents[:-1])
    result = documents[-1]["result"]
    assert result["text"] == deltas and 0 < result["output_tokens"] <= MAX_TOKENS
    api.post(f"/v1/apps/{app_id}/finish")


@pytest.mark.parametrize(
    ("path", "body", "status", "problem"),
    [
        (
            "/v1/apps",
            {"app_class": "no_such_class", "inputs": {}},
            422,
            "unknown application class 'no_such_class'",
        ),
        ("/v1/apps", {"inputs": {}}, 422, "app_class"),
        ("/v1/apps", {"app_class": "x", "inputs": []}, 422, "inputs"),
        (
            "/v1/apps/s1/steps",
            {"app_class": "n", "stage": "s", "call": {"kind": "tool"}},
            422,
            "tool",
        ),
        (
            "/v1/apps/s1/steps",
            {"app_class": "n", "stage": "s", "call": {"kind": "fax"}},
            422,
            "call",
        ),
        (
            "/v1/apps/s1/steps",
            {"app_class": "n", "stage": "s", "call": {"kind": "llm"}},
            422,
            "exactly one of 'messages'",
        ),
        (
            "/v1/apps/s2/steps",
            {"app_class": "n", "stage": "s", "backend": "gpu", "call": CALCULATE},
            422,
            "unknown backend 'gpu'",
        ),
    ],
)
def test_malformed_submissions_are_422_naming_the_problem(
    api: httpx.Client, path: str, body: dict, status: int, problem: str
) -> None:
    response = api.post(path, json=body)
    assert response.status_code == status, response.text
    assert problem in json.dumps(response.json())


def test_invalid_program_inputs_are_422(api: httpx.Client) -> None:
    _require_program()
    response = api.post("/v1/apps", json={"app_class": PROGRAM, "inputs": {"max_chunks": 0}})
    assert response.status_code == 422
    assert f"invalid inputs for class '{PROGRAM}'" in response.json()["detail"]


def test_steps_of_a_program_class_are_refused(api: httpx.Client) -> None:
    _require_program()
    step = {"app_class": PROGRAM, "stage": "map", "backend": "tools", "call": CALCULATE}
    response = api.post(f"/v1/apps/p-{uuid.uuid4().hex[:6]}/steps", json=step)
    assert response.status_code == 422 and "program class" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/apps/nobody"),
        ("GET", "/v1/apps/nobody?wait=1"),
        ("GET", "/v1/apps/nobody/events"),
        ("GET", "/v1/apps/nobody/events?follow=false"),
        ("POST", "/v1/apps/nobody/finish"),
        ("GET", "/v1/classes/nobody/graph"),
    ],
)
def test_unknown_applications_and_classes_are_404(
    api: httpx.Client, method: str, path: str
) -> None:
    response = api.request(method, path)
    assert response.status_code == 404 and "nobody" in response.json()["detail"]


def test_backends_stats_and_class_graph(api: httpx.Client) -> None:
    backends = {b["name"]: b for b in api.get("/v1/backends").json()}
    assert set(backends) == {"tools", "llm", "search", "broken"}
    assert backends["llm"]["type"] == "transformers"
    before = api.get("/v1/stats").json()
    app_id = _app_id("counted")
    assert api.put(f"/v1/apps/{app_id}/steps/calc", json={"app_class": "notebook", "stage": "calc", "call": CALCULATE, "backend": "tools"}).status_code < 300
    assert api.get(f"/v1/apps/{app_id}/steps/calc", params={"wait": 60}).json()["state"] == "done"
    api.post(f"/v1/apps/{app_id}/finish")
    stats = api.get("/v1/stats").json()
    assert set(stats) == set(SchedulerStats.model_fields)  # not the actor's benchmark counters
    assert stats["policy"] == "gittins"
    assert stats["completed_calls"] > before["completed_calls"]  # the step it just ran counts
    assert stats["overhead_ms_per_step"] > 0 and stats["busy_s"] > before["busy_s"]
    api.post(
        "/v1/apps/graph-probe/steps",
        json={"app_class": "probe_class", "stage": "calc", "backend": "tools", "call": CALCULATE},
    )
    api.post("/v1/apps/graph-probe/finish")
    graph = api.get("/v1/classes/probe_class/graph").json()
    assert graph["name"] == "probe_class" and "calc" in graph["stages"]


# -- starting gateways -----------------------------------------------------------------------------


def test_a_taken_port_fails_with_a_clear_error(served: Served) -> None:
    port = int(served.url.rsplit(":", 1)[1])
    with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{port}"):
        start_gateway(
            port=port, scheduler_name=served.scheduler_name, name=f"gw-taken-{uuid.uuid4().hex[:6]}"
        )


def test_the_same_name_with_other_settings_is_refused(served: Served) -> None:
    assert (
        start_gateway(
            port=0, token=TOKEN, scheduler_name=served.scheduler_name, name=served.gateway_name
        )
        == served.url
    )
    with pytest.raises(RuntimeError, match="token_sha256"):
        start_gateway(
            port=0, token=None, scheduler_name=served.scheduler_name, name=served.gateway_name
        )


def test_a_gateway_needs_its_scheduler(ray_cluster: None) -> None:
    with pytest.raises(RuntimeError, match="no Hermesflow scheduler named 'nobody'"):
        start_gateway(port=0, scheduler_name="nobody", name=f"gw-orphan-{uuid.uuid4().hex[:6]}")


# -- refusals: bad input is a clear 4xx, checked before anything runs ------------------------------

LONE_SURROGATE = b"\\udc80x"
"""A JSON escape of half a UTF-16 pair: valid JSON, no Unicode character."""


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_in_a_chat_is_400_before_anything_runs(
    api: httpx.Client, stream: bool
) -> None:
    app_id = _app_id("surrogate")
    body = (
        b'{"model": "llm", "max_tokens": 4, "stream": ' + (b"true" if stream else b"false")
        + b', "messages": [{"role": "user", "content": "' + LONE_SURROGATE + b'"}]}'
    )
    response = api.post(
        "/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json", "X-Hermesflow-App": app_id},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages.0.content"
    assert "lone UTF-16 surrogate (\\udc80)" in error["message"]
    assert api.get(f"/v1/apps/{app_id}").status_code == 404, "the request was admitted"


def test_a_lone_surrogate_in_a_step_is_400_on_the_control_api(api: httpx.Client) -> None:
    app_id = _app_id("surrogate-step")
    body = (
        b'{"app_class": "notebook", "stage": "write", "call": {"kind": "llm", "prompt": "'
        + LONE_SURROGATE + b'", "max_tokens": 2}}'
    )
    response = api.post(
        f"/v1/apps/{app_id}/steps", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("call.prompt: the text holds a lone UTF-16")
    assert api.get(f"/v1/apps/{app_id}").status_code == 404


@pytest.mark.parametrize(
    ("backend", "call", "problem"),
    [
        (
            "tools",
            {"kind": "llm", "prompt": "hi"},
            "backend 'tools' runs tool calls, not llm calls; send llm calls to a backend of type",
        ),
        (
            "tools",
            {"kind": "tool", "tool": "nope"},
            "backend 'tools' has no tool 'nope'; its tools: calculator(expression: str)",
        ),
        (
            "tools",
            {"kind": "tool", "tool": "calculator", "args": {"expr": "1"}},
            "missing ['expression']; unknown ['expr'] argument(s)",
        ),
        (
            "llm",
            {"kind": "tool", "tool": "calculator", "args": {"expression": "1"}},
            "backend 'llm' runs llm calls, not tool calls",
        ),
    ],
)
def test_a_call_that_does_not_fit_its_backend_is_refused_at_submission(
    api: httpx.Client, backend: str, call: dict, problem: str
) -> None:
    app_id = _app_id("misfit")
    step = {"app_class": "notebook", "stage": "use", "backend": backend, "call": call}
    for response in (
        api.post(f"/v1/apps/{app_id}/steps", json=step),
        api.put(f"/v1/apps/{app_id}/steps/first", json=step),
    ):
        assert response.status_code == 422, response.text
        assert problem in response.json()["detail"]
        _assert_no_internals(response.text)
    assert api.get(f"/v1/apps/{app_id}").status_code == 404, "a refused step was stored"


def test_search_arguments_are_checked_against_its_signature(api: httpx.Client) -> None:
    """`search` starts cold, so the first call can only be checked by the backend itself, after
    its warm-up; from then on the scheduler knows its signature and refuses at submission."""
    bad = {"kind": "tool", "tool": "search", "args": {"query": "capital", "k": -5}}
    problem = "k: Input should be greater than or equal to 1); it takes search(query: str, k: int = 3)"
    first, second = _app_id("search-cold"), _app_id("search-known")
    for app_id in (first, second):
        step = {"app_class": "lookup", "stage": "find", "backend": "search", "call": bad}
        response = api.post(f"/v1/apps/{app_id}/steps", json=step)
        assert response.status_code == 422, response.text
        assert problem in response.json()["detail"]
        _assert_no_internals(response.text)
    assert api.get(f"/v1/apps/{second}").status_code == 404, "refused after it was stored"
    good = {"kind": "tool", "tool": "search", "args": {"query": "capital of Italy", "k": 1}}
    answer = api.post(
        f"/v1/apps/{first}/steps",
        json={"app_class": "lookup", "stage": "find", "backend": "search", "call": good},
    )
    assert answer.status_code == 200 and answer.json()["value"][0]["id"] == "rome"
    api.post(f"/v1/apps/{first}/finish")


def test_a_prompt_longer_than_the_model_takes_is_openais_context_length_exceeded(
    client: openai.OpenAI, api: httpx.Client
) -> None:
    long = "word " * (2 * MAX_INPUT_TOKENS)
    chat = {"model": "llm", "messages": [{"role": "user", "content": long}], "max_tokens": 4}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(**chat, stream=stream)
        assert raised.value.code == "context_length_exceeded"
        message = raised.value.message
        assert f"maximum prompt length is {MAX_INPUT_TOKENS} tokens" in message
        asked = int(message.split("resulted in ")[1].split()[0])
        assert asked > MAX_INPUT_TOKENS and '"truncation": "auto"' in message
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model="llm", prompt=long, max_tokens=4)
    assert completion.value.code == "context_length_exceeded"
    step = {"app_class": "notebook", "stage": "write", "call": {"kind": "llm", "prompt": long}}
    refused = api.post(f"/v1/apps/{_app_id('long')}/steps", json=step)
    assert refused.status_code == 422 and "maximum prompt length" in refused.json()["detail"]


def test_truncation_auto_keeps_the_end_of_a_long_prompt(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="llm",
        messages=[{"role": "user", "content": "word " * (2 * MAX_INPUT_TOKENS)}],
        max_tokens=2,
        extra_body={"truncation": "auto"},
    )
    assert completion.usage.prompt_tokens == MAX_INPUT_TOKENS


def test_the_attention_field_picks_the_method_and_the_result_names_the_one_that_ran(
    client: openai.OpenAI, api: httpx.Client, served: Served
) -> None:
    """The CPU backend measures no break-even length, so a minference call runs dense there.
    Each step's observation records the method that ran, for the refit and the cost model."""
    chat = {"model": "llm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    answer = client.chat.completions.create(**chat, extra_body={"attention": "retrieval"})
    assert answer.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**chat, extra_body={"attention": "sparse"})
    assert "attention" in refused.value.message and "minference" in refused.value.message
    app_id = _app_id("attention")
    for asked, ran in (("retrieval", "retrieval"), ("minference", "dense")):
        call = {"kind": "llm", "prompt": "Once upon a time", "max_tokens": 2, "attention": asked}
        step = {"app_class": "notebook", "stage": "write", "call": call}
        result = api.post(f"/v1/apps/{app_id}/steps", json=step)
        assert result.status_code == 200 and result.json()["attention"] == ran, result.text
    assert api.post(f"/v1/apps/{app_id}/finish").status_code == 200
    store = Store(served.db_url)
    run_id = RunJournal(store).run(app_id).id
    observed = [o.attention for o in store.observations("notebook", limit=100) if o.run_id == run_id]
    assert observed == [(AttentionMethod.RETRIEVAL,), (AttentionMethod.DENSE,)]


def test_a_call_its_backend_fails_is_reported_without_internals(
    api: httpx.Client, served: Served
) -> None:
    """In-cluster code reaches the scheduler without the gateway's checks; a call that then
    breaks the backend (the tokenizer cannot encode a lone surrogate) is its failure, told with
    an incident id; the traceback stays in the log."""
    scheduler = ray.get_actor(served.scheduler_name, namespace=NAMESPACE)
    app_id = _app_id("backend-failure")
    call = LLMCall(prompt="\udc80x", max_tokens=2).model_dump(mode="json")
    ray.get(scheduler.put_step.remote(app_id, "write", "notebook", "write", call, "llm"))
    response = api.get(f"/v1/apps/{app_id}/steps/write", params={"wait": 60})
    view = response.json()
    assert view["state"] == "failed" and view["result"]["error_code"] == "backend_error"
    assert view["error"].startswith("backend 'llm' failed the call (TypeError)")
    assert "incident" in view["error"]
    _assert_no_internals(response.text)
    api.post(f"/v1/apps/{app_id}/finish")


# -- limits: body, labels, names -------------------------------------------------------------------


def test_a_20_mb_chat_is_413_naming_the_limit(api: httpx.Client) -> None:
    content = b"x" * (20 * 2**20)
    body = b'{"model": "llm", "messages": [{"role": "user", "content": "' + content + b'"}]}'
    response = api.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text[:500]
    message = response.json()["error"]["message"]
    assert f"has {len(body)} bytes, more than this server's limit of {4 * 2**20} bytes" in message
    assert "HERMES_API_MAX_BODY_BYTES" in message


def test_a_body_over_a_configured_limit_is_413_also_without_a_length(limited: str) -> None:
    labels = {"note": "x" * LIMITS.max_body_bytes}
    with httpx.Client(base_url=limited, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        declared = api.post("/v1/apps", json={"app_class": PROGRAM, "labels": labels})
        assert declared.status_code == 413
        assert f"limit of {LIMITS.max_body_bytes} bytes" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the gateway counts what it reads
            yield b'{"model": "llm", "messages": [{"role": "user", "content": "'
            yield b"x" * LIMITS.max_body_bytes
            yield b'"}]}'

        counted = api.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert counted.status_code == 413
        assert "is longer than this server's limit" in counted.json()["error"]["message"]


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"a": 1, "b": 2, "c": 3}, "3 labels, more than 2 (HERMES_API_MAX_LABELS)"),
        ({"k" * 17: 1}, "has 17 characters, more than 16 (HERMES_API_MAX_LABEL_KEY_CHARS)"),
        (
            {"note": "v" * 40},
            "'note' has 42 characters as JSON, more than 32 (HERMES_API_MAX_LABEL_VALUE_CHARS)",
        ),
    ],
)
def test_labels_over_the_limits_are_refused(limited: str, labels: dict, problem: str) -> None:
    app_id = _app_id("labels")
    step = {"app_class": "notebook", "stage": "calc", "backend": "tools", "call": CALCULATE}
    with httpx.Client(base_url=limited, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        for response in (
            api.post(f"/v1/apps/{app_id}/steps", json={**step, "labels": labels}),
            api.put(f"/v1/apps/{app_id}/steps/calc", json={**step, "labels": labels}),
            api.post("/v1/apps", json={"app_class": PROGRAM, "labels": labels}),
        ):
            assert response.status_code == 422, response.text
            assert problem in response.json()["detail"]
        assert api.get(f"/v1/apps/{app_id}").status_code == 404
        within = api.post(f"/v1/apps/{app_id}/steps", json={**step, "labels": {"team": "a"}})
        assert within.status_code == 200, within.text
        api.post(f"/v1/apps/{app_id}/finish")


CHAT = {"model": "llm", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 1}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "problem"),
    [
        ("/v1/chat/completions", {**CHAT, "user": "u" * 121}, {}, 400, "at most 120 characters"),
        ("/v1/chat/completions", CHAT, {"X-Hermesflow-App": "a" * 129}, 400, "at most 128"),
        ("/v1/chat/completions", CHAT, {"X-Hermesflow-Class": "c" * 251}, 400, "at most 250"),
        ("/v1/chat/completions", CHAT, {"X-Hermesflow-Stage": "s" * 201}, 400, "at most 200"),
        (
            "/v1/apps/names/steps",
            {"app_class": "c" * 251, "stage": "s", "backend": "tools", "call": CALCULATE},
            {},
            422,
            "at most 250",
        ),
        (
            "/v1/apps/names/steps",
            {"app_class": "n", "stage": "s" * 201, "backend": "tools", "call": CALCULATE},
            {},
            422,
            "at most 200",
        ),
        ("/v1/apps", {"app_class": "c" * 251}, {}, 422, "at most 250"),
    ],
)
def test_names_over_their_limits_are_refused(
    api: httpx.Client, path: str, body: dict, headers: dict, status: int, problem: str
) -> None:
    response = api.post(path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert problem in response.text


# -- last: a backend that cannot warm (the planner may go on trying it for a while) ----------------


def test_a_backend_that_cannot_warm_fails_its_steps_without_internals(api: httpx.Client) -> None:
    app_id = _app_id("broken")
    call = {"kind": "tool", "tool": "missing", "args": {}}
    response = api.post(
        f"/v1/apps/{app_id}/steps",
        json={"app_class": "broken_class", "stage": "use", "backend": "broken", "call": call},
    )
    assert response.status_code == 502, response.text
    detail = response.json()["detail"]
    assert detail.startswith("the application failed: backend 'broken' could not be warmed")
    assert "No module named 'no_such_module'" in detail
    _assert_no_internals(response.text)
    backends = api.get("/v1/backends")
    assert "no_such_module" in {b["name"]: b for b in backends.json()}["broken"]["last_error"]
    _assert_no_internals(backends.text)
