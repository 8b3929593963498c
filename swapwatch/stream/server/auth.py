"""Bearer-token authentication, short-lived feed tickets, and an access log that never prints a secret.

* API clients and WHIP publishers send `Authorization: Bearer TOKEN`. The comparison is
  `hmac.compare_digest` on bytes, so its time does not depend on how much of a guess was right.
  Missing or wrong token: 401 with `WWW-Authenticate: Bearer realm="swapwatch"` (and
  `error="invalid_token"` when one was sent but wrong, RFC 6750 section 3).
* Browsers cannot put a header on an `EventSource` or a `WebSocket`, so the dashboard (which holds the
  token in sessionStorage and sends it as a header everywhere else) first asks `POST /api/ticket` for a
  ticket and opens the feed with `?ticket=...`. A ticket is `expiry.nonce.HMAC-SHA256(key, expiry.nonce)`
  with a key drawn at start-up: stateless to check, worthless after `ticket_ttl_s` (60 s) or a restart,
  accepted only on the two read-only feed endpoints, and it is not the token, so a URL that lands in a
  proxy log or browser history gives no API access. A cookie would avoid the extra request but would
  also ride along on cross-site requests (CSRF) to the endpoints that change things; tickets do not.
  The token itself is never accepted in a query string.
* aiohttp's default access log prints the request line, query string included. `RedactingAccessLogger`
  prints the path and masks the values of secret-looking query parameters (`ticket`, `token`, ...);
  headers (where the token travels) are never logged. The path is logged decoded, so it goes through
  `log_text`: a `%0A` in it is written as `\\n` and cannot start a forged log line.
* An `Authorization` header with bytes that are not UTF-8 is a wrong token (401), not a server error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from swapwatch.stream.redact import log_text
from swapwatch.stream.sources.config import MASK, SECRET_QUERY_KEYS

REALM = "swapwatch"
ACCESS_LOG_TARGET_LIMIT = 500
TICKET_PARAM = "ticket"
LOG_SECRET_KEYS: frozenset[str] = SECRET_QUERY_KEYS | {TICKET_PARAM, "bearer"}


class TokenAuth:
    """Checks bearer tokens and feed tickets. `token=None` means authentication is off (explicitly)."""

    def __init__(self, token: str | None, ticket_ttl_s: float = 60.0) -> None:
        if token is not None and not token:
            raise ValueError("token: empty; pass None to switch authentication off")
        self._token = token.encode() if token is not None else None
        self._key = secrets.token_bytes(32)
        self.ticket_ttl_s = ticket_ttl_s

    @property
    def enabled(self) -> bool:
        """False only when authentication was switched off."""
        return self._token is not None

    def check_header(self, header: str | None) -> bool | None:
        """True: a valid bearer token; False: a header with a wrong one; None: no bearer header at all."""
        if self._token is None:
            return True
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        try:
            sent = value.strip().encode()
        except UnicodeEncodeError:  # non-UTF-8 bytes (aiohttp decodes them to lone surrogates): not our token
            return False
        return hmac.compare_digest(sent, self._token)

    def issue_ticket(self, now: float | None = None) -> tuple[str, float]:
        """A new feed ticket and its expiry (Unix time)."""
        expires = (time.time() if now is None else now) + self.ticket_ttl_s
        body = f"{int(expires)}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._sign(body)}", float(int(expires))

    def check_ticket(self, ticket: str | None, now: float | None = None) -> bool:
        """True for a ticket this process issued that has not expired."""
        if self._token is None:
            return True
        if not ticket or ticket.count(".") != 2:
            return False
        body, _, sig = ticket.rpartition(".")
        if not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            return False
        try:
            expires = int(body.split(".", 1)[0])
        except ValueError:
            return False
        return (time.time() if now is None else now) <= expires

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def unauthorized(invalid: bool, message: str) -> web.Response:
    """401 with the Bearer challenge; `invalid` adds error="invalid_token" (a token was sent but is wrong)."""
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if invalid else "")
    return web.json_response({"error": message}, status=401, headers={"WWW-Authenticate": challenge})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(
    auth: TokenAuth,
    *,
    protected: Callable[[web.Request], bool],
    ticket_ok: Callable[[web.Request], bool],
    on_failure: Callable[[web.Request], None] | None = None,
) -> Middleware:
    """Middleware: requests for which `protected(request)` is true need the token (or, where
    `ticket_ok(request)`, a valid `?ticket=`). CORS preflights never reach it (the CORS middleware
    answers them first), since browsers send no credentials on a preflight."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not auth.enabled or not protected(request):
            return await handler(request)
        verdict = auth.check_header(request.headers.get("Authorization"))
        if verdict is None and ticket_ok(request) and TICKET_PARAM in request.query:
            if auth.check_ticket(request.query.get(TICKET_PARAM)):
                return await handler(request)
            if on_failure is not None:
                on_failure(request)
            return unauthorized(True, "feed ticket invalid or expired; get a new one from POST /api/ticket")
        if verdict:
            return await handler(request)
        if on_failure is not None:
            on_failure(request)
        if verdict is None:
            return unauthorized(False, "authentication required: send 'Authorization: Bearer TOKEN'")
        return unauthorized(True, "invalid token")

    return middleware


def redact_query(query_string: str) -> str:
    """A query string with the values of secret-looking parameters replaced by `***`."""
    if not query_string:
        return ""
    pairs = parse_qsl(query_string, keep_blank_values=True)
    if not any(k.lower() in LOG_SECRET_KEYS for k, _ in pairs):
        return query_string
    return urlencode([(k, MASK if k.lower() in LOG_SECRET_KEYS else v) for k, v in pairs], safe="*")


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path (secret query values masked), status, bytes, ms."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        query = redact_query(request.query_string)
        target = log_text(request.path + (f"?{query}" if query else ""), ACCESS_LOG_TARGET_LIMIT)
        self.logger.info(
            '%s "%s %s" %s %s %.1fms', request.remote, log_text(request.method, 16), target, response.status,
            response.body_length, time * 1e3,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
