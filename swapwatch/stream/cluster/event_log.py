"""Events into the cluster's durable JetStream stream, and read back for `/api/events`.

`ClusterEventSink` is a sink like the others: `publish` writes the event into an SQLite outbox (the
webhook's `Outbox`, one "endpoint" per events stream) from a dedicated thread and returns. A
dispatcher task publishes the outbox in order, up to `window` messages in flight, each with the header
`Nats-Msg-Id` = event id, and deletes a row only once JetStream acknowledged it. A publish that times
out (the stream's leader died, the connection dropped) is sent again with the same id until it is
acknowledged; JetStream stores it once when the two sends fall within the stream's duplicate window
(`cluster.duplicate_window_s`, 10 min). A node killed with events still in its outbox sends them when
it starts again with the same outbox file.

Ordering: per node, events are published in the order they were made, except that those of a window
that failed in part are sent again after the ones that got through; across nodes the stream holds
them in arrival order. Each event carries its own `time`: sort by it when order matters.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapwatch.stream.cluster.config import ClusterConfig
from swapwatch.stream.cluster.keys import name_to_token
from swapwatch.stream.cluster.store import nats_errors
from swapwatch.stream.events import Event
from swapwatch.stream.sinks.outbox import Outbox, OutboxRow

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from swapwatch.stream.server.feed import EventFilter

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"


def event_subject(config: ClusterConfig, stream: str) -> str:
    return f"{config.events_subject}.{name_to_token(stream)}"


def default_outbox_path(config: ClusterConfig, events_path: str | None) -> Path:
    """Next to the JSONL events file, else in the working directory; one file per node."""
    if config.outbox:
        return Path(config.outbox)
    name = f"cluster-outbox-{config.node}.sqlite"
    if events_path and events_path != "-":
        return Path(events_path).parent / name
    return Path(name)


class ClusterEventSink:
    """Publishes every event to the cluster's events stream through a durable outbox (see module doc)."""

    name = "cluster"

    def __init__(self, config: ClusterConfig, js: JetStreamContext, outbox_path: str | Path, *,
                 window: int = 64, close_timeout_s: float = 5.0) -> None:
        self.config = config
        self.js = js
        self.window = window
        self.close_timeout_s = close_timeout_s
        self.outbox = Outbox(outbox_path, f"nats:{config.events_stream}")
        self._db = ThreadPoolExecutor(1, thread_name_prefix="swapwatch-cluster-outbox")
        self._pending: list[OutboxRow] = self.outbox.pending()  # resumed from a previous run, oldest first
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.published = 0
        self.retries = 0
        self.resumed = len(self._pending)
        if self.resumed:
            log.info("cluster: %d events from a previous run not yet in %s; sending them", self.resumed,
                     config.events_stream)

    @property
    def depth(self) -> int:
        """Events written but not yet acknowledged by JetStream."""
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._dispatch(), name="cluster-events")
            if self._pending:
                self._wake.set()

    async def _in_db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def publish(self, event: Event) -> None:
        body = event.to_json().encode()
        seq = await self._in_db(self.outbox.add, event.id, event.stream, event.time.timestamp(), body)
        self._pending.append(OutboxRow(seq, event.id, event.stream, event.time.timestamp()))
        self._wake.set()

    async def _send(self, row: OutboxRow) -> bool:
        body = await self._in_db(self.outbox.body, row.seq)
        if body is None:
            return True
        try:
            await self.js.publish(event_subject(self.config, row.stream), body, timeout=self.config.request_timeout_s,
                                  headers={MSG_ID_HEADER: row.event_id})
        except nats_errors() as err:
            log.debug("cluster: publish of event %s not acknowledged: %s", row.event_id, err)
            return False
        return True

    async def _dispatch(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending[: self.window]
            results = await asyncio.gather(*(self._send(row) for row in batch))
            done = [row for row, ok in zip(batch, results, strict=True) if ok]
            if done:
                await asyncio.shield(self._in_db(self.outbox.remove, [r.seq for r in done]))
                acked = {r.seq for r in done}
                self._pending = [r for r in self._pending if r.seq not in acked]
                self.published += len(done)
            if len(done) < len(batch):
                self.retries += len(batch) - len(done)
                failures += 1
                await asyncio.sleep(random.uniform(0.0, min(2.0, 0.1 * 2 ** min(failures, 5))))
            else:
                failures = 0

    async def aclose(self) -> None:
        """Keep publishing for up to `close_timeout_s`; what is left stays in the outbox for the next start."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.close_timeout_s)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                log.warning("cluster: %d events not yet in %s at shutdown; kept in %s for the next start",
                            len(self._pending), self.config.events_stream, self.outbox.path)
        await self._in_db(self.outbox.close)
        self._db.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        return {"published": self.published, "pending": self.depth, "retries": self.retries, "resumed": self.resumed}


async def read_events(js: JetStreamContext, config: ClusterConfig, flt: EventFilter | None = None, *,
                      limit: int = 100, scan: int = 5000, timeout_s: float | None = None) -> tuple[list[Event], int]:
    """The newest `limit` events of the durable stream that `flt` accepts, oldest first, from the last
    `scan` messages; also returns how many messages were read."""
    import nats.errors
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    timeout = timeout_s or config.request_timeout_s
    streams = flt.streams if flt is not None else None
    subject = (event_subject(config, next(iter(streams))) if streams is not None and len(streams) == 1
               else f"{config.events_subject}.>")
    try:
        info = await js.stream_info(config.events_stream, subjects_filter=None)
    except nats.js.errors.NotFoundError:
        return [], 0
    last = int(info.state.last_seq or 0)
    first = int(info.state.first_seq or 0)
    if info.state.messages == 0 or last == 0:
        return [], 0
    start = max(first, last - scan + 1)
    consumer = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                              ack_policy=AckPolicy.NONE, inactive_threshold=30.0, max_ack_pending=-1)
    sub = await js.pull_subscribe(subject, stream=config.events_stream, config=consumer)
    out: list[Event] = []
    read = 0
    deadline = time.monotonic() + max(timeout * 5, 10.0)
    try:
        while time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(batch=500, timeout=timeout)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for msg in msgs:
                read += 1
                try:
                    event = Event.from_json(msg.data)
                except ValueError:
                    continue
                if flt is None or flt.accepts(event):
                    out.append(event)
            if not msgs or msgs[-1].metadata.sequence.stream >= last or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out[-limit:], read
