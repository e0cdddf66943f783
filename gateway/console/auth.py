"""Console sign-in: the admin token exchanged for a signed session cookie, plus CSRF tokens.

The cookie (HttpOnly, SameSite=Strict, path /admin) holds a random session id and an expiry,
signed with HMAC-SHA256 under a key derived from the admin token, so every gateway process accepts
it and changing the token ends every session. Without an admin token (loopback-only mode) the key
is random per process. Each session's CSRF token is HMAC(key, "csrf." + session id): state-changing
requests carry it in ``X-CSRF-Token`` (or a ``csrf_token`` form field on sign-out), and
cross-site requests (an ``Origin`` other than the gateway's, or ``Sec-Fetch-Site: cross-site``)
are refused outright. Gateway API keys never open the console: only the admin token signs in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
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


class Sessions:
    def __init__(self, admin_token: str | None, ttl_s: int = 12 * 3600) -> None:
        seed = admin_token.encode() if admin_token else secrets.token_bytes(32)
        self._key = hmac.new(seed, b"hybridgate-console-session-v1", hashlib.sha256).digest()
        self.ttl_s = ttl_s

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
        return self._session(sid, expires) if expires > time.time() else None

    def of(self, request: Request) -> Session | None:
        return self.verify(request.cookies.get(COOKIE))


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
