"""Request bodies of the OpenAI endpoints, validated at the edge.

The models follow OpenAI's published shapes: required fields and ranges are enforced (so a bad
request fails here with a 400 naming the parameter, before any routing or upstream call), while
unknown fields are kept and forwarded, so provider-specific extensions still pass through.
These models also generate the OpenAPI document served at /openapi.json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from common.types import RequestFeatures


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# Numbers and flags are strict (the string "5" is not an integer, "yes" and 1 are not booleans), as in
# OpenAI's API: the body forwarded upstream is the one sent, not the validated model, so a value coerced here
# would pass this check and then reach the upstream as sent (a stream opened for "stream": "yes").
# Bounds as OpenAI's API enforces them (its published spec or its error messages), so an absurd value
# is refused here with a 400 naming the parameter instead of reaching (and hurting) an upstream.
MAX_ARRAY_ITEMS = 2048  # messages, prompts, embedding inputs, Responses input items
MAX_TOKEN_IDS = 16_384  # one token-id prompt or embedding input
MAX_OUTPUT_TOKENS = 1_048_576  # no model answers more; a larger value is a mistake, not a request
MAX_TOOLS = 128
MAX_LOGIT_BIAS = 300
MAX_EMBEDDING_DIMENSIONS = 8192  # larger than any embedding model's output
INT64 = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]


# What is wrong with a `tool_choice`, worded as OpenAI words it after "Invalid value for 'tool_choice': ".
TOOL_CHOICE_WITHOUT_TOOLS = "'tool_choice' is only allowed when 'tools' are specified"


def unknown_tool(name: str) -> str:
    """What is wrong with a `tool_choice` that names a tool the request does not give."""
    return f"tool '{name}' not found in 'tools'"


def _tool_choice_error(message: str) -> PydanticCustomError:
    """An error `edge.validate` reports as "Invalid value for 'tool_choice': <message>." (a custom error
    type, so pydantic adds no "Value error, " prefix and the message is taken literally)."""
    return PydanticCustomError("invalid_tool_choice", "{message}", {"message": message})


def check_tool_choice(choice: Any, names: list[str] | None, *, auto_needs_tools: bool) -> Any:
    """``choice`` when it can be served with the request's tools (``names``; None or empty: no tools),
    else the error saying what is wrong: a choice other than "none" without tools ("auto" is allowed
    without tools only where ``auto_needs_tools`` is false), or a function choice naming no tool of the
    request. A choice that reached an upstream unchecked would be refused there, or silently ignored."""
    if choice is None or choice == "none" or (choice == "auto" and not auto_needs_tools):
        return choice
    if not names:
        raise _tool_choice_error(TOOL_CHOICE_WITHOUT_TOOLS)
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")  # chat's shape; the Responses API puts the name beside the type
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if not isinstance(name, str):
            raise _tool_choice_error("a function choice names one of the tools")
        if name not in names:
            raise _tool_choice_error(unknown_tool(name))
    return choice


class ContentPart(_Open):
    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    image_url: dict[str, Any] | None = None


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> ChatMessage:
        if self.content is None and self.role in {"system", "developer", "user", "tool"}:
            raise ValueError(f"messages with role '{self.role}' must have content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("messages with role 'tool' must have tool_call_id")
        return self


class FunctionDef(_Open):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDef


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _SamplingParams(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=128)] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop = None
    max_tokens: Annotated[int, Field(strict=True, ge=1, le=MAX_OUTPUT_TOKENS)] | None = None
    presence_penalty: Annotated[float, Field(strict=True, ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(strict=True, ge=-2, le=2)] | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(strict=True, ge=-100, le=100)]],
                          Field(max_length=MAX_LOGIT_BIAS)] | None = None
    seed: INT64 | None = None
    user: Annotated[str, Field(max_length=512)] | None = None
    metadata: Metadata | None = None


class ChatCompletionRequest(_SamplingParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_ARRAY_ITEMS)]
    max_completion_tokens: Annotated[int, Field(strict=True, ge=1, le=MAX_OUTPUT_TOKENS)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, v: Any, info: ValidationInfo) -> Any:
        if "tools" not in info.data:  # the tools were invalid: that is the error reported
            return v
        tools: list[Tool] | None = info.data["tools"]
        return check_tool_choice(v, [t.function.name for t in tools or ()], auto_needs_tools=True)

    @model_validator(mode="after")
    def _logprob_rules(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        return self

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingParams):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_ARRAY_ITEMS)]
        | Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(min_length=1, max_length=MAX_TOKEN_IDS)]
        | Annotated[list[Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(min_length=1, max_length=MAX_TOKEN_IDS)]],
                    Field(min_length=1, max_length=MAX_ARRAY_ITEMS)]
    )
    # 0 only with echo: the prompt is scored (its logprobs echoed), nothing is generated, as OpenAI allows
    max_tokens: Annotated[int, Field(strict=True, ge=0, le=MAX_OUTPUT_TOKENS)] | None = None
    logprobs: Annotated[int, Field(strict=True, ge=0, le=5)] | None = None
    echo: StrictBool | None = None
    best_of: Annotated[int, Field(strict=True, ge=1, le=20)] | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _nothing_to_generate_needs_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError("greater_than_equal", "0 is accepted only with echo=true (to score the "
                                         "prompt); otherwise it must be at least 1"),
                loc=("max_tokens",), input=self.max_tokens)])
        return self

    @property
    def output_limit(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=2048)]
        | Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(min_length=1, max_length=MAX_TOKEN_IDS)]
        | Annotated[list[Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(min_length=1, max_length=MAX_TOKEN_IDS)]],
                    Field(min_length=1, max_length=MAX_ARRAY_ITEMS)]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(strict=True, ge=1, le=MAX_EMBEDDING_DIMENSIONS)] | None = None
    user: Annotated[str, Field(max_length=512)] | None = None

    @field_validator("input")
    @classmethod
    def _no_empty_strings(cls, v: Any) -> Any:
        if isinstance(v, list) and any(isinstance(s, str) and not s for s in v):
            raise ValueError("input strings must not be empty")
        return v


class ResponsesTextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(max_length=64)] | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponsesText(_Open):
    format: ResponsesTextFormat | None = None


class ResponsesTool(_Open):
    type: str
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    parameters: dict[str, Any] | None = None


class ResponsesRequest(_Open):
    """`POST /v1/responses`: the bounds are checked here, under the Responses parameter names, before
    the request is translated into a chat completion (gateway/wire/responses.py)."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_ARRAY_ITEMS)] | None = None
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(strict=True, ge=16, le=MAX_OUTPUT_TOKENS)] | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=20)] | None = None
    tools: Annotated[list[ResponsesTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: ResponsesText | None = None
    stream: StrictBool | None = None
    store: StrictBool | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    metadata: Metadata | None = None
    user: Annotated[str, Field(max_length=512)] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    max_tool_calls: Annotated[int, Field(strict=True, ge=1)] | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, v: Any, info: ValidationInfo) -> Any:
        """As for chat, except that "auto" needs no tools: it is what a response shows when the request
        gave no tool_choice, so clients send it back with or without tools."""
        if "tools" not in info.data:
            return v
        tools: list[ResponsesTool] | None = info.data["tools"]
        if any(t.type != "function" for t in tools or ()):
            return v  # the translation refuses the tool itself, naming it
        names = [t.name for t in tools or () if t.name is not None]
        return check_tool_choice(v, names, auto_needs_tools=False)


class MessagesRequest(_Open):
    """Anthropic's `POST /v1/messages`, bounded as Anthropic bounds it, before translation
    (gateway/wire/anthropic.py)."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(strict=True, ge=1, le=MAX_OUTPUT_TOKENS)]
    messages: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=100_000)]
    system: str | list[dict[str, Any]] | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(strict=True, ge=0)] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=8191)] | None = None
    stream: StrictBool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    score: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    thumbs: Literal["up", "down"] | None = None
    source: Annotated[str, Field(min_length=1, max_length=64)] = "user"
    comment: Annotated[str, Field(max_length=4000)] | None = None

    @model_validator(mode="after")
    def _one_signal(self) -> FeedbackRequest:
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("give exactly one of score or thumbs")
        return self

    @property
    def value(self) -> float:
        if self.score is not None:
            return self.score
        return 1.0 if self.thumbs == "up" else 0.0


def prompt_text(req: ChatCompletionRequest | CompletionRequest) -> str:
    """The text the router featurises: the last user message (chat) or the prompt (completion)."""
    if isinstance(req, CompletionRequest):
        p = req.prompt
        if isinstance(p, str):
            return p
        return "\n".join(x for x in p if isinstance(x, str))  # token ids carry no text to featurise
    for m in reversed(req.messages):
        if m.role == "user":
            return _content_text(m.content)
    return _content_text(req.messages[-1].content)


def _content_text(content: str | list[ContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text or "" for p in content if p.type == "text")


def estimate_prompt_tokens(req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> int:
    """Cheap token estimate (≈4 chars per token) for context-window and budget checks before the call."""
    if isinstance(req, ChatCompletionRequest):
        chars = sum(len(_content_text(m.content)) + 8 for m in req.messages)
        if req.tools:
            chars += sum(len(str(t.function.parameters or "")) + len(t.function.name) for t in req.tools)
    elif isinstance(req, CompletionRequest):
        chars = _input_chars(req.prompt)
    else:
        chars = _input_chars(req.input)
    return chars // 4 + 1


def _input_chars(value: str | list[str] | list[int] | list[list[int]]) -> int:
    """Characters of a prompt or embedding input, a token id counted as 4."""
    if isinstance(value, str):
        return len(value)
    return sum(len(x) if isinstance(x, str) else 4 * len(x) if isinstance(x, list) else 4 for x in value)


def needed_capabilities(req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> frozenset[str]:
    """What a deployment must support to serve this request (the router filters on it). Tools with
    ``tool_choice: "none"`` are declined: the answer is text, which any chat deployment gives (the local
    model answers it, ignoring the tools)."""
    caps: set[str] = set()
    if isinstance(req, ChatCompletionRequest):
        if req.tools and req.tool_choice != "none":
            caps.add("tools")
        if req.response_format is not None and req.response_format.type != "text":
            caps.add("json_mode")
        if req.logprobs:
            caps.add("logprobs")
        for m in req.messages:
            if isinstance(m.content, list) and any(p.type == "image_url" for p in m.content):
                caps.add("vision")
                break
    return frozenset(caps)


def request_features(
    req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest, endpoint: str, key: Any,
    tags_header: str | None = None,
) -> RequestFeatures:
    """The plain values the router decides on (no I/O, cheap)."""
    tags = frozenset(t.strip() for t in tags_header.split(",") if t.strip()) if tags_header else frozenset()
    meta = getattr(req, "metadata", None) or {}
    return RequestFeatures(
        prompt_tokens=estimate_prompt_tokens(req),
        max_tokens=getattr(req, "output_limit", None),
        capabilities=needed_capabilities(req),
        tags=tags,
        metadata=meta,
        key_id=getattr(key, "id", None),
        # a key's bound user wins (policies and budgets see it); the body's `user` only adds a budget
        user=getattr(key, "user", None) or getattr(req, "user", None),
        team=getattr(key, "team", None),
        prompt_text=prompt_text(req) if not isinstance(req, EmbeddingRequest) else "",
        endpoint=endpoint,
        choices=output_choices(req),
        end_user=getattr(req, "user", None),
        output_param="max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens",
        prompt_param="prompt" if isinstance(req, CompletionRequest) else "input" if isinstance(req, EmbeddingRequest)
        else "messages",
    )


def output_choices(req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> int:
    """How many completions one call generates, each up to the output limit (budget worst case)."""
    if isinstance(req, EmbeddingRequest):
        return 1
    n = max(req.n or 1, getattr(req, "best_of", None) or 1)
    if isinstance(req, CompletionRequest) and isinstance(req.prompt, list) and req.prompt \
            and isinstance(req.prompt[0], str | list):
        n *= len(req.prompt)  # one set of choices per prompt (text or token ids)
    return n
