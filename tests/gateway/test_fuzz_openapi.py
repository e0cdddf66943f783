"""Schemathesis against a real running gateway (fake provider upstream), two ways:

1. The gateway's own OpenAPI document (/openapi.json): whatever it sends, the gateway never answers
   with a 5xx of its own making, and errors come in the caller's API shape.
2. Conformance to OpenAI's published OpenAPI description (../shared/specs/openai-openapi.yaml):
   requests generated from OpenAI's own spec for every operation the gateway implements, in positive
   and negative modes, checked for no server error, response-schema conformance for the status, and a
   documented content type. Explicit requests (plain, tools, structured output, stored responses)
   make sure successful answers are checked too, and every streamed Responses event is validated
   against the spec's event schema. Where the gateway deliberately differs, `DEVIATIONS` says why
   (the one list). These tests skip with a clear message when the shared checkout is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from backends.fake_provider import FakeProviderThread
from tests.support.db import migrated_sqlite_url
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[GatewayThread]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    url = migrated_sqlite_url(sqlite_template, tmp / "fuzz.db")
    with FakeProviderThread() as fp:
        gw = GatewayThread(gateway_settings(fp.base_url, url, tmp)).start()
        try:
            yield gw
        finally:
            gw.stop()


def test_fuzzed_requests_never_get_a_server_error(fuzz_gateway: GatewayThread) -> None:
    schema = schemathesis.openapi.from_url(fuzz_gateway.base_url + "/openapi.json")
    failures: list[str] = []
    for op_result in schema.get_all_operations():
        op = op_result.ok()

        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=fuzz_gateway.base_url, timeout=20)
            # 502/503/504 are upstream outcomes (the fake provider's answer to fuzzed parameters),
            # not the gateway failing; anything else 5xx is ours.
            if response.status_code >= 500 and response.status_code not in (502, 503, 504):
                failures.append(f"{case.operation.label}: {response.status_code} {response.text[:200]}")
            if response.status_code >= 400:
                body = response.json()
                if case.operation.path == "/v1/messages":  # Anthropic's error shape
                    assert body["type"] == "error" and "message" in body["error"], body
                else:
                    assert set(body) == {"error"} and "message" in body["error"], body

        run()
    assert not failures, failures[:5]


# ---- conformance to OpenAI's published spec ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATHS = [
    ROOT.parent / "shared/specs/openai-openapi.yaml",
    ROOT.parents[1] / "shared/specs/openai-openapi.yaml",
]
SPEC = next((p for p in SPEC_PATHS if p.is_file()), None)
needs_spec = pytest.mark.skipif(
    SPEC is None,
    reason=f"OpenAI's OpenAPI spec not found (looked for {', '.join(map(str, SPEC_PATHS))}); "
    "it lives in the shared checkout beside the repository",
)

OPERATIONS = [
    "createChatCompletion",
    "createCompletion",
    "createEmbedding",
    "listModels",
    "retrieveModel",
    "createResponse",
    "getResponse",
    "deleteResponse",
    "listInputItems",
]
EXAMPLES_PER_MODE = 8  # per operation and mode: the whole file stays under a minute

# The one list of deliberate deviations from OpenAI's spec: (operation, schemathesis failure code,
# HTTP status, a marker the failure's text contains ("" for any)) -> why. Anything else fails.
# Not checked at all: status-code conformance (the spec documents only 200 for most operations,
# while OpenAI answers errors with 400/401/404/429/5xx like the gateway).
DEVIATIONS: dict[tuple[str, str, int, str], str] = {
    (
        "POST /embeddings",
        "ST108",
        200,
        "/components/schemas/Embedding/properties/embedding",
    ): "With encoding_format=base64 OpenAI (and the gateway) send each embedding as a base64 string; "
    "the spec types it as an array of floats only.",
    (
        "DELETE /responses/{response_id}",
        "ST108",
        404,
        "",
    ): "The spec documents deleteResponse's 404 body as a bare Error object; OpenAI (and the gateway, and "
    'the SDKs) send it wrapped as {"error": Error}, like every other error.',
    (
        "POST /chat/completions",
        "ST111",
        200,
        "",
    ): "The spec's discriminator for a message's tool_calls maps schema names, not the `type` values "
    "('function', 'custom') that OpenAI sends; the gateway sends OpenAI's values.",
    (
        "GET /responses/{response_id}/input_items",
        "ST111",
        200,
        "",
    ): "The same spec fault for input items: its discriminator maps schema names, not the item `type` "
    "values ('message', 'function_call', ...) that OpenAI sends.",
    (
        "POST /completions",
        "ST105",
        200,
        "",
    ): "The spec documents createCompletion as JSON only; with `stream: true` OpenAI (and the gateway) "
    "answer text/event-stream.",
}
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if SPEC is None:
        pytest.skip("OpenAI's OpenAPI spec not found")
    with SPEC.open("rb") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _fill(case: Any, operation_id: str) -> None:
    """Positive cases name a model the gateway serves (the spec's are OpenAI's), and a Responses
    request has something to answer instead of a stored response or prompt template it cannot know."""
    body = case.body
    if not isinstance(body, dict):
        return
    body["model"] = "fake-embed" if operation_id == "createEmbedding" else "fake-model"
    if operation_id == "createResponse":
        for k in ("previous_response_id", "background", "conversation", "prompt"):
            body.pop(k, None)
        body.setdefault("input", "hello")


def _check(case: Any, response: Any, found: list[str]) -> None:
    for check in CHECKS:
        try:
            case.validate_response(response, checks=[check])
        except BaseException as exc:  # schemathesis raises a FailureGroup of Failures
            for f in getattr(exc, "exceptions", None) or [exc]:
                key = (case.operation.label, getattr(f, "code", "?"), response.status_code)
                text = str(f)
                if not any(d[:3] == key and d[3] in text for d in DEVIATIONS):
                    found.append(f"{key}: {text[:600]}")


def _fuzz(op: Any, operation_id: str, mode: GenerationMode, base_url: str, found: list[str]) -> None:
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if mode == GenerationMode.POSITIVE:
            _fill(case, operation_id)
        _check(case, case.call(base_url=base_url, timeout=20), found)

    run()


@needs_spec
def test_requests_generated_from_openais_spec_get_conforming_answers(
    spec: dict[str, Any], fuzz_gateway: GatewayThread
) -> None:
    schema = schemathesis.openapi.from_dict(spec).include(operation_id=OPERATIONS)
    found: list[str] = []
    seen: set[str] = set()
    for result in schema.get_all_operations():
        op = result.ok()
        operation_id = op.definition.raw["operationId"]
        seen.add(operation_id)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(op, operation_id, mode, fuzz_gateway.base_url + "/v1", found)
    assert seen == set(OPERATIONS)
    assert not found, "\n".join(found[:10])


EXPLICIT: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/completions", {"model": "fake-model", "prompt": "hi", "max_tokens": 5}),
    ("POST", "/embeddings", {"model": "fake-embed", "input": ["a", "b"], "dimensions": 8}),
    (
        "POST",
        "/responses",
        {"model": "fake-model", "input": "one two three four five", "max_output_tokens": 16},
    ),
    (
        "POST",
        "/responses",
        {
            "model": "fake-model",
            "input": "weather?",
            "tools": [
                {
                    "type": "function",
                    "name": "get_weather",
                    "strict": False,
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                }
            ],
        },
    ),
    (
        "POST",
        "/responses",
        {
            "model": "fake-model",
            "input": "json",
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "x",
                    "strict": False,
                    "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
                }
            },
        },
    ),
    ("POST", "/responses", {"model": "fake-model", "input": "hi", "instructions": "be brief"}),
]


@needs_spec
def test_successful_answers_and_stored_responses_conform(
    spec: dict[str, Any], fuzz_gateway: GatewayThread
) -> None:
    schema = schemathesis.openapi.from_dict(spec).include(operation_id=OPERATIONS)
    base_url = fuzz_gateway.base_url + "/v1"
    found: list[str] = []
    stored: str | None = None
    for method, path, body in EXPLICIT:
        case = schema[path][method].Case(body=body, media_type="application/json")
        response = case.call(base_url=base_url, timeout=20)
        assert response.status_code == 200, response.text
        _check(case, response, found)
        if path == "/responses":
            stored = response.json()["id"]
    assert stored is not None
    for method, path in [
        ("GET", "/responses/{response_id}"),
        ("GET", "/responses/{response_id}/input_items"),
        ("DELETE", "/responses/{response_id}"),
    ]:
        case = schema[path][method].Case(path_parameters={"response_id": stored})
        response = case.call(base_url=base_url, timeout=20)
        assert response.status_code == 200, response.text
        _check(case, response, found)
    assert not found, "\n".join(found[:10])


@needs_spec
def test_streamed_responses_events_conform_to_the_spec(
    spec: dict[str, Any], fuzz_gateway: GatewayThread
) -> None:
    import jsonschema

    schemas = spec["components"]["schemas"]
    by_type: dict[str, Any] = {}  # event type -> a validator for that event's own schema (clear errors)
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        for kind in schemas[name].get("properties", {}).get("type", {}).get("enum", ()):
            by_type[kind] = jsonschema.Draft202012Validator(
                {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
            )
    tools = [
        {
            "type": "function",
            "name": "lookup",
            "strict": False,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
    ]
    kinds: set[str] = set()
    with httpx.Client(base_url=fuzz_gateway.base_url, timeout=20) as http:
        for body in (
            {"model": "fake-model", "input": "one two", "stream": True},
            {"model": "fake-model", "input": "find", "tools": tools, "stream": True},
        ):
            with http.stream("POST", "/v1/responses", json=body) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = orjson.loads(line[6:])
                    kinds.add(event["type"])
                    errors = list(by_type[event["type"]].iter_errors(event))
                    assert not errors, (
                        f"{event['type']} violates the spec at {list(errors[0].absolute_path)}: "
                        f"{errors[0].message[:300]}"
                    )
    assert {
        "response.created",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.completed",
    } <= kinds
