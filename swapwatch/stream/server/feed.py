"""The live feed: a Sink that keeps the recent events and fans them out to SSE and WebSocket clients.

`FeedSink` joins the monitor's SinkSet (`Monitor(..., extra_sinks=[feed])`), so it gets every event the
JSONL file and the webhooks get, in the same order, from its own SinkSet lane: a stalled feed costs its
own backlog and never the frame loop. It keeps the last `recent` events in a ring (for
`GET /api/events` and for the backlog a new client asks for) and hands each event to every subscribed
client's bounded queue.

Slow clients: a client's queue holds `queue_size` messages; when it is full the OLDEST message is
dropped and counted (per client, and in `swapwatch_feed_dropped_total`). Nothing waits on a client, so
one browser tab on a bad link cannot delay another client or the pipeline. The trade-off: a lagging
client sees holes; it can tell from the `dropped` count the server sends it, and refill from
`GET /api/events`. Status snapshots are put the same way, so a lagging client always ends up with
the newest one.

Messages are serialised once per event, not once per client.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from swapwatch.stream.events import Event

EVENT_TYPES = ("state", "summary", "stream")
STATES = ("clear", "suspicious", "alert")
MAX_LIMIT = 10_000


class BadParameter(ValueError):
    """A query parameter is wrong; the API answers 400 naming it."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


class FeedFull(RuntimeError):
    """Too many feed clients at once (the API answers 503)."""


def _parse_time(text: str, param: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadParameter(param, f"{text!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _choices(values: list[str], allowed: Iterable[str] | None, param: str) -> frozenset[str] | None:
    items = {v.strip() for raw in values for v in raw.split(",") if v.strip()}
    if not items:
        return None
    if allowed is not None:
        bad = sorted(items - set(allowed))
        if bad:
            raise BadParameter(param, f"unknown value(s) {', '.join(map(repr, bad))}; one of {', '.join(allowed)}")
    return frozenset(items)


@dataclass(frozen=True)
class EventFilter:
    """Which events a request wants: streams, types, states (each a set, None = any), newer than `since`."""

    streams: frozenset[str] | None = None
    types: frozenset[str] | None = None
    states: frozenset[str] | None = None
    since: datetime | None = None
    limit: int = 100

    @classmethod
    def from_query(cls, query: Mapping[str, str] | Any, *, default_limit: int = 100) -> EventFilter:
        """From URL query parameters `stream`, `type`, `state` (repeatable or comma-separated), `since`
        (ISO 8601) and `limit` (1..10000). BadParameter names the parameter at fault."""
        getall = getattr(query, "getall", None)

        def values(key: str) -> list[str]:
            if getall is not None:
                return list(getall(key, []))
            v = query.get(key)
            return [] if v is None else [v]

        since = values("since")
        limit_text = values("limit")
        limit = default_limit
        if limit_text:
            try:
                limit = int(limit_text[-1])
            except ValueError:
                raise BadParameter("limit", f"{limit_text[-1]!r} is not an integer") from None
            if not 1 <= limit <= MAX_LIMIT:
                raise BadParameter("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
        return cls(
            streams=_choices(values("stream"), None, "stream"),
            types=_choices(values("type"), EVENT_TYPES, "type"),
            states=_choices(values("state"), STATES, "state"),
            since=_parse_time(since[-1], "since") if since else None,
            limit=limit,
        )

    def accepts(self, event: Event) -> bool:
        return (
            (self.streams is None or event.stream in self.streams)
            and (self.types is None or event.type in self.types)
            and (self.states is None or event.state in self.states)
            and (self.since is None or event.time > self.since)
        )

    def accepts_status(self) -> bool:
        """Status snapshots go to clients that did not narrow the event types (the dashboard)."""
        return self.types is None


@dataclass(eq=False)
class FeedMessage:
    """One message for the feed: `kind` is "event", "status" or "dropped"; `id` is the event id (SSE `id:`)."""

    kind: str
    data: Any
    id: str | None = None

    @cached_property
    def data_json(self) -> str:
        return json.dumps(self.data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @cached_property
    def envelope_json(self) -> str:
        """The WebSocket form: {"kind": ..., "id": ..., "data": ...}."""
        return f'{{"kind":{json.dumps(self.kind)},"id":{json.dumps(self.id)},"data":{self.data_json}}}'

    def sse(self) -> bytes:
        """The Server-Sent Events form: `id:` (events only), `event: <kind>`, `data: <json>`."""
        head = f"id: {self.id}\n" if self.id else ""
        return f"{head}event: {self.kind}\ndata: {self.data_json}\n\n".encode()


_CLOSE = FeedMessage("close", None)


@dataclass(eq=False)
class FeedClient:
    """One subscriber: a bounded queue of messages, its filter, and how many messages it lost."""

    filter: EventFilter
    queue: asyncio.Queue[FeedMessage]
    kind: str = "sse"
    dropped: int = 0
    sent: int = 0
    on_drop: Callable[[str], None] | None = field(default=None, repr=False)
    closed: bool = False

    def offer(self, message: FeedMessage) -> None:
        """Queue without waiting; a full queue loses its oldest message (counted)."""
        while True:
            try:
                self.queue.put_nowait(message)
                return
            except asyncio.QueueFull:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                    if self.on_drop is not None:
                        self.on_drop(self.kind)
                except asyncio.QueueEmpty:  # pragma: no cover - nothing else takes from it concurrently
                    pass

    async def next(self) -> FeedMessage | None:
        """The next message; None when the feed closed this client."""
        message = await self.queue.get()
        if message is _CLOSE:
            self.closed = True
            return None
        self.sent += 1
        return message


class FeedSink:
    """A Sink: recent-event ring + fan-out to live clients (see the module docstring)."""

    name = "feed"

    def __init__(
        self,
        *,
        recent: int = 2000,
        queue_size: int = 256,
        max_clients: int = 64,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.ring: deque[Event] = deque(maxlen=recent)
        self.queue_size = queue_size
        self.max_clients = max_clients
        self.on_drop = on_drop
        self.clients: set[FeedClient] = set()
        self.published = 0
        self._closed = False

    # -- Sink ------------------------------------------------------------------------------------------
    async def publish(self, event: Event) -> None:
        self.publish_sync(event)

    def publish_sync(self, event: Event) -> None:
        self.ring.append(event)
        self.published += 1
        if not self.clients:
            return
        message = FeedMessage("event", event.to_dict(), event.id)
        for client in list(self.clients):
            if client.filter.accepts(event):
                client.offer(message)

    async def aclose(self) -> None:
        """Tell every client the feed is over (their handlers then end the connection)."""
        self._closed = True
        for client in list(self.clients):
            client.offer(_CLOSE)

    # -- clients ---------------------------------------------------------------------------------------
    def subscribe(self, flt: EventFilter, *, kind: str = "sse", backlog: int = 0, after: str | None = None) -> FeedClient:
        """A new client. It first gets up to `backlog` recent matching events (or every matching event
        after the one with id `after`, an SSE Last-Event-ID), then live ones. FeedFull past max_clients."""
        if self._closed:
            raise FeedFull("the feed is closed (the server is stopping)")
        if len(self.clients) >= self.max_clients:
            raise FeedFull(f"{len(self.clients)} feed clients already connected (server.feed_max_clients)")
        client = FeedClient(flt, asyncio.Queue(maxsize=self.queue_size), kind=kind, on_drop=self.on_drop)
        replay: list[Event] = []
        if after is not None:
            ids = [e.id for e in self.ring]
            if after in ids:
                replay = [e for e in list(self.ring)[ids.index(after) + 1 :] if flt.accepts(e)]
        elif backlog > 0:
            replay = [e for e in self.ring if flt.accepts(e)][-backlog:]
        for event in replay[-self.queue_size :]:
            client.offer(FeedMessage("event", event.to_dict(), event.id))
        self.clients.add(client)
        return client

    def unsubscribe(self, client: FeedClient) -> None:
        self.clients.discard(client)

    def broadcast_status(self, status: dict[str, Any]) -> None:
        """Queue a status snapshot for every client that takes them."""
        targets = [c for c in self.clients if c.filter.accepts_status()]
        if not targets:
            return
        message = FeedMessage("status", status)
        for client in targets:
            client.offer(message)

    @property
    def wants_status(self) -> bool:
        """True when some client takes status snapshots (the server skips building them otherwise)."""
        return any(c.filter.accepts_status() for c in self.clients)

    def recent(self, flt: EventFilter) -> list[Event]:
        """The newest `flt.limit` events in the ring that match `flt`, oldest first."""
        out: list[Event] = []
        for event in reversed(self.ring):
            if flt.accepts(event):
                out.append(event)
                if len(out) >= flt.limit:
                    break
        out.reverse()
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self.clients),
            "published": self.published,
            "recent": len(self.ring),
            "dropped": sum(c.dropped for c in self.clients),
        }
