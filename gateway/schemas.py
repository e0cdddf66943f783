"""Request bodies of the OpenAI endpoints, validated at the edge.

The models follow OpenAI's published shapes: required fields and ranges are enforced (so a bad
request fails here with a 400 naming the parameter, before any routing or upstream call), while
unknown fields are kept and forwarded, so provider-specific extensions still pass through.
These models also generate the OpenAPI document served at /openapi.json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.types import RequestFeatures


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


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
    include_usage: bool | None = None


Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _SamplingParams(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    user: Annotated[str, Field(max_length=512)] | None = None
    metadata: dict[str, str] | None = None


class ChatCompletionRequest(_SamplingParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _logprob_rules(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        if self.tool_choice not in (None, "none") and not self.tools and self.tool_choice != "auto":
            raise ValueError("tool_choice is set but no tools were given")
        return self

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingParams):
    prompt: str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    best_of: Annotated[int, Field(ge=1, le=20)] | None = None
    suffix: str | None = None

    @property
    def output_limit(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=2048)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1)]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _no_empty_strings(cls, v: Any) -> Any:
        if isinstance(v, list) and any(isinstance(s, str) and not s for s in v):
            raise ValueError("input strings must not be empty")
        return v


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    score: Annotated[float, Field(ge=0, le=1)] | None = None
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
        return "\n".join(x for x in p if isinstance(x, str))
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
        p = req.prompt
        chars = len(p) if isinstance(p, str) else sum(len(x) if isinstance(x, str) else 4 for x in p)
    else:
        i = req.input
        chars = len(i) if isinstance(i, str) else sum(len(x) if isinstance(x, str) else 4 for x in i)
    return chars // 4 + 1


def needed_capabilities(req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> frozenset[str]:
    """What a deployment must support to serve this request (the router filters on it)."""
    caps: set[str] = set()
    if isinstance(req, ChatCompletionRequest):
        if req.tools:
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
        user=getattr(req, "user", None) or getattr(key, "user", None),
        team=getattr(key, "team", None),
        prompt_text=prompt_text(req) if not isinstance(req, EmbeddingRequest) else "",
        endpoint=endpoint,
    )
