"""Fault specs for the fake provider: what can go wrong, and how a test asks for it.

Faults are written as short spec strings so that one syntax works everywhere a test can reach:
the programmatic API (`FakeProvider.set_faults("503")`), the control endpoint
(`POST /_control/faults`), a request header (`x-fake-fault: 429:2`) and a magic string anywhere
in the request body (`[[fault:cut:3]]`). The magic string matters because a test that goes
through the gateway cannot set upstream headers, but it always controls the prompt.

Grammar: items separated by ``;`` (or ``,``), each ``name`` or ``name:arg``:

=====================  ==========================================================================
``500`` ``502`` ``503`` answer with that status and an OpenAI/Anthropic-shaped error body
``error:<status>``      any status, e.g. ``error:401``, ``error:404``, ``error:408``
``429[:<s>]``           rate limited, ``Retry-After: <s>`` (default 1) and ``retry-after-ms``
``latency:<ms>``        sleep before answering (before the response headers)
``chunk_latency:<ms>``  sleep before every stream chunk
``hang``                never answer (the handler waits until the client gives up or shutdown)
``stall:<n>``           stream: send n chunks, then go silent forever (idle-timeout tests)
``cut:<n>``             stream: send n chunks, then drop the connection (no ``[DONE]``);
                        non-stream: send the headers and half the body, then drop it
``nodone``              stream: end cleanly but without the terminal event (``[DONE]`` / message_stop)
``error_event:<n>``     stream: after n chunks send an error event (vLLM/Anthropic style), then end
``malformed``           200 with a body (or a stream chunk) that is not valid JSON
``content_filter``      400, code ``content_filter`` (OpenAI) / content-filtering message (Anthropic)
``context_length``      400 context-length error even for a short prompt
``tokens:<n>``          not a fault: make the reply exactly n deterministic words
=====================  ==========================================================================

Server-wide faults (a default for every request, or one per model) and "fail the next K
requests, then recover" live in `FaultState`, one per server instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

__all__ = ["Fault", "FaultSpecError", "FaultState", "parse_fault", "FAULT_NAMES", "MAGIC_RE"]

#: every item name the spec grammar accepts (numeric statuses are accepted as well)
FAULT_NAMES = (
    "error",
    "429",
    "latency",
    "chunk_latency",
    "hang",
    "stall",
    "cut",
    "nodone",
    "error_event",
    "malformed",
    "content_filter",
    "context_length",
    "tokens",
)

#: magic string in a request body: ``[[fault:<spec>]]``
MAGIC_RE = re.compile(rb"\[\[fault:([^\]]*)\]\]")


class FaultSpecError(ValueError):
    """A fault spec string that does not follow the grammar in this module's docstring."""


@dataclass(frozen=True, slots=True)
class Fault:
    """Everything that may be odd about one answer. The all-defaults instance means 'behave'."""

    latency_s: float = 0.0
    chunk_latency_s: float = 0.0
    status: int | None = None
    retry_after_s: float | None = None
    hang: bool = False
    stall_after: int | None = None
    cut_after: int | None = None
    no_done: bool = False
    error_event_after: int | None = None
    malformed: bool = False
    content_filter: bool = False
    context_length: bool = False
    reply_tokens: int | None = None

    def is_noop(self) -> bool:
        return self == _NOOP

    def merged(self, other: Fault | None) -> Fault:
        """`self` overlaid with every field `other` sets to a non-default value."""
        if other is None or other.is_noop():
            return self
        if self.is_noop():
            return other
        changes = {
            f.name: getattr(other, f.name)
            for f in fields(other)
            if getattr(other, f.name) != getattr(_NOOP, f.name)
        }
        return replace(self, **changes)


_NOOP = Fault()


def _num(name: str, arg: str | None, default: float | None = None) -> float:
    if arg is None or arg == "":
        if default is None:
            raise FaultSpecError(f"fault {name!r} needs an argument, e.g. {name}:3")
        return default
    try:
        value = float(arg)
    except ValueError as exc:
        raise FaultSpecError(f"fault {name!r}: {arg!r} is not a number") from exc
    if value < 0:
        raise FaultSpecError(f"fault {name!r}: negative argument {arg!r}")
    return value


def parse_fault(spec: str | Fault | None) -> Fault:
    """Parse a spec string (grammar in the module docstring) into a `Fault`. '' / None → no fault."""
    if spec is None:
        return _NOOP
    if isinstance(spec, Fault):
        return spec
    out: dict[str, object] = {}
    for raw_item in re.split(r"[;,]", spec):
        item = raw_item.strip()
        if not item:
            continue
        name, _, arg = item.partition(":")
        name = name.strip().lower()
        arg = arg.strip() or None
        if name == "429":
            out["status"] = 429
            out["retry_after_s"] = _num(name, arg, 1.0)
        elif name.isdigit():
            status = int(name)
            if not 400 <= status <= 599:
                raise FaultSpecError(f"fault status must be 4xx/5xx, got {status}")
            out["status"] = status
        elif name == "error":
            status = int(_num(name, arg))
            if not 400 <= status <= 599:
                raise FaultSpecError(f"fault status must be 4xx/5xx, got {status}")
            out["status"] = status
            if status == 429:
                out.setdefault("retry_after_s", 1.0)
        elif name == "latency":
            out["latency_s"] = _num(name, arg) / 1000.0
        elif name == "chunk_latency":
            out["chunk_latency_s"] = _num(name, arg) / 1000.0
        elif name == "hang":
            out["hang"] = True
        elif name == "stall":
            out["stall_after"] = int(_num(name, arg, 0))
        elif name == "cut":
            out["cut_after"] = int(_num(name, arg, 0))
        elif name == "nodone":
            out["no_done"] = True
        elif name == "error_event":
            out["error_event_after"] = int(_num(name, arg, 0))
        elif name == "malformed":
            out["malformed"] = True
        elif name in ("content_filter", "content_policy"):
            out["content_filter"] = True
        elif name in ("context_length", "context_window"):
            out["context_length"] = True
        elif name == "tokens":
            out["reply_tokens"] = int(_num(name, arg))
        else:
            raise FaultSpecError(
                f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)} or a 4xx/5xx status"
            )
    return Fault(**out)  # type: ignore[arg-type]


@dataclass(slots=True)
class FaultState:
    """Server-wide faults of one fake provider instance.

    `default` applies to every model request, `per_model[m]` to requests for model m (on top of
    `default`), and `fail_next_*` makes the next `fail_next_count` matching requests carry
    `fail_next_fault` and then stops — the shape of an outage that a circuit breaker should
    open on and later close after.
    """

    default: Fault = _NOOP
    per_model: dict[str, Fault] | None = None
    fail_next_count: int = 0
    fail_next_fault: Fault = _NOOP
    fail_next_model: str | None = None

    def any_active(self) -> bool:
        return not self.default.is_noop() or bool(self.per_model) or self.fail_next_count > 0

    def for_request(self, model: str | None) -> Fault:
        """The server-side fault for one request; consumes one unit of `fail_next` when it matches."""
        fault = self.default
        if self.per_model and model in self.per_model:
            fault = fault.merged(self.per_model[model])
        if self.fail_next_count > 0 and (self.fail_next_model is None or self.fail_next_model == model):
            self.fail_next_count -= 1
            fault = fault.merged(self.fail_next_fault)
        return fault

    def describe(self) -> dict[str, object]:
        """JSON-able view for `GET /_control/faults`."""
        return {
            "default": _describe(self.default),
            "models": {m: _describe(f) for m, f in (self.per_model or {}).items()},
            "fail_next": {
                "count": self.fail_next_count,
                "fault": _describe(self.fail_next_fault),
                "model": self.fail_next_model,
            },
        }


def _describe(fault: Fault) -> dict[str, object]:
    return {
        f.name: getattr(fault, f.name)
        for f in fields(fault)
        if getattr(fault, f.name) != getattr(_NOOP, f.name)
    }
