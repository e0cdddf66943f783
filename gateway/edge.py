"""The edge of every request: body size, JSON, schema, and the caller's identity.

Everything here fails fast with an OpenAI error before any routing or upstream work.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway.errors import APIError, bad_request, expired_api_key, invalid_api_key, store_unavailable
from gateway.keys import ApiKey, KeyExpired, KeyStore
from requestlog.sql import DB_ERRORS

M = TypeVar("M", bound=BaseModel)

# Deepest nesting of objects and arrays a body may have. orjson reads 1,024 levels but writes only 255, and a
# body is written again (the request log, upstream calls, translated into another API's shape, which nests
# it a few levels further), so the limit sits well below what the writer takes.
MAX_JSON_DEPTH = 128


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing (413) as soon as it is known to exceed ``max_bytes``: by its declared
    Content-Length, or while reading a chunked upload — never after buffering all of it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise _too_large(max_bytes)
        except ValueError:
            raise bad_request("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object, or a 413 / 400 in OpenAI's shape. ``allow_empty``: an empty body
    (however it was framed: a Content-Length of 0, or a chunked upload with no bytes) reads as ``{}``,
    for endpoints whose every field is optional."""
    raw = await read_body(request, max_bytes)
    if not raw.strip() and allow_empty:
        return {}
    if not raw:
        raise bad_request("We could not parse the JSON body of your request: the body is empty.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"We could not parse the JSON body of your request. ({exc})") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    # only a body with that many brackets can nest that deep (a C-level count keeps the walk off small bodies)
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _nested_deeper(data, MAX_JSON_DEPTH):
        raise bad_request(
            f"The JSON body of your request is nested too deeply: at most {MAX_JSON_DEPTH} levels of objects "
            "and arrays are accepted."
        )
    return data


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels deep (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"Request body too large: the limit is {max_bytes} bytes.", code="request_too_large")


def validate(model: type[M], data: dict[str, Any]) -> M:
    """Schema check; the first error names its parameter like OpenAI does ('messages[0].role')."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # In a union (e.g. `input`: a string or a list), the first error is often "not a string";
        # the one that says what is wrong with the value given is the one that is not a type mismatch.
        err = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
        param = _param_path(err["loc"])
        msg = err["msg"]
        expected = _union_expected(errors)
        if expected is not None:
            raise bad_request(f"Invalid type for '{param}': expected {expected}.", param=param or None,
                              code="invalid_type") from None
        if err["type"] == "missing":
            msg = f"Missing required parameter: '{param}'."
            code = "missing_required_parameter"
        else:
            msg = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
            code = "invalid_value"
        raise bad_request(msg, param=param or None, code=code) from None


def _union_expected(errors: list[Any]) -> str | None:
    """"a string or an array of integers" when every error is a type mismatch in the branches of one
    union (the value is none of the union's types), else None."""
    if not all(e["type"].endswith("_type") for e in errors):
        return None
    loc = errors[0]["loc"]
    at = next((i for i, part in enumerate(loc) if isinstance(part, str) and _is_branch(part)), None)
    if at is None:
        return None
    labels: list[str] = []
    for e in errors:
        if tuple(e["loc"][:at]) != tuple(loc[:at]) or len(e["loc"]) <= at or not isinstance(e["loc"][at], str):
            return None
        if e["loc"][at] not in labels:
            labels.append(e["loc"][at])
    if len(labels) < 2:
        return None
    words = [_type_words(label, plural=False) for label in labels]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _type_words(label: str, plural: bool) -> str:
    """A pydantic branch label ('str', 'list[constrained-int]', 'list[list[str]]') in words."""
    if label.startswith("list[") and label.endswith("]"):
        inner = _type_words(label[5:-1], plural=True)
        return f"arrays of {inner}" if plural else f"an array of {inner}"
    base = label.removeprefix("constrained-")
    noun = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(base, "object")
    if plural:
        return noun + "s"
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _is_branch(part: str) -> bool:
    return part.startswith(("function-after", "function-before", "constrained-")) or "[" in part \
        or part in {"str", "list", "int", "float", "bool", "dict", "union"}


def _param_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _is_branch(part):
            continue  # pydantic's union/validator branch labels are not parameters
        else:
            out += ("." if out else "") + part
    return out


# Peers on this machine: loopback addresses, and the peer name Starlette's test client gives.
LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1", "localhost", "testclient"})


def loopback_peer(request: Request) -> bool:
    """Whether the request's peer (the TCP connection's other end) is on this machine."""
    peer = request.client.host if request.client else ""
    return peer in LOOPBACK_PEERS or peer.startswith("127.")


def loopback_name(host: str) -> bool:
    """Whether ``host`` (a Host header's name, without port or brackets) names this machine's loopback
    interface: localhost, a name under .localhost (RFC 6761: never resolved elsewhere), 127.x or ::1."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(request: Request) -> str | None:
    """The name the client addressed the gateway by (the Host header, lowercased, without the port and
    the brackets of an IPv6 address); "" without a Host header, None for one that is no host[:port]."""
    try:
        return urlsplit("//" + request.headers.get("host", "")).hostname or ""
    except ValueError:
        return None


def host_allowed(request: Request, allowed: Collection[str]) -> bool:
    """Whether a request that no key vouches for may be served under the name it used. A web page on any
    site can have its DNS name rebound to 127.0.0.1: the browser then sends its requests to the gateway
    from a loopback peer, as the page's own origin (no cross-site check stops it, and it reads the
    answers), but with the page's name in ``Host``. So a loopback peer must address the gateway by a
    loopback name or one the operator allows (``allowed``: lowercased names; "*" allows any). A request
    without a Host header (HTTP/1.0) comes from no browser, and peers on other machines never reach a
    loopback-bound gateway through a rebound name."""
    if "*" in allowed or not loopback_peer(request):
        return True
    name = host_name(request)
    return name is not None and (name == "" or loopback_name(name) or name in allowed)


def host_not_allowed(request: Request, what: str = "Requests without a gateway API key",
                     credential: str = "a gateway API key") -> APIError:
    """The 403 for a request `host_allowed` refuses: what was wrong, and the two ways to be served."""
    name = host_name(request)
    named = f"the host name {name!r}" if name else "no usable host name"
    return APIError(
        403,
        f"{what} from this machine must address the gateway as localhost, 127.0.0.1 or [::1], not by "
        f"{named} (as a web page whose DNS name was rebound to this machine would). If that name is "
        f"yours, add it to allowed_hosts in the gateway's config, or send {credential}.",
        type="permission_error",
        code="host_not_allowed",
    )


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def bearer_is(request: Request, token: str | None) -> bool:
    """Whether the request's Bearer token is ``token`` (a configured secret: the admin or metrics token),
    compared in constant time; False when none is configured."""
    given = bearer(request)
    # bytes, not str: compare_digest refuses a str with non-ASCII characters (a header may hold any)
    return bool(token and given and hmac.compare_digest(given.encode(), token.encode()))


async def authenticate(request: Request, keys: KeyStore, required: bool) -> ApiKey | None:
    """The caller's key, None for an anonymous caller on a keyless loopback gateway, or 401 (an expired
    key: 401 ``expired_api_key``, refused where and as a revoked one is). A key that is not cached while
    the database is away (down, or hung past the engine's timeouts) is 503 ``store_unavailable`` with
    Retry-After: the key may be valid, so neither a 401 nor a 500."""
    # Anthropic's SDK sends its key as `x-api-key`; both are accepted everywhere.
    token = bearer(request) or (request.headers.get("x-api-key") or "").strip() or None
    if token is None:
        if required:
            raise APIError(
                401,
                "You didn't provide an API key. Send it in the Authorization header (Bearer <key>).",
                code="missing_api_key",
            )
        return None
    try:
        rec = await keys.authenticate(token)
    except KeyExpired as exc:
        if required:
            raise expired_api_key(exc.expires_at) from None
        rec = None
    except DB_ERRORS as exc:
        raise store_unavailable("API key store", exc) from None
    if rec is None and required:
        raise invalid_api_key()
    return rec
