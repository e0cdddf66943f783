"""An OpenAI-shaped upstream that echoes the Authorization header it was sent into its error answers, as
careless providers and proxies do: the way a provider key would leak into the gateway's errors and logs.

The request's ``model`` picks the answer (every one an error): ``echo-401``, ``echo-400``, ``echo-429``,
``echo-500`` (OpenAI-shaped error bodies whose message, code and param carry the header), ``echo-text500``
(a plain-text error page), ``echo-200err`` (an error object in a 200) and ``echo-stream`` (one chunk, then
an error event).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.harness import ServerThread

MODELS = ("echo-401", "echo-400", "echo-429", "echo-500", "echo-text500", "echo-200err", "echo-stream")


async def _answer(request: Request) -> Response:
    body = await request.json()
    auth = request.headers.get("authorization", "")
    model = body.get("model", "")
    message = f"Incorrect API key provided: {auth}."
    err = {"error": {"message": message, "type": "invalid_request_error", "code": auth, "param": auth}}
    status = {"echo-401": 401, "echo-400": 400, "echo-429": 429, "echo-500": 500}.get(model)
    if status is not None:
        return JSONResponse(err, status_code=status)
    if model == "echo-text500":
        return PlainTextResponse(f"proxy error: upstream refused {auth}", status_code=500)
    if model == "echo-200err":
        return JSONResponse({"error": {**err["error"], "code": 500}})
    if model == "echo-stream":
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                 "choices": [{"index": 0, "delta": {"content": "hi"}}]}

        async def events() -> AsyncIterator[bytes]:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            yield b"data: " + orjson.dumps({"error": {"message": message, "code": 500}}) + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse({"error": {"message": f"unknown model {model!r}"}}, status_code=404)


class KeyEchoUpstream(ServerThread):
    """The echoing upstream on 127.0.0.1:<random port>; ``base_url`` ends in ``/v1``."""

    def __init__(self) -> None:
        super().__init__(Starlette(routes=[Route("/v1/chat/completions", _answer, methods=["POST"])]))

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"
