"""The official openai SDK, unchanged but for base_url, works against the gateway."""

from __future__ import annotations

import openai
import pytest

from tests.support.harness import GatewayThread


def client(gw: GatewayThread, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key="sk-unused", max_retries=0, **kw)  # type: ignore[arg-type]


def test_chat_completion_returns_answer_and_request_id(gateway: GatewayThread) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="fake-model", messages=[{"role": "user", "content": "hello there"}])
    resp = raw.parse()
    rid = raw.headers["x-request-id"]
    assert resp.id == f"chatcmpl-{rid}"
    assert resp.choices[0].message.content
    assert resp.model == "fake-model"
    assert resp.usage and resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert raw.headers["x-hybridgate-model"] == "fake-model"
    assert raw.headers["x-hybridgate-route-reason"]


def test_streamed_chat_with_include_usage(gateway: GatewayThread) -> None:
    stream = client(gateway).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "stream please"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(gateway: GatewayThread) -> None:
    chunks = list(client(gateway).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_completions_and_embeddings_and_models(gateway: GatewayThread) -> None:
    c = client(gateway)
    comp = c.completions.create(model="fake-model", prompt="Once upon a time", max_tokens=5)
    assert comp.choices[0].text
    assert comp.id.startswith("cmpl-")
    emb = c.embeddings.create(model="fake-embed", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    ids = {m.id for m in c.models.list()}
    assert {"fake-model", "fake-embed"} <= ids
    assert c.models.retrieve("fake-model").id == "fake-model"


def test_tools_and_json_mode_pass_through(gateway: GatewayThread) -> None:
    c = client(gateway)
    resp = c.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}],
        tool_choice="auto", temperature=0.2, top_p=0.9, seed=7, user="u1", stop=["\n\n"], n=1)
    assert resp.choices[0].message.tool_calls
    resp = c.chat.completions.create(
        model="fake-model", messages=[{"role": "system", "content": "json"}, {"role": "user", "content": "x"}],
        response_format={"type": "json_object"}, max_completion_tokens=50)
    import json

    assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)


def test_unknown_model_is_404_not_found_error(gateway: GatewayThread) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        client(gateway).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert ei.value.body["code"] == "model_not_found"  # type: ignore[index]


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
         "tool 'get_time' not found in 'tools'"),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         "'tool_choice' is only allowed when 'tools' are specified"),
        ({"tool_choice": "required"}, "'tool_choice' is only allowed when 'tools' are specified"),
        ({"tools": [], "tool_choice": "auto"}, "'tool_choice' is only allowed when 'tools' are specified"),
    ],
)
def test_tool_choice_must_name_one_of_the_tools(gateway: GatewayThread, fields: dict, says: str) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client(gateway).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "x"}], **fields)
    err = ei.value.body
    assert err["param"] == "tool_choice"  # type: ignore[index]
    assert err["message"] == f"Invalid value for 'tool_choice': {says}."  # type: ignore[index]


def test_tool_choice_none_needs_no_tools(gateway: GatewayThread) -> None:
    resp = client(gateway).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "x"}], tool_choice="none")
    assert resp.choices[0].message.content == "x"


def test_models_show_their_context_window(gateway: GatewayThread) -> None:
    """Each model object carries the largest context window its deployments serve chat with, as vLLM's
    `max_model_len` and as `context_window`; a policy, that of the deployments it may route to."""
    c = client(gateway)
    listed = {m.id: m.model_dump() for m in c.models.list()}
    card = c.models.retrieve("fake-model").model_dump()
    assert card == listed["fake-model"]
    assert card["max_model_len"] == card["context_window"] == 4096
    assert {k: card[k] for k in ("id", "object", "owned_by")} == {
        "id": "fake-model", "object": "model", "owned_by": "openai_compatible"}
    assert listed["fake-embed"]["context_window"] == 8192  # an embedding model: the window of what it serves
    assert listed["auto"]["max_model_len"] == listed["auto"]["context_window"] == 4096  # fake-a serves its chat
