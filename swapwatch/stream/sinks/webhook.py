"""Events POSTed as JSON to an HTTP endpoint, with retries, and never on the pipeline's time.

`publish` only puts the event on this sink's bounded queue (oldest dropped and counted when full) and
returns; one worker task sends them in order with aiohttp. A failed delivery (connection error, timeout,
HTTP 408/429/5xx) is retried with exponential backoff and full jitter: the k-th retry waits a uniform
random time in [0, min(backoff_max_s, backoff_s * 2**k)], or the server's `Retry-After` if that is
longer (capped at backoff_max_s). Other 4xx answers are permanent (bad URL, bad token): no retry.

Trade-offs: one worker keeps events in order and puts at most one request in flight, so a hung
receiver holds the queue for up to `timeout_s` x `max_attempts` plus backoff per event; the queue
then fills and the oldest events are dropped (counted). Receivers can de-duplicate retried deliveries by
the event's `id` (also in the `X-Swapwatch-Event-Id` header).

Authentication comes from the environment, never from config files: `token_env` names a variable whose
value is sent as `Authorization: Bearer <value>`; `secret_env` names one whose value keys an HMAC-SHA256
of the exact body, sent as `X-Swapwatch-Signature: sha256=<hex>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import Field, field_validator

from swapwatch.config import StrictModel
from swapwatch.errors import ConfigError
from swapwatch.stream.events import Event, EventType

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebhookConfig(StrictModel):
    """One webhook receiver."""

    url: str = Field(..., description="http:// or https:// URL the events are POSTed to as application/json.")
    types: list[EventType] = Field(
        default_factory=lambda: ["state", "stream"],
        description="Event types sent (summaries are periodic and chatty, so off by default).",
    )
    timeout_s: float = Field(5.0, gt=0, description="Per-request timeout, seconds (connect + send + answer).")
    max_attempts: int = Field(5, ge=1, description="Attempts per event, the first included.")
    backoff_s: float = Field(0.5, ge=0, description="Base of the exponential backoff between attempts, seconds.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest wait between attempts, seconds.")
    queue_size: int = Field(1000, ge=1, description="Events waiting to be sent before the oldest are dropped.")
    close_timeout_s: float = Field(5.0, ge=0, description="At shutdown, seconds left to send what is queued.")
    token_env: str | None = Field(
        None, description="Environment variable holding a bearer token (sent as Authorization: Bearer ...)."
    )
    secret_env: str | None = Field(
        None, description="Environment variable holding an HMAC secret (body signed in X-Swapwatch-Signature)."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (no secrets here).")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must start with http:// or https://, got {v!r}")
        return v


@dataclass
class WebhookStats:
    """Counters of one webhook sink."""

    queued: int = 0
    delivered: int = 0
    attempts: int = 0
    retries: int = 0
    failed: int = 0
    dropped: int = 0
    unsent_at_close: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def backoff_delay(retry: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, base_s * 2**retry)] (retry counts from 0)."""
    return rng.uniform(0.0, min(max_s, base_s * (2.0 ** min(retry, 60))))


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: ignored, the backoff applies


def sign_body(secret: str, body: bytes) -> str:
    """The X-Swapwatch-Signature value for `body`: "sha256=" + hex HMAC-SHA256 keyed by `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink:
    """POST events to one URL, in order, with retries; `publish` never waits."""

    def __init__(self, config: WebhookConfig, *, rng: random.Random | None = None) -> None:
        import aiohttp  # here, at start-up: importing it later would stall the event loop for ~0.2 s

        self._aiohttp = aiohttp
        self.config = config
        self.name = f"webhook:{config.url}"
        self.stats = WebhookStats()
        self._types = set(config.types)
        self._rng = rng or random.Random()
        self._headers = {"Content-Type": "application/json", **config.headers}
        if config.token_env:
            token = os.environ.get(config.token_env)
            if not token:
                raise ConfigError(
                    f"webhook {config.url}: token_env: environment variable {config.token_env} is not set"
                )
            self._headers["Authorization"] = f"Bearer {token}"
        self._secret: str | None = None
        if config.secret_env:
            self._secret = os.environ.get(config.secret_env)
            if not self._secret:
                raise ConfigError(
                    f"webhook {config.url}: secret_env: environment variable {config.secret_env} is not set"
                )
        self._queue: asyncio.Queue[Event] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._session: Any = None
        self._inflight = False
        self._closed = False

    def _start(self) -> asyncio.Queue[Event]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.config.queue_size)
            self._worker = asyncio.create_task(self._run(), name=self.name)
        return self._queue

    async def publish(self, event: Event) -> None:
        """Queue the event (dropping the oldest queued one when full) and return at once."""
        if self._closed or event.type not in self._types:
            return
        queue = self._start()
        while True:
            try:
                queue.put_nowait(event)
                self.stats.queued += 1
                return
            except asyncio.QueueFull:
                queue.get_nowait()
                queue.task_done()
                self.stats.dropped += 1

    async def _run(self) -> None:
        aiohttp = self._aiohttp
        assert self._queue is not None
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        while True:
            event = await self._queue.get()
            self._inflight = True
            try:
                await self._deliver(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one event kill the worker
                self.stats.failed += 1
                log.exception("webhook %s: unexpected error", self.config.url)
            finally:
                self._inflight = False
                self._queue.task_done()

    async def _deliver(self, event: Event) -> None:
        aiohttp = self._aiohttp
        body = event.to_json().encode()
        headers = dict(self._headers)
        headers["X-Swapwatch-Event-Id"] = event.id
        if self._secret:
            headers["X-Swapwatch-Signature"] = sign_body(self._secret, body)
        cfg = self.config
        problem = ""
        for attempt in range(cfg.max_attempts):
            if attempt:
                self.stats.retries += 1
            self.stats.attempts += 1
            retry_after = None
            try:
                async with self._session.post(cfg.url, data=body, headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.stats.delivered += 1
                        return
                    problem = f"HTTP {resp.status}"
                    if resp.status not in RETRY_STATUSES:
                        self.stats.failed += 1
                        log.warning("webhook %s: %s, not retried (event %s)", cfg.url, problem, event.id)
                        return
                    retry_after = _retry_after_s(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as err:
                problem = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            if attempt + 1 < cfg.max_attempts:
                delay = backoff_delay(attempt, cfg.backoff_s, cfg.backoff_max_s, self._rng)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, cfg.backoff_max_s))
                log.info("webhook %s: %s; retry %d in %.2f s", cfg.url, problem, attempt + 1, delay)
                await asyncio.sleep(delay)
        self.stats.failed += 1
        log.warning(
            "webhook %s: giving up on event %s after %d attempts (%s)", cfg.url, event.id, cfg.max_attempts, problem
        )

    async def aclose(self) -> None:
        """Send what is queued for up to `close_timeout_s`, then stop; the rest counts as unsent."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None and self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), self.config.close_timeout_s)
            self.stats.unsent_at_close = self._queue.qsize() + int(self._inflight)
            if self.stats.unsent_at_close:
                log.warning("webhook %s: %d events unsent at close", self.config.url, self.stats.unsent_at_close)
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
