"""The OpenAPI 3.1 document of the public API, generated from the same pydantic models that
validate requests (so the document cannot drift from what the gateway accepts)."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
    MessagesRequest,
    ResponsesRequest,
)

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _op(schema_name: str | None, summary: str, stream: bool = False) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if stream:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "OK", "content": ok},
            **{
                code: {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                for code, desc in [("400", "Bad request"), ("401", "Bad key"), ("403", "Not allowed"),
                                   ("404", "Unknown model"), ("413", "Body too large"), ("429", "Rate limited"),
                                   ("502", "Upstream error"), ("504", "Upstream timeout")]
            },
        },
    }
    if schema_name:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
        }
    return op


def openapi_document() -> dict[str, Any]:
    models = [(m, "validation") for m in (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, FeedbackRequest,
                                          ResponsesRequest, MessagesRequest)]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = dict(top.get("$defs", {}))
    schemas["Error"] = _ERROR
    return {
        "openapi": "3.1.0",
        "info": {"title": "hybridgate", "version": "0.1.0",
                 "description": "OpenAI-compatible gateway routing among providers and a local hybrid model."},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/chat/completions": {"post": _op("ChatCompletionRequest", "Chat completion", stream=True)},
            "/v1/completions": {"post": _op("CompletionRequest", "Text completion", stream=True)},
            "/v1/embeddings": {"post": _op("EmbeddingRequest", "Embeddings")},
            "/v1/feedback": {"post": _op("FeedbackRequest", "Feedback on a logged request")},
            "/v1/models": {"get": _op(None, "List models")},
            "/v1/responses": {"post": _op("ResponsesRequest", "Create a model response (Responses API)", stream=True)},
            "/v1/messages": {"post": _op("MessagesRequest", "Create a message (Anthropic Messages API)", stream=True)},
        },
    }
