"""Console sign-in: the admin token exchanged for a signed session cookie, plus CSRF tokens.

The cookie (HttpOnly, SameSite=Strict, path /admin) holds a random session id and an expiry,
signed with HMAC-SHA256 under a key derived from the admin token, so every gateway process accepts
it and changing the token ends every session. Without an admin token (loopback-only mode) the key
is random per process. Each session's CSRF token is HMAC(key, "csrf." + session id): state-changing
requests carry it in ``X-CSRF-Token`` (or a ``csrf_token`` form field on sign-out), and
cross-site requests (an ``Origin`` other than the gateway's, or ``Sec-Fetch-Site: cross-site``)
are refused outright. Gateway API keys never open the console: only the admin token signs in.

Signing out revokes the session server-side: its id is refused at once by this process and, through
the revocation store (`state.console_sessions`, in the log database), by every other one within its
sync interval, so a copy of the cookie stops working before its expiry. Wrong admin tokens are
throttled per client address (:class:`SignInThrottle`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "hg_console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Every admin answer (console pages and files, admin API JSON): never stored by a cache (a listing, a new
# key's one showing), never sniffed into another type, sending no Referer to another site ("same-origin":
# "no-referrer" makes a browser send `Origin: null` on the sign-in form, which `cross_site` refuses).
ADMIN_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff", "referrer-policy": "same-origin"}
# A console page, also: never framed (clickjacking), scripts and everything else from the gateway only, no
# <base> or form target elsewhere, no plugins.
PAGE_HEADERS = ADMIN_HEADERS | {
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
}


@dataclass(frozen=True)
class Session:
    sid: str
    expires: int
    csrf: str


class RevocationStore(Protocol):
    """Where signed-out sessions are recorded for every process (`state.console_sessions`)."""

    async def load(self) -> dict[str, datetime]: ...
    async def revoke(self, revoked: dict[str, datetime]) -> None: ...


class Sessions:
    """Issues and verifies session cookies, and refuses the sessions signed out of: those this process
    ended (kept until they expire) and those the store lists (every process's, as of the last sync)."""

    def __init__(self, admin_token: str | None, ttl_s: int = 12 * 3600, store: RevocationStore | None = None) -> None:
        seed = admin_token.encode() if admin_token else secrets.token_bytes(32)
        self._key = hmac.new(seed, b"hybridgate-console-session-v1", hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self._store = store
        self._ended_here: dict[str, int] = {}  # session id → expiry: signed out through this process
        self._unsaved: dict[str, int] = {}  # of those, the ones the store has not taken yet (database away)
        self._ended_elsewhere: frozenset[str] = frozenset()  # the store's list at the last sync

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _session(self, sid: str, expires: int) -> Session:
        return Session(sid, expires, self._sign(f"csrf.{sid}")[:40])

    def issue(self) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        sid, expires = secrets.token_urlsafe(18), int(time.time()) + self.ttl_s
        body = f"{sid}.{expires}"
        return f"{body}.{self._sign(body)}", self._session(sid, expires)

    def verify(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 2:
            return None
        sid, exp, sig = cookie.split(".")
        # bytes, not str: compare_digest refuses a str with non-ASCII characters (a forged cookie may hold any)
        if not hmac.compare_digest(sig.encode(), self._sign(f"{sid}.{exp}").encode()):
            return None
        try:
            expires = int(exp)
        except ValueError:
            return None
        if expires <= time.time() or sid in self._ended_here or sid in self._ended_elsewhere:
            return None
        return self._session(sid, expires)

    async def revoke(self, session: Session) -> None:
        """End ``session``: refused here from now on, and recorded for every other process. Raises the
        store's error when it does not answer; the record is then retried on every :meth:`sync`."""
        self._ended_here[session.sid] = session.expires
        self._unsaved[session.sid] = session.expires
        await self._save()

    async def _save(self) -> None:
        now = time.time()
        for sid in [sid for sid, exp in self._ended_here.items() if exp <= now]:
            del self._ended_here[sid]  # expired: its cookie is refused for that already
            self._unsaved.pop(sid, None)
        if self._store is None or not self._unsaved:
            return
        pending = dict(self._unsaved)
        await self._store.revoke({sid: datetime.fromtimestamp(exp, UTC) for sid, exp in pending.items()})
        for sid in pending:
            self._unsaved.pop(sid, None)

    async def sync(self) -> None:
        """Record the sign-outs the store missed, then take every process's (a periodic job)."""
        await self._save()
        if self._store is not None:
            self._ended_elsewhere = frozenset(await self._store.load())

    def of(self, request: Request) -> Session | None:
        return self.verify(request.cookies.get(COOKIE))


class SignInThrottle:
    """Wrong admin tokens per client address: after ``limit`` of them within ``window_s`` seconds, sign-in
    from that address is refused, right token or not, until the oldest of them is ``window_s`` old (so a
    correct token waits at most ``window_s``); a right token clears the address's count. Kept in this
    process, for at most ``max_addresses`` addresses (those with nothing recent go first, then the least
    recently failed), so a caller with many addresses cannot grow it without bound; with several gateway
    processes each counts its own."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: dict[str, list[float]] = {}  # address → its recent failure times, oldest first

    def _recent(self, address: str, now: float) -> list[float]:
        return [t for t in self._failures.get(address, ()) if t > now - self.window_s]

    def retry_after(self, address: str) -> int:
        """Whole seconds until ``address`` may try again (at least 1), or 0 when it may now."""
        now = self._clock()
        recent = self._recent(address, now)
        if len(recent) < self.limit:
            return 0
        return max(1, math.ceil(recent[-self.limit] + self.window_s - now))

    def failed(self, address: str) -> bool:
        """Count a wrong token from ``address``; True when this one reached the limit."""
        now = self._clock()
        recent = self._recent(address, now) + [now]
        self._failures.pop(address, None)
        self._failures[address] = recent  # re-inserted: the dict's order is the order of last failure
        if len(self._failures) > self.max_addresses:
            self._failures = {a: ts for a, ts in self._failures.items() if ts[-1] > now - self.window_s}
            while len(self._failures) > self.max_addresses:
                del self._failures[next(iter(self._failures))]
        return len(recent) == self.limit

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def __len__(self) -> int:
        """How many addresses it holds failures of."""
        return len(self._failures)


def sessions_of(request: Request) -> Sessions | None:
    return getattr(request.app.state, "console_sessions", None)


def cross_site(request: Request) -> bool:
    """Whether a browser says this request comes from another site."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != request.headers.get("host", "")


def csrf_ok(request: Request, session: Session, form_token: str | None = None) -> bool:
    given = request.headers.get("x-csrf-token") or form_token or ""
    return hmac.compare_digest(given.encode(), session.csrf.encode())


def session_for(request: Request) -> Session | None:
    """The request's valid console session, if any."""
    sessions = sessions_of(request)
    return sessions.of(request) if sessions is not None else None
