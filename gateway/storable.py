"""Text the log database can hold: PostgreSQL's text and JSONB types refuse U+0000 (NUL).

A string with a NUL that reaches a write or a lookup (a key's name, a budget scope, a request-log
filter, a key id in the URL) fails inside the database driver, which the caller would see as a 500, or
as a 503 that invites a retry that can never succeed. Admin and feedback inputs are checked here
first instead, and the caller gets a 400 that names the field. SQLite would store the NUL, so the
check runs whatever the database, and both behave alike.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from starlette.requests import Request

from gateway.edge import read_json
from gateway.errors import APIError

NUL = "\x00"


def control_character(text: str) -> str | None:
    """The first control character (Unicode category Cc: C0, DEL, C1; a newline, a tab, NUL) in ``text``."""
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def nul_path(value: Any) -> str | None:
    """Where in ``value`` (JSON data) the first string, object key or string value, holding a NUL
    is: a parameter path such as ``metadata.team`` or ``allowed_models[1]`` ("" for ``value``
    itself, the enclosing object's path for a key), or None when there is none."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                return path
        elif isinstance(item, dict):
            if any(isinstance(k, str) and NUL in k for k in item):
                return path
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def nul_error(param: str | None) -> APIError:
    where = f"'{param}'" if param else "the request body"
    return APIError(400, f"Invalid value for {where}: text may not contain NUL (U+0000) characters.",
                    param=param or None, code="invalid_value")


def refuse_nul(value: Any) -> None:
    """400 naming the field when ``value`` (a parsed JSON body) holds a NUL anywhere."""
    path = nul_path(value)
    if path is not None:
        raise nul_error(path)


def refuse_control_in_url(request: Request) -> None:
    """400 for a NUL in a query parameter (``?user=``), and for any control character in a path
    parameter (``/keys/{key_id}``): no key id, policy name or scope holds one. A path that ends in a
    newline is refused too: Starlette's route patterns end in ``$``, which also matches before a final
    newline, so ``/keys/abc%0A`` would otherwise reach the handler as key ``abc``."""
    if request.scope["path"].endswith("\n"):
        name = next(iter(request.path_params), None)
        raise APIError(400, f"Invalid value for '{name or 'path'}': a path may not end in a newline.",
                       param=name, code="invalid_value")
    for name, value in request.path_params.items():
        if isinstance(value, str) and control_character(value) is not None:
            raise APIError(400, f"Invalid value for '{name}': it may not contain control characters.",
                           param=name, code="invalid_value")
    for name, value in request.query_params.multi_items():
        if NUL in name or NUL in value:
            raise nul_error(name.replace(NUL, "\\u0000"))


async def read_storable_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """`gateway.edge.read_json`, refusing (400, naming the field) any string that holds a NUL."""
    data = await read_json(request, max_bytes)
    refuse_nul(data)
    return data
