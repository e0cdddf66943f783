"""How an exception reads in a log line."""

from __future__ import annotations


def error_text(exc: BaseException, *, with_type: bool = False) -> str:
    """``str(exc)``, or the exception's type name where that is empty: a timeout (``TimeoutError()``,
    asyncpg's and asyncio's) says nothing itself, and "policy reload failed: " tells an operator nothing.
    ``with_type``: "Type: text" (just "Type" when the text is empty)."""
    text = str(exc)
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text
