"""Events POSTed as JSON to an HTTP endpoint, through a durable outbox: at least once, never on the pipeline's time.

`publish` writes the event into this webhook's outbox (SQLite in WAL mode, `outbox.py`) from a
dedicated thread and returns once the row is committed, without touching the network: from then on
the event survives the process being killed, and a new process opening the same outbox file sends
what the old one had not delivered. A dispatcher task sends the outbox with aiohttp:

- **At least once, idempotent.** A row is deleted only after a 2xx. Every request carries the event
  id as `Idempotency-Key` (and `X-Swapwatch-Event-Id`); a retry or a resend after a restart carries
  the same id and the same body, so receivers de-duplicate by it.
- **Retries.** Connection errors, timeouts, HTTP 408/425/429, 5xx and anything else unexpected are
  retried with exponential backoff and full jitter: the k-th retry waits a uniform random time in
  [0, min(backoff_max_s, backoff_s * 2**k)], or the server's `Retry-After` if that is longer (capped
  at backoff_max_s). Other 4xx answers (bad URL, bad token, a body the receiver refuses) will not get
  better by repeating the same request: the event is dropped (reason `rejected_4xx`).
- **Order and concurrency.** Events of one stream are sent one at a time, in order: the next waits
  until the previous one was acknowledged or dropped. Different streams go in parallel, at most
  `max_in_flight` requests at once per URL. A receiver that fails one event therefore holds back that
  stream's later events (until it accepts it or it expires), never the other streams'.
- **Bounded.** An event older than `max_age_s` (by its own `time`) is dropped (`expired`); when the
  outbox holds `queue_size` undelivered events the oldest are dropped (`outbox_full`); a row that
  cannot be written is dropped (`disk_error`); with `max_attempts` set, an event that failed that many
  times is dropped (`max_attempts`). Every drop is counted (`stats.drops`, and
  `swapwatch_sink_dropped_total{sink,kind="event",reason}` when metrics are on) and logged, one line
  per reason at most every 10 s with the count.

At shutdown the sink keeps delivering for up to `close_timeout_s`; what is left stays in the outbox
for the next start (counted as `unsent_at_close`, not dropped).

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
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator

from swapwatch.config import StrictModel
from swapwatch.errors import ConfigError
from swapwatch.stream.events import Event, EventType
from swapwatch.stream.sinks.outbox import Outbox, OutboxRow
from swapwatch.stream.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

RETRY_4XX = frozenset({408, 425, 429})
"""4xx answers that mean "later" (timeout, too early, too many requests); other 4xx are permanent."""

DROP_REASONS: tuple[str, ...] = ("expired", "rejected_4xx", "outbox_full", "disk_error", "max_attempts")
"""Why the webhook sink drops an event (the `reason` label of swapwatch_sink_dropped_total)."""

DEFAULT_OUTBOX = "swapwatch-webhooks.sqlite"
"""The outbox file in the working directory, when there is no JSONL events file to put it next to."""

T = TypeVar("T")


def _default_types() -> list[EventType]:
    return ["state", "stream"]


class WebhookConfig(StrictModel):
    """One webhook receiver."""

    url: str = Field(..., description="http:// or https:// URL the events are POSTed to as application/json.")
    types: list[EventType] = Field(
        default_factory=_default_types,
        description="Event types sent (summaries are periodic and chatty, so off by default).",
    )
    outbox: str | None = Field(
        None,
        description="SQLite file holding the events not delivered yet (default: next to the JSONL events file as "
        "<its name>.webhooks.sqlite, else swapwatch-webhooks.sqlite in the working directory); webhooks may share one.",
    )
    max_age_s: float = Field(
        86400.0, gt=0, description="Undelivered events older than this (by their time) are dropped, seconds."
    )
    timeout_s: float = Field(5.0, gt=0, description="Per-request timeout, seconds (connect + send + answer).")
    max_attempts: int | None = Field(
        None, ge=1, description="Drop an event after this many failed attempts (none: retry until max_age_s)."
    )
    backoff_s: float = Field(0.5, ge=0, description="Base of the exponential backoff between attempts, seconds.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest wait between attempts, seconds.")
    max_in_flight: int = Field(
        4, ge=1, description="Requests in flight at once to this URL (one per stream: a stream's events stay in order)."
    )
    queue_size: int = Field(
        100_000, ge=1, description="Undelivered events kept in the outbox before the oldest are dropped."
    )
    close_timeout_s: float = Field(
        5.0, ge=0, description="At shutdown, seconds left to deliver; the rest stays in the outbox for the next start."
    )
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


def default_outbox_path(events_path: str | None) -> Path:
    """Where a webhook's outbox goes when its config names none: next to the JSONL events file, else the cwd."""
    if events_path and events_path != "-":
        events = Path(events_path)
        return events.with_name(events.stem + ".webhooks.sqlite")
    return Path(DEFAULT_OUTBOX)


@dataclass
class WebhookStats:
    """Counters of one webhook sink."""

    queued: int = 0  # written to the outbox by this process
    resumed: int = 0  # found undelivered in the outbox at start
    delivered: int = 0
    attempts: int = 0
    retries: int = 0
    dropped: int = 0
    drops: dict[str, int] = field(default_factory=dict)  # by reason (DROP_REASONS)
    unsent_at_close: int = 0  # left in the outbox at close, for the next start

    def as_dict(self) -> dict[str, Any]:
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


Outcome = Literal["delivered", "rejected", "retry", "gone"]


@dataclass(slots=True)
class _Pending:
    row: OutboxRow
    attempts: int = 0
    due: float = 0.0  # time.monotonic() of the next attempt


class WebhookSink:
    """POST events to one URL through a durable outbox; `publish` never waits on the network."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        outbox_path: str | Path | None = None,
        metrics: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        import aiohttp  # here, at start-up: importing it later would stall the event loop for ~0.2 s

        from swapwatch.stream.sources.config import mask_url  # here: the sources package pulls in PyAV

        self._aiohttp = aiohttp
        self.config = config
        self.url = mask_url(config.url)  # the only form that is logged or shown: URLs can hold tokens
        self.name = f"webhook:{self.url}"
        self.stats = WebhookStats()
        self._types = set(config.types)
        self._rng = rng or random.Random()
        self._metrics = metrics
        self._headers = {"Content-Type": "application/json", **config.headers}
        if config.token_env:
            token = os.environ.get(config.token_env)
            if not token:
                raise ConfigError(
                    f"webhook {self.url}: token_env: environment variable {config.token_env} is not set"
                )
            self._headers["Authorization"] = f"Bearer {token}"
        self._secret: str | None = None
        if config.secret_env:
            self._secret = os.environ.get(config.secret_env)
            if not self._secret:
                raise ConfigError(
                    f"webhook {self.url}: secret_env: environment variable {config.secret_env} is not set"
                )
        self.outbox_path = Path(config.outbox) if config.outbox else Path(outbox_path or DEFAULT_OUTBOX)
        self._outbox = Outbox(self.outbox_path, config.url)
        self._db = ThreadPoolExecutor(1, thread_name_prefix="swapwatch-outbox")
        self._drop_log = ThrottledLog(log, f"webhook {self.url}", "events dropped")
        self._fail_log = ThrottledLog(log, f"webhook {self.url}", "delivery attempts failed", level=logging.INFO)
        self._streams: dict[str, deque[_Pending]] = {}
        self._busy: set[str] = set()  # streams with a request in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._depth = 0
        self._oldest: float | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._session: Any = None
        self._closed = False
        self._stopping = False
        try:
            resumed = self._outbox.pending()  # before any publish: a row is either resumed here or added later
        except sqlite3.Error as err:
            self._outbox.close()
            raise ConfigError(f"webhook {self.url}: cannot read the outbox {self.outbox_path}: {err}") from None
        for row in resumed:
            self._streams.setdefault(row.stream, deque()).append(_Pending(row))
        self.stats.resumed = len(resumed)
        self._refresh()
        if resumed:
            log.info("webhook %s: %d undelivered events in %s, sending them", self.url, len(resumed), self.outbox_path)
        if metrics is not None:
            metrics.watch_outbox(self.name, lambda: self._depth, self.oldest_age_s)
            for reason in DROP_REASONS:
                metrics.sink_dropped(self.name, "event", reason, 0)
            metrics.sink_delivered(self.name, 0)
            metrics.sink_retried(self.name, 0)

    # -- state visible to metrics (read from any thread) -------------------------------------------------
    @property
    def depth(self) -> int:
        """Events in the outbox not delivered yet."""
        return self._depth

    def oldest_age_s(self) -> float:
        """Age of the oldest undelivered event (by its time), seconds; 0 when there is none."""
        oldest = self._oldest
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def _refresh(self) -> None:
        for stream in [s for s, q in self._streams.items() if not q]:
            del self._streams[stream]
        self._depth = sum(len(q) for q in self._streams.values())
        self._oldest = min((q[0].row.created for q in self._streams.values()), default=None)
        if self._idle is not None:
            if self._depth:
                self._idle.clear()
            else:
                self._idle.set()

    # -- publishing ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatcher (idempotent; `publish` and `SinkSet.start` call it). Needs a running loop."""
        if self._dispatcher is not None or self._closed:
            return
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._refresh()
        self._dispatcher = asyncio.create_task(self._dispatch(), name=self.name)

    def _in_db_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn` in the outbox thread, submitted now (jobs run in submission order)."""
        return asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def publish(self, event: Event) -> None:
        """Write the event to the outbox (in the outbox thread) and return; delivery happens in the background."""
        if self._closed or event.type not in self._types:
            return
        self.start()
        body = event.to_json().encode()
        created = event.time.timestamp()
        try:
            seq = await self._in_db_thread(self._outbox.add, event.id, event.stream, created, body)
        except (sqlite3.Error, OSError) as err:
            self._drop("disk_error", 1, f"{type(err).__name__}: {err}")
            return
        self.stats.queued += 1
        row = OutboxRow(seq, event.id, event.stream, created)
        self._streams.setdefault(event.stream, deque()).append(_Pending(row))
        await self._trim()
        self._refresh()
        assert self._wake is not None
        self._wake.set()

    def _drop(self, reason: str, n: int, detail: str = "") -> None:
        if n <= 0:
            return
        self.stats.dropped += n
        self.stats.drops[reason] = self.stats.drops.get(reason, 0) + n
        self._drop_log.note(reason, n, detail)
        if self._metrics is not None:
            self._metrics.sink_dropped(self.name, "event", reason, n)

    async def _forget(self, rows: list[_Pending], reason: str | None, detail: str = "") -> None:
        """Remove rows from the outbox: delivered (reason None) or dropped for `reason`."""
        if not rows:
            return
        if reason is not None:
            self._drop(reason, len(rows), detail)
        try:  # shielded: a close must not cancel a delete still queued for the outbox thread (a needless resend)
            await asyncio.shield(self._in_db_thread(self._outbox.remove, [p.row.seq for p in rows]))
        except (sqlite3.Error, OSError) as err:  # the rows stay on disk: sent again after a restart (dupes, no loss)
            log.warning("webhook %s: cannot delete %d rows from the outbox: %s", self.url, len(rows), err)

    async def _trim(self) -> None:
        """Drop the oldest events not in flight while the outbox holds more than `queue_size`."""
        victims: list[_Pending] = []
        excess = sum(len(q) for q in self._streams.values()) - self.config.queue_size
        while excess > 0:
            best: tuple[int, str, int] | None = None  # (seq, stream, index in its queue)
            for stream, q in self._streams.items():
                i = 1 if stream in self._busy else 0
                if len(q) > i and (best is None or q[i].row.seq < best[0]):
                    best = (q[i].row.seq, stream, i)
            if best is None:
                break
            queue = self._streams[best[1]]
            victims.append(queue[best[2]])
            del queue[best[2]]
            excess -= 1
        await self._forget(victims, "outbox_full", f"more than queue_size {self.config.queue_size} undelivered")

    # -- delivery -----------------------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        aiohttp = self._aiohttp
        assert self._wake is not None
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        await self._trim()  # a resumed outbox may be over a smaller queue_size
        while not self._stopping:
            self._wake.clear()
            expired = self._take_expired()
            wait_s = self._launch()  # no await since _take_expired: every head launched was checked
            self._refresh()
            await self._forget(expired, "expired", f"older than max_age_s {self.config.max_age_s:g}")
            self._drop_log.flush()
            self._fail_log.flush()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait_s, 1.0)):
                    await self._wake.wait()

    def _take_expired(self) -> list[_Pending]:
        """Take the events older than `max_age_s` off the head of each stream not in flight."""
        cutoff = time.time() - self.config.max_age_s
        expired: list[_Pending] = []
        for stream, q in self._streams.items():
            if stream in self._busy:
                continue
            while q and q[0].row.created < cutoff:
                expired.append(q.popleft())
        return expired

    def _launch(self) -> float:
        """Start requests for the due stream heads (oldest first, up to max_in_flight).

        Returns the seconds until a waiting head is due or expires; a stream in flight wakes the
        dispatcher itself when its request ends.
        """
        now, wall = time.monotonic(), time.time()
        wait_s = 3600.0
        heads = sorted((q[0] for s, q in self._streams.items() if q and s not in self._busy), key=lambda h: h.row.seq)
        for item in heads:
            if item.due > now:
                wait_s = min(wait_s, item.due - now)
            elif len(self._busy) < self.config.max_in_flight:
                self._busy.add(item.row.stream)
                task = asyncio.create_task(self._attempt(item), name=f"{self.name}:{item.row.event_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            # (due but max_in_flight reached: a request that ends wakes the dispatcher)
            wait_s = min(wait_s, max(0.0, item.row.created + self.config.max_age_s - wall))
        return wait_s

    async def _attempt(self, item: _Pending) -> None:
        stream = item.row.stream
        try:
            outcome, problem, retry_after = await self._send(item)
            drop_reason = "rejected_4xx"
            if outcome == "retry":
                item.attempts += 1
                limit = self.config.max_attempts
                if limit is None or item.attempts < limit:
                    self._retry_later(item, problem, retry_after)
                    return
                outcome, drop_reason, problem = "rejected", "max_attempts", f"{problem} (attempt {item.attempts})"
            queue = self._streams.get(stream)
            if queue and queue[0] is item:
                queue.popleft()
            self._refresh()
            if outcome == "delivered":
                self.stats.delivered += 1
                if self._metrics is not None:
                    self._metrics.sink_delivered(self.name)
                await self._forget([item], None)
            elif outcome == "rejected":
                await self._forget([item], drop_reason, problem)
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one event kill delivery; it is retried
            log.exception("webhook %s: unexpected error delivering event %s", self.url, item.row.event_id)
            item.due = time.monotonic() + self.config.backoff_max_s
        finally:
            self._busy.discard(stream)
            if self._wake is not None:
                self._wake.set()

    def _retry_later(self, item: _Pending, problem: str, retry_after: float | None) -> None:
        cfg = self.config
        self._fail_log.note(problem.split(":")[0], 1, problem)
        delay = backoff_delay(item.attempts - 1, cfg.backoff_s, cfg.backoff_max_s, self._rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.backoff_max_s))
        item.due = time.monotonic() + delay
        self.stats.retries += 1
        if self._metrics is not None:
            self._metrics.sink_retried(self.name)

    async def _send(self, item: _Pending) -> tuple[Outcome, str, float | None]:
        """One POST of `item`: its outcome, the problem in words, and a Retry-After in seconds."""
        aiohttp = self._aiohttp
        try:
            body = await self._in_db_thread(self._outbox.body, item.row.seq)
        except (sqlite3.Error, OSError) as err:
            return "retry", f"outbox read failed: {err}", None
        if body is None:
            return "gone", "", None
        headers = dict(self._headers)
        headers["Idempotency-Key"] = item.row.event_id
        headers["X-Swapwatch-Event-Id"] = item.row.event_id
        if self._secret:
            headers["X-Swapwatch-Signature"] = sign_body(self._secret, body)
        self.stats.attempts += 1
        try:
            async with self._session.post(self.config.url, data=body, headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return "delivered", "", None
                problem = f"HTTP {resp.status}"
                if 400 <= resp.status < 500 and resp.status not in RETRY_4XX:
                    return "rejected", problem, None
                return "retry", problem, _retry_after_s(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as err:
            return "retry", f"{type(err).__name__}: {err}" if str(err) else type(err).__name__, None

    # -- shutdown -----------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Deliver for up to `close_timeout_s`, then stop; what is left stays in the outbox for the next start."""
        if self._closed:
            return
        self._closed = True
        if self._dispatcher is not None:
            assert self._idle is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.close_timeout_s):
                    await self._idle.wait()
            self._stopping = True
            tasks = [self._dispatcher, *self._tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._refresh()
        self.stats.unsent_at_close = self._depth
        if self._depth:
            log.warning(
                "webhook %s: %d events not delivered yet, kept in %s for the next start",
                self.url, self._depth, self.outbox_path,
            )  # fmt: skip
        self._drop_log.flush(force=True)
        self._fail_log.flush(force=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        with contextlib.suppress(RuntimeError):  # the loop may already be closing its executors
            await self._in_db_thread(self._outbox.close)
        self._db.shutdown(wait=False)
