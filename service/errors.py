"""Why the request service refuses a request before any upstream is called.

The service knows nothing of HTTP: it raises `Refused` with a stable ``code``, and the HTTP layer
(`gateway.errors.from_refusal`) turns it into the status and body of the caller's API.
"""

from __future__ import annotations

from typing import Literal

RefusalCode = Literal["rate_limit_exceeded", "concurrency_limit_exceeded", "budget_exceeded", "no_candidates",
                      "output_too_long", "unsupported_request"]


class Refused(Exception):
    """A limit, a budget or the routing decision says no. ``retry_after_s``: when trying again may work."""

    def __init__(self, code: RefusalCode, message: str, retry_after_s: float | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.code: RefusalCode = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.param = param  # the request parameter at fault, when one is
