"""The Responses API through a running gateway with the real `openai` SDK (and litellm as a client):
plain, streamed, a function tool round trip, structured output, and conversations by
previous_response_id that survive a gateway restart. Upstream: the fake provider (chat completions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import BadRequestError, NotFoundError, OpenAI
from pydantic import BaseModel

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings, streamed_events
from tests.support.harness import GatewayThread, running_gateway


def client(gw: GatewayThread) -> OpenAI:
    return OpenAI(base_url=gw.base_url + "/v1", api_key="anything", max_retries=0)


def test_responses_create_answers_with_output_text_usage_and_gateway_headers(gateway: GatewayThread) -> None:
    raw = client(gateway).responses.with_raw_response.create(
        model="fake-model", input="hello there", instructions="be brief", max_output_tokens=50
    )
    resp = raw.parse()
    assert resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.output_text == "hello there"
    assert resp.usage is not None and resp.usage.output_tokens == 2 and resp.usage.total_tokens > 2
    assert resp.instructions == "be brief" and resp.model == "fake-model"
    assert raw.headers["x-hybridgate-deployment"] == "fake-a" and raw.headers["x-request-id"]


def test_responses_stream_sends_the_event_sequence_with_sequence_numbers(gateway: GatewayThread) -> None:
    with client(gateway).responses.stream(model="fake-model", input="one two three") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_item.added" in kinds and "response.output_text.done" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "one two three" == final.output_text
    assert final.usage is not None and final.usage.output_tokens == 3


def test_function_tool_round_trip_continues_by_previous_response_id(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    oa = client(gateway)
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    first = oa.responses.create(model="fake-model", input="weather in Paris?", tools=tools)
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and '"city"' in call.arguments
    second = oa.responses.create(
        model="fake-model",
        previous_response_id=first.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text and second.previous_response_id == first.id
    # The upstream saw the whole conversation: question, the assistant's call and the tool's answer.
    sent = chat_requests(fake_provider)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id and sent[2]["content"] == "sunny"


def test_streamed_function_call_sends_argument_deltas(gateway: GatewayThread) -> None:
    tools = [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
    ]
    with client(gateway).responses.stream(model="fake-model", input="find it", tools=tools) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert (
        "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    )
    call = final.output[0]
    assert call.type == "function_call" and call.name == "lookup" and call.arguments == '{"q":"fake"}'


class Answer(BaseModel):
    city: str
    population: int


def test_text_format_json_schema_and_responses_parse(gateway: GatewayThread) -> None:
    oa = client(gateway)
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    resp = oa.responses.create(
        model="fake-model",
        input="json please",
        text={"format": {"type": "json_schema", "name": "flag", "schema": schema, "strict": True}},
    )
    assert resp.output_text == '{"ok":true}' and resp.text.format.type == "json_schema"
    parsed = oa.responses.parse(model="fake-model", input="a city", text_format=Answer)
    assert parsed.output_parsed == Answer(city="fake", population=1)


def test_conversation_by_previous_response_id_survives_a_gateway_restart(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path)
    with running_gateway(settings) as gw:
        first = client(gw).responses.create(model="fake-model", input="my name is Ada")
        assert client(gw).responses.retrieve(first.id).output_text == "my name is Ada"
    with running_gateway(settings) as gw:  # a new process over the same database
        second = client(gw).responses.create(
            model="fake-model", input="what is my name?", previous_response_id=first.id
        )
        sent = chat_requests(fake_provider)[-1]["messages"]
        assert [m["content"] for m in sent] == ["my name is Ada", "my name is Ada", "what is my name?"]
        items = client(gw).responses.input_items.list(second.id)
        assert [i.content[0].text for i in items.data] == ["what is my name?"]
        client(gw).responses.delete(second.id)
        with pytest.raises(NotFoundError):
            client(gw).responses.retrieve(second.id)
        with pytest.raises(BadRequestError) as err:
            client(gw).responses.create(model="fake-model", input="x", previous_response_id="resp_missing")
        assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_store_false_keeps_nothing(gateway: GatewayThread) -> None:
    resp = client(gateway).responses.create(model="fake-model", input="secret", store=False)
    with pytest.raises(NotFoundError):
        client(gateway).responses.retrieve(resp.id)


def test_retrieving_a_stored_response_as_a_stream_is_a_400_naming_stream(gateway: GatewayThread) -> None:
    """`responses.retrieve(id, stream=True)` (and `responses.stream(response_id=…)`) resume the event stream
    of a background response, which this gateway does not run: a 400 naming `stream`, where a JSON body
    under 200 gave the SDK's SSE reader no event and an empty stream without any error."""
    oa = client(gateway)
    resp = oa.responses.create(model="fake-model", input="kept")
    with pytest.raises(BadRequestError) as err:
        list(oa.responses.retrieve(resp.id, stream=True))
    assert err.value.body["param"] == "stream"  # type: ignore[index]
    with pytest.raises(BadRequestError), oa.responses.stream(response_id=resp.id) as stream:
        list(stream)
    with pytest.raises(NotFoundError):  # an unknown id is still a 404
        oa.responses.retrieve("resp_missing", stream=True)
    assert oa.responses.retrieve(resp.id, extra_query={"stream": "false"}).output_text == "kept"


def test_unsupported_tool_types_and_bad_input_get_400_naming_the_param(gateway: GatewayThread) -> None:
    oa = client(gateway)
    with pytest.raises(BadRequestError) as err:
        oa.responses.create(model="fake-model", input="x", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert err.value.body["param"] == "tools[0].type"  # type: ignore[index]
    with pytest.raises(BadRequestError) as err:
        oa.responses.create(model="fake-model", input="x", max_output_tokens=0)
    assert err.value.body["param"] == "max_tokens" or "max_output_tokens" in str(err.value)


def test_litellm_responses_as_a_client(gateway: GatewayThread) -> None:
    import litellm

    resp = litellm.responses(
        model="openai/fake-model", input="from litellm", api_base=gateway.base_url + "/v1", api_key="anything"
    )
    text = "".join(c.text for item in resp.output if item.type == "message" for c in item.content)
    assert text == "from litellm"


def chat_requests(fp: FakeProviderThread) -> list[dict]:
    """The chat completion bodies the fake provider received, oldest first."""
    return [r.body for r in fp.requests() if r.path.endswith("/chat/completions")]


def test_a_stream_cut_after_it_began_ends_with_response_failed(gateway: GatewayThread) -> None:
    body = {"model": "fake-model", "input": "[[fault:cut:2]] one two three four five six", "stream": True}
    events = streamed_events(gateway, "/v1/responses", body)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed" and events[-1]["response"]["error"]["message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


CASCADE = """
name: cascade
selector: {type: fixed, order: [cheap]}
escalation: {first: [cheap], to: [strong], threshold: 0.999, score: logprobs}
"""


def test_streamed_responses_and_messages_under_a_cascade_show_only_the_escalated_answer(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    import httpx
    from anthropic import Anthropic

    caps = ["chat", "logprobs"]
    deployments = [
        {
            "name": n,
            "model": m,
            "upstream_model": "fake-model",
            "api_base": fake_provider.base_url,
            "capabilities": caps,
        }
        for n, m in (("cheap", "cheap-model"), ("strong", "strong-model"))
    ]
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, deployments=deployments)
    with running_gateway(settings) as gw:
        put = httpx.put(
            gw.base_url + "/admin/api/policies/cascade",
            content=CASCADE,
            headers={"content-type": "application/yaml"},
        )
        assert put.status_code == 201
        with client(gw).responses.stream(model="cascade", input="one two three") as stream:
            final = stream.get_final_response()
        assert final.output_text == "one two three" and final.model == "strong-model"
        with Anthropic(base_url=gw.base_url, api_key="x", max_retries=0).messages.stream(
            model="cascade", max_tokens=20, messages=[{"role": "user", "content": "four five"}]
        ) as mstream:
            message = mstream.get_final_message()
        assert message.content[0].text == "four five" and message.model == "strong-model"  # type: ignore[union-attr]
        with pytest.raises(BadRequestError) as err:  # a cascade translates: no conversation kept upstream
            client(gw).responses.create(model="cascade", input="go on", conversation="conv_1")
        assert err.value.body["param"] == "conversation"  # type: ignore[index]


def test_errors_name_the_responses_parameters_the_caller_sent(gateway: GatewayThread) -> None:
    """Checks that run on the translated chat request name the Responses parameter, not the chat one."""
    import httpx

    url = gateway.base_url + "/v1/responses"
    r = httpx.post(url, json={"model": "auto", "input": "hi", "max_output_tokens": 100_000})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "max_output_tokens"
    r = httpx.post(url, json={"model": "fake-model", "input": "hi", "tools": [{"type": "function", "name": ""}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"].startswith("tools[0]") and ".function." not in err["param"]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"tools": [{"type": "function", "name": "get_weather"}],
          "tool_choice": {"type": "function", "name": "get_time"}}, "tool 'get_time' not found in 'tools'"),
        ({"tool_choice": {"type": "function", "name": "get_weather"}},
         "'tool_choice' is only allowed when 'tools' are specified"),
        ({"tool_choice": "required"}, "'tool_choice' is only allowed when 'tools' are specified"),
    ],
)
def test_tool_choice_must_name_one_of_the_tools(gateway: GatewayThread, fields: dict, says: str) -> None:
    with pytest.raises(BadRequestError) as err:
        client(gateway).responses.create(model="fake-model", input="x", **fields)
    assert err.value.body["param"] == "tool_choice"  # type: ignore[index]
    assert err.value.body["message"] == f"Invalid value for 'tool_choice': {says}."  # type: ignore[index]


def test_tool_choice_auto_needs_no_tools(gateway: GatewayThread) -> None:
    """`auto` is what a Responses object shows when no tool_choice was given, tools or not."""
    resp = client(gateway).responses.create(model="fake-model", input="x", tool_choice="auto")
    assert resp.output_text == "x" and resp.tool_choice == "auto"


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("conversation", "conv_123", "Conversations API"),
        ("conversation", {"id": "conv_123"}, "Conversations API"),
        ("prompt", {"id": "pmpt_123", "variables": {"city": "Paris"}}, "stored prompt templates"),
        ("moderation", {"model": "omni-moderation-latest"}, "moderating a response's input and output"),
        ("context_management", [{"type": "compaction", "compact_threshold": 20000}], "compacting the context"),
    ],
)
def test_state_kept_upstream_is_a_400_naming_it_on_a_translated_deployment(
    gateway: GatewayThread, fake_provider: FakeProviderThread, field: str, value: object, says: str
) -> None:
    """A conversation (OpenAI's Conversations API) or a stored prompt template lives at an upstream that
    speaks the Responses API, and moderation and compaction are work that API does itself; translated to
    chat, the request would be answered without it. Plain and streamed, it is a 400 naming the field, and
    no upstream is called."""
    oa = client(gateway)
    for stream in (False, True):
        with pytest.raises(BadRequestError) as err:
            oa.responses.create(model="fake-model", input="what did I say before?", stream=stream,
                                **{field: value})  # type: ignore[call-overload]
        body = err.value.body
        assert body["param"] == field and body["code"] == "unsupported_parameter"  # type: ignore[index]
        assert says in body["message"] and "does not support" in body["message"]  # type: ignore[index]
    assert chat_requests(fake_provider) == []


def test_null_moderation_and_context_management_ask_for_nothing(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    """null is no moderation and no compaction: answered through the chat translation, and neither field
    reaches the chat upstream (where it would be an unknown parameter)."""
    oa = client(gateway)
    resp = oa.responses.create(model="fake-model", input="hello", moderation=None, context_management=None)
    assert resp.output_text == "hello"
    sent = chat_requests(fake_provider)[-1]
    assert "moderation" not in sent and "context_management" not in sent


def test_conversation_with_previous_response_id_is_a_400(gateway: GatewayThread) -> None:
    oa = client(gateway)
    first = oa.responses.create(model="fake-model", input="hello")
    with pytest.raises(BadRequestError) as err:
        oa.responses.create(model="fake-model", input="again", previous_response_id=first.id, conversation="conv_1")
    assert err.value.body["code"] == "mutually_exclusive_parameters"  # type: ignore[index]


LOGPROBS = "message.output_text.logprobs"


def test_included_logprobs_come_on_the_output_text_plain_and_streamed(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    """`include: ["message.output_text.logprobs"]` asks the chat upstream for logprobs (and `top_logprobs`
    alternatives); they come on the output_text part as the Responses API shapes them, and streamed on
    each `response.output_text.delta` and the `done` event too."""
    oa = client(gateway)
    resp = oa.responses.create(model="fake-model", input="one two three", include=[LOGPROBS], top_logprobs=2)
    sent = chat_requests(fake_provider)[-1]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    part = resp.output[0].content[0]  # type: ignore[union-attr]
    assert part.type == "output_text" and part.logprobs  # type: ignore[union-attr]
    lps = part.logprobs  # type: ignore[union-attr]
    assert "".join(lp.token for lp in lps) == resp.output_text == "one two three"
    for lp in lps:
        assert lp.logprob <= 0 and bytes(lp.bytes) == lp.token.encode()
        assert len(lp.top_logprobs) == 2 and lp.top_logprobs[0].token == lp.token

    with oa.responses.stream(model="fake-model", input="four five", include=[LOGPROBS]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and all("".join(lp.token for lp in e.logprobs) == e.delta for e in deltas)
    done = next(e for e in events if e.type == "response.output_text.done")
    assert [lp.token for lp in done.logprobs] == [lp.token for e in deltas for lp in e.logprobs]
    streamed = final.output[0].content[0].logprobs  # type: ignore[union-attr]
    assert [lp.token for lp in streamed] == [lp.token for lp in done.logprobs]  # type: ignore[union-attr]
    assert all(lp.top_logprobs == [] for lp in streamed)  # type: ignore[union-attr]  # top_logprobs 0

    # Not included: none asked for (top_logprobs alone only sizes the alternatives), none given.
    plain = oa.responses.create(model="fake-model", input="six", top_logprobs=3)
    assert "logprobs" not in chat_requests(fake_provider)[-1] and "top_logprobs" not in chat_requests(fake_provider)[-1]
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]


def test_included_logprobs_need_a_deployment_that_returns_them(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    """The router filters a policy's deployments on the capabilities a request needs: included logprobs
    need `logprobs`, and a policy with no such deployment is a 400 naming `include`."""
    import httpx

    deployments = [{"name": "plain", "model": "plain-model", "upstream_model": "fake-model",
                    "api_base": fake_provider.base_url, "capabilities": ["chat"]}]
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, deployments=deployments)
    with running_gateway(settings) as gw:
        put = httpx.put(gw.base_url + "/admin/api/policies/nolp",
                        content="name: nolp\nselector: {type: fixed, order: [plain]}\n",
                        headers={"content-type": "application/yaml"})
        assert put.status_code == 201, put.text
        assert client(gw).responses.create(model="nolp", input="fine").output_text == "fine"
        with pytest.raises(BadRequestError) as err:
            client(gw).responses.create(model="nolp", input="x", include=[LOGPROBS])
        assert err.value.body["param"] == "include"  # type: ignore[index]
    assert len(chat_requests(fake_provider)) == 1


def test_settings_that_chat_completions_share_reach_the_upstream(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    """`text.verbosity`, `reasoning.effort`, `service_tier`, `safety_identifier` and `prompt_cache_key` mean
    the same in chat completions and go there; `parallel_tool_calls` only with tools (chat refuses it
    without); the response repeats what was asked, `max_tool_calls` included."""
    oa = client(gateway)
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    resp = oa.responses.create(
        model="fake-model", input="hi", text={"verbosity": "low"}, reasoning={"effort": "low"},
        service_tier="flex", safety_identifier="user-hash-1", prompt_cache_key="k1", parallel_tool_calls=False,
        max_tool_calls=3,
    )
    sent = chat_requests(fake_provider)[-1]
    assert sent["verbosity"] == "low" and sent["reasoning_effort"] == "low" and sent["service_tier"] == "flex"
    assert sent["safety_identifier"] == "user-hash-1" and sent["prompt_cache_key"] == "k1"
    assert "parallel_tool_calls" not in sent and "max_tool_calls" not in sent and "text" not in sent
    assert resp.text.verbosity == "low" and resp.max_tool_calls == 3  # type: ignore[union-attr]
    assert resp.safety_identifier == "user-hash-1" and resp.prompt_cache_key == "k1"
    assert resp.service_tier == "default"  # the fake upstream names no tier: the one that served it
    oa.responses.create(model="fake-model", input="weather?", tools=tools, parallel_tool_calls=False)  # type: ignore[arg-type]
    assert chat_requests(fake_provider)[-1]["parallel_tool_calls"] is False
