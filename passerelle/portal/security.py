"""Sessions, CSRF and HTTP security headers.

Sessions are a signed cookie (itsdangerous), not a server-side table: the schema has none,
and the portal must run as several workers. The cookie holds the user id, a CSRF token,
when the session began and a fingerprint of the user's password hash; it is re-signed on
every response, so `session_idle_minutes` without a request ends it, and `session_hours`
ends it whatever happens. Changing the password changes the fingerprint and so ends every
other session of that user; disabling the user ends them at the next request.

Every POST carries the session's CSRF token in a hidden field (compared in constant time);
SameSite on the cookie is the second fence.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

COOKIE = "passerelle_session"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Password links carry their token in the path: never let it leave in a Referer.
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def password_fingerprint(password_hash: str | None) -> str:
    """A short digest of the stored hash: sessions made before a password change die."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:16]


class Session:
    """The session of one request: mutate through `login` / `logout` only."""

    def __init__(self, data: dict[str, Any] | None = None, *, expired: bool = False) -> None:
        data = data or {}
        self.user_id: int | None = data.get("u")
        self.csrf: str = data.get("c") or secrets.token_urlsafe(24)
        self.started: float = data.get("i") or time.time()
        self.fingerprint: str | None = data.get("f")
        self.expired = expired  # a session cookie came in but had timed out
        self.cleared = False

    def login(self, user_id: int, fingerprint: str) -> None:
        """A new session (new CSRF token too): nothing from before the log-in survives."""
        self.user_id, self.fingerprint = user_id, fingerprint
        self.csrf, self.started = secrets.token_urlsafe(24), time.time()

    def logout(self) -> None:
        self.user_id = self.fingerprint = None
        self.csrf, self.started, self.cleared = secrets.token_urlsafe(24), time.time(), True

    def dump(self) -> dict[str, Any]:
        return {"u": self.user_id, "c": self.csrf, "i": self.started, "f": self.fingerprint}

    def check_csrf(self, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token, self.csrf)


class SessionCodec:
    """Signs and checks session cookies."""

    def __init__(self, secret: bytes, idle_s: int, lifetime_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="passerelle-portal-session")
        self.idle_s, self.lifetime_s = idle_s, lifetime_s

    def load(self, cookie: str | None) -> Session:
        if not cookie:
            return Session()
        try:
            data = self._serializer.loads(cookie, max_age=self.idle_s)
        except SignatureExpired:
            return Session(expired=True)
        except BadSignature:
            return Session()
        if not isinstance(data, dict):
            return Session()
        started = data.get("i")
        if not isinstance(started, (int, float)) or time.time() - started > self.lifetime_s:
            return Session(expired=data.get("u") is not None)
        return Session(data)

    def dump(self, session: Session) -> str:
        return self._serializer.dumps(session.dump())


class PortalMiddleware:
    """Loads the session into `scope["session"]`, re-signs it on the way out (sliding idle
    timeout), adds the security headers and a Server-Timing header to every response."""

    def __init__(self, app: ASGIApp, codec: SessionCodec, *, secure: bool,
                 same_site: str) -> None:
        self.app, self.codec = app, codec
        self.attributes = f"; Path=/; HttpOnly; SameSite={same_site.capitalize()}"
        if secure:
            self.attributes += "; Secure"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = SimpleCookie()
        for name, value in scope["headers"]:
            if name == b"cookie":
                with contextlib.suppress(CookieError):  # a garbled cookie is no cookie
                    cookies.load(value.decode("latin-1"))
        began = time.perf_counter()
        morsel = cookies.get(COOKIE)
        session = self.codec.load(morsel.value if morsel else None)
        scope["session"] = session

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _value in headers}
                headers.extend(h for h in HEADERS if h[0] not in present)
                # Time to the first byte, for the benchmark and browsers' developer tools.
                duration = (time.perf_counter() - began) * 1000
                headers.append((b"server-timing", f"app;dur={duration:.1f}".encode()))
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                cookie = f"{COOKIE}={self.codec.dump(session)}{self.attributes}"
                if session.user_id is not None:
                    cookie += f"; Max-Age={self.codec.lifetime_s}"
                headers.append((b"set-cookie", cookie.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)
