"""The webhook outbox: durable, at least once, bounded, counted. Real parts only: SQLite files, an aiohttp
receiver on 127.0.0.1 (down, slow, hung, or answering a scripted status per attempt), prometheus_client
registries, and child Python processes killed with SIGKILL.

Async code runs under `asyncio.run`. Waits poll a condition under a safety deadline that only turns a
hang into a failure; nothing asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import sqlite3
import statistics
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from swapwatch.stream.events import Event, stream_event
from swapwatch.stream.sinks import SinksConfig, SinkSet, build_sinks
from swapwatch.stream.sinks.metrics import Metrics, MetricsSink
from swapwatch.stream.sinks.outbox import Outbox
from swapwatch.stream.sinks.webhook import DROP_REASONS, WebhookConfig, WebhookSink

REPO = Path(__file__).resolve().parents[2]
SAFETY_S = 30.0


def arun(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def until(cond: Callable[[], bool], what: str, safety_s: float = SAFETY_S) -> None:
    """Yield to the loop until `cond()` holds; fail (not time) if it never does."""
    deadline = time.monotonic() + safety_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused until a Receiver takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events_of(streams: Sequence[str], per_stream: int, age_s: float = 0.0) -> list[Event]:
    """Events interleaved across streams (a, b, c, a, b, c, ...), `age_s` old."""
    when = datetime.now(UTC) - timedelta(seconds=age_s)
    return [stream_event(s, "live", reason=f"#{i}", time=when) for i in range(per_stream) for s in streams]


@dataclass(frozen=True)
class Answer:
    event_id: str
    stream: str
    status: int


class Receiver:
    """A real aiohttp webhook receiver on 127.0.0.1 that de-duplicates by Idempotency-Key.

    The n-th request for an event id gets `statuses[n]` (200 once they run out), after `delay_s`, and
    only once `release` is set (`hold=True` keeps every request hanging until then).
    """

    def __init__(self, port: int = 0, *, delay_s: float = 0.0, statuses: Sequence[int] = (), hold: bool = False):
        self.port = port
        self.delay_s = delay_s
        self.statuses = list(statuses)
        self.attempts: dict[str, int] = {}
        self.answers: list[Answer] = []
        self.processed: dict[str, Answer] = {}  # first accepted delivery per id: what a de-duplicating app acts on
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __aenter__(self) -> Receiver:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            event = json.loads(await request.read())
            key = request.headers["Idempotency-Key"]
            assert key == event["id"] == request.headers["X-Swapwatch-Event-Id"]
            n = self.attempts.get(key, 0)
            self.attempts[key] = n + 1
            status = self.statuses[n] if n < len(self.statuses) else 200
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self.release.wait()
                await asyncio.sleep(self.delay_s)
            finally:
                self.in_flight -= 1
            answer = Answer(key, event["stream"], status)
            self.answers.append(answer)
            if 200 <= status < 300:
                self.processed.setdefault(key, answer)
            return web.Response(status=status, headers={"Retry-After": "0"} if status in (429, 503) else None)

        app = web.Application()
        app.router.add_post("/hook", handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.runner.cleanup()

    def per_stream(self) -> dict[str, list[str]]:
        """Ids in the order the receiver first accepted them, per stream."""
        out: dict[str, list[str]] = {}
        for a in self.processed.values():
            out.setdefault(a.stream, []).append(a.event_id)
        return out


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}/hook"


def webhook(tmp_path: Path, port: int, **fields: Any) -> WebhookConfig:
    base: dict[str, Any] = {"url": url(port), "outbox": str(tmp_path / "outbox.sqlite"), "backoff_s": 0.02,
                            "backoff_max_s": 0.2, "close_timeout_s": 0.0}  # fmt: skip
    return WebhookConfig(**{**base, **fields})


def by_stream(events: Sequence[Event]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e.stream, []).append(e.id)
    return out


# -- the outbox file --------------------------------------------------------------------------------------------


def test_outbox_rows_survive_reopening_and_endpoints_stay_apart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    a = Outbox(path, "http://a/")
    seqs = [a.add(f"id{i}", "cam", 100.0 + i, f'{{"n":{i}}}'.encode()) for i in range(4)]
    a.remove(seqs[1:2])
    Outbox(path, "http://b/").add("other", "cam", 1.0, b"{}")
    a.close()

    again = Outbox(path, "http://a/")
    assert [(r.event_id, r.created) for r in again.pending()] == [("id0", 100.0), ("id2", 102.0), ("id3", 103.0)]
    assert again.body(seqs[3]) == b'{"n":3}' and again.body(seqs[1]) is None
    assert again.count() == 3
    again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert "http://a/" not in str(db.execute("SELECT endpoint FROM outbox").fetchall())  # hashed, not the URL


# -- delivery -------------------------------------------------------------------------------------------------


def test_receiver_down_then_up_gets_every_event_once_after_dedup(tmp_path: Path) -> None:
    port = free_port()
    events = events_of(["a", "b", "c"], 10)

    async def main() -> tuple[WebhookSink, Receiver]:
        sink = WebhookSink(webhook(tmp_path, port))
        for e in events:
            await sink.publish(e)
        await until(lambda: sink.stats.retries >= 6, "failed attempts while the receiver is down")
        assert sink.stats.delivered == 0 and sink.depth == len(events)
        async with Receiver(port) as rx:
            await until(lambda: sink.stats.delivered == len(events), "every event delivered")
            await sink.aclose()
        return sink, rx

    sink, rx = arun(main())
    assert set(rx.processed) == {e.id for e in events} and len(rx.processed) == len(events)
    assert len([a for a in rx.answers if a.status == 200]) >= len(events)  # at least once overall
    assert rx.per_stream() == by_stream(events)  # each stream's events in the order they happened
    assert (sink.stats.dropped, sink.stats.unsent_at_close) == (0, 0)


def test_slow_receiver_gets_every_event_with_bounded_concurrency(tmp_path: Path) -> None:
    events = events_of([f"cam{i}" for i in range(5)], 10)

    async def main() -> tuple[WebhookSink, Receiver]:
        async with Receiver(delay_s=0.3) as rx:
            sink = WebhookSink(webhook(tmp_path, rx.port, max_in_flight=4))
            for e in events:
                await sink.publish(e)
            await until(lambda: sink.stats.delivered == len(events), "every event delivered")
            await sink.aclose()
        return sink, rx

    sink, rx = arun(main())
    assert (sink.stats.delivered, sink.stats.dropped, sink.stats.retries) == (50, 0, 0)
    assert len(rx.answers) == len(rx.processed) == 50
    assert 2 <= rx.max_in_flight <= 4  # streams go in parallel, never more than max_in_flight at once
    assert rx.per_stream() == by_stream(events)


def test_publish_never_waits_on_the_network(tmp_path: Path) -> None:
    """With every request hanging, 200 events still reach the outbox file; the timings are printed."""
    events = events_of(["a", "b", "c", "d"], 50)

    async def main() -> tuple[WebhookSink, Receiver, list[float], list[float]]:
        async with Receiver(hold=True) as rx:
            sink = WebhookSink(webhook(tmp_path, rx.port, timeout_s=60))
            fanout = SinkSet([sink], event_queue=1000)
            nowait_s, publish_s = [], []
            for e in events[:100]:  # the monitor's path: SinkSet.publish_nowait
                t0 = time.perf_counter()
                fanout.publish_nowait(e)
                nowait_s.append(time.perf_counter() - t0)
            await until(lambda: sink.stats.queued == 100, "the SinkSet's lane wrote the first 100")
            for e in events[100:]:  # the sink's own publish: one committed SQLite insert
                t0 = time.perf_counter()
                await sink.publish(e)
                publish_s.append(time.perf_counter() - t0)
            assert rx.answers == [] and sink.stats.delivered == 0  # nothing answered while all 200 went to disk
            assert Outbox(sink.outbox_path, sink.config.url).count() == 200
            rx.release.set()
            await until(lambda: sink.stats.delivered == 200, "delivery once the receiver answers")
            await fanout.aclose()
        return sink, rx, nowait_s, publish_s

    _sink, rx, nowait_s, publish_s = arun(main())
    assert set(rx.processed) == {e.id for e in events}
    q = statistics.quantiles
    print(f"\nSinkSet.publish_nowait: median {statistics.median(nowait_s) * 1e6:.0f} us, "
          f"p99 {q(nowait_s, n=100)[98] * 1e6:.0f} us; WebhookSink.publish (SQLite commit in the outbox thread): "
          f"median {statistics.median(publish_s) * 1e3:.2f} ms, p99 {q(publish_s, n=100)[98] * 1e3:.2f} ms, "
          f"max {max(publish_s) * 1e3:.2f} ms")  # fmt: skip


@pytest.mark.parametrize(
    ("statuses", "delivered", "drops", "requests"),
    [
        ([500, 200], 1, {}, 2),
        ([503, 502, 200], 1, {}, 3),
        ([429, 200], 1, {}, 2),  # "later": retried
        ([408, 200], 1, {}, 2),
        ([400], 0, {"rejected_4xx": 1}, 1),  # will not get better: dropped at once
        ([401], 0, {"rejected_4xx": 1}, 1),
        ([404], 0, {"rejected_4xx": 1}, 1),
    ],
)
def test_answers_decide_retry_or_drop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, statuses: list[int], delivered: int, drops: dict[str, int],
    requests: int,
) -> None:  # fmt: skip
    metrics = Metrics()
    event = events_of(["cam"], 1)[0]

    async def main() -> WebhookSink:
        async with Receiver(statuses=statuses) as rx:
            sink = WebhookSink(webhook(tmp_path, rx.port), metrics=metrics)
            await sink.publish(event)
            await until(lambda: sink.depth == 0, "an outcome")
            await sink.aclose()
            assert rx.attempts == {event.id: requests}
        return sink

    with caplog.at_level(logging.INFO, logger="swapwatch.stream.sinks.webhook"):
        sink = arun(main())
    assert (sink.stats.delivered, sink.stats.drops, sink.stats.attempts) == (delivered, drops, requests)
    labels = {"sink": sink.name, "kind": "event"}
    for reason in DROP_REASONS:
        assert metrics.value("swapwatch_sink_dropped_total", {**labels, "reason": reason}) == drops.get(reason, 0)
    assert metrics.value("swapwatch_sink_delivered_total", {"sink": sink.name}) == delivered
    assert metrics.value("swapwatch_sink_retries_total", {"sink": sink.name}) == requests - 1
    dropped_lines = [r for r in caplog.records if "dropped" in r.getMessage()]
    if drops:
        assert len(dropped_lines) == 1 and dropped_lines[0].levelno == logging.WARNING
        assert f"HTTP {statuses[0]}" in dropped_lines[0].getMessage()
    else:
        assert dropped_lines == []


def test_drops_are_logged_per_reason_with_counts_not_per_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = events_of(["a", "b"], 20)

    async def main() -> WebhookSink:
        async with Receiver(statuses=[400]) as rx:
            sink = WebhookSink(webhook(tmp_path, rx.port))
            for e in events:
                await sink.publish(e)
            await until(lambda: sink.depth == 0, "every event answered")
            await sink.aclose()
        return sink

    with caplog.at_level(logging.WARNING, logger="swapwatch.stream.sinks.webhook"):
        sink = arun(main())
    assert sink.stats.drops == {"rejected_4xx": 40}
    counts = [int(m.group(1)) for r in caplog.records if (m := re.search(r"events dropped \(rejected_4xx\): (\d+)",
                                                                         r.getMessage()))]  # fmt: skip
    assert sum(counts) == 40 and len(counts) <= 2  # the first at once, the rest folded into one line


@pytest.mark.parametrize(
    ("notes", "lines"),
    [
        ([(0.0, "expired", 1)], ["(expired): 1, 1 in all"]),
        ([(0.0, "expired", 1), (1.0, "expired", 2), (2.0, "expired", 3)],
         ["(expired): 1, 1 in all", "(expired): 5 in the last 10 s, 6 in all"]),
        ([(0.0, "expired", 1), (11.0, "expired", 4)],
         ["(expired): 1, 1 in all", "(expired): 4 in the last 11 s, 5 in all"]),
        ([(0.0, "expired", 2), (0.5, "rejected_4xx", 1)], ["(expired): 2, 2 in all", "(rejected_4xx): 1, 1 in all"]),
    ],
)
def test_throttled_log_folds_repeats_into_counts(
    caplog: pytest.LogCaptureFixture, notes: list[tuple[float, str, int]], lines: list[str]
) -> None:
    """Notes at the given clock times, interval 10 s; then a flush due at t=10 and a forced flush."""
    from swapwatch.stream.throttled_log import ThrottledLog

    now = [0.0]
    logger = logging.getLogger("swapwatch.test.throttled")
    drops = ThrottledLog(logger, "hook", "events dropped", interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for t, reason, n in notes:
            now[0] = t
            drops.note(reason, n)
        now[0] = max(10.0, now[0])
        drops.flush()
        drops.flush(force=True)  # nothing left: no line
    got = [r.getMessage() for r in caplog.records]
    assert len(got) == len(lines) and all(want in line for want, line in zip(lines, got, strict=True)), got


@pytest.mark.parametrize(
    ("receiver_up", "old", "fresh", "max_age_s", "delivered", "expired"),
    [
        (True, 3, 2, 3600.0, 2, 3),  # already too old when published: never sent
        (False, 0, 6, 0.5, 0, 6),  # the receiver stays down: they age out while retried
    ],
)
def test_events_older_than_max_age_are_dropped(
    tmp_path: Path, receiver_up: bool, old: int, fresh: int, max_age_s: float, delivered: int, expired: int
) -> None:
    events = events_of(["cam"], old, age_s=7200.0) + events_of(["cam"], fresh)
    metrics = Metrics()

    async def main() -> tuple[WebhookSink, set[str]]:
        async with Receiver() as rx:
            port = rx.port if receiver_up else free_port()
            sink = WebhookSink(webhook(tmp_path, port, max_age_s=max_age_s), metrics=metrics)
            for e in events:
                await sink.publish(e)
            await until(lambda: sink.depth == 0, "every event delivered or expired")
            await sink.aclose()
            return sink, set(rx.processed)

    sink, received = arun(main())
    assert sink.stats.delivered == delivered and sink.stats.drops == {"expired": expired}
    assert received == {e.id for e in events[old:]} if receiver_up else received == set()
    labels = {"sink": sink.name, "kind": "event", "reason": "expired"}
    assert metrics.value("swapwatch_sink_dropped_total", labels) == expired
    assert Outbox(tmp_path / "outbox.sqlite", sink.config.url).count() == 0


def test_dispatcher_sleeps_while_requests_hang(tmp_path: Path) -> None:
    """Heads that are due but over max_in_flight, and a head in flight past max_age_s, must not make the
    dispatcher spin: over 1.5 s of waiting the process uses a small fraction of one core."""
    events = events_of(["a", "b", "c"], 2)

    async def main() -> tuple[WebhookSink, float]:
        async with Receiver(hold=True) as rx:
            sink = WebhookSink(webhook(tmp_path, rx.port, max_in_flight=1, max_age_s=0.5, timeout_s=60))
            for e in events:
                await sink.publish(e)
            await until(lambda: rx.in_flight == 1, "one request in flight")
            cpu = time.process_time()
            await asyncio.sleep(1.5)  # waiting, not asserting on time: the CPU used meanwhile is the measure
            cpu = time.process_time() - cpu
            # the one in flight is not expired under its feet, nor its stream's next one, which waits behind it
            assert rx.in_flight == 1 and sink.depth == 2
            await sink.aclose()
            return sink, cpu

    sink, cpu_s = arun(main())
    assert sink.stats.drops == {"expired": 4} and sink.stats.unsent_at_close == 2
    assert cpu_s < 0.5, f"the dispatcher spun: {cpu_s:.2f} s of CPU in 1.5 s"


def test_outbox_full_drops_the_oldest_not_in_flight_and_keeps_the_rest_on_disk(tmp_path: Path) -> None:
    events = events_of(["a", "b"], 5)

    async def main() -> tuple[WebhookSink, str]:
        async with Receiver(hold=True) as rx:
            sink = WebhookSink(webhook(tmp_path, rx.port, queue_size=6, timeout_s=60))
            for e in events[:2]:
                await sink.publish(e)
            await until(lambda: rx.in_flight == 2, "both streams' first events in flight")
            for e in events[2:]:
                await sink.publish(e)
            await sink.aclose()  # the receiver never answers: what is left stays in the outbox
            return sink, sink.config.url

    sink, hook = arun(main())
    assert sink.stats.drops == {"outbox_full": 4} and sink.stats.unsent_at_close == 6
    kept = [r.event_id for r in Outbox(tmp_path / "outbox.sqlite", hook).pending()]
    assert kept == [e.id for e in events[:2] + events[6:]]


# -- restarts ---------------------------------------------------------------------------------------------------


def test_a_new_sink_on_the_same_outbox_resumes_without_new_events(tmp_path: Path) -> None:
    """Through `build_sinks` and `SinkSet.start()`: the dispatcher starts with the set, not on a first event."""
    port = free_port()
    events = events_of(["a", "b"], 4, age_s=60.0)
    cfg = SinksConfig.model_validate({"metrics": {}, "webhooks": [webhook(tmp_path, port).model_dump()]})

    async def first_run() -> None:
        sinks = build_sinks(cfg)
        for e in events:
            sinks.publish_nowait(e)
        await sinks.aclose()
        assert sinks.stats()[f"webhook:{url(port)}"].published == len(events)

    async def second_run() -> tuple[Metrics, WebhookSink, Receiver, list[float]]:
        sinks = build_sinks(cfg)
        metrics = sinks.get(MetricsSink).metrics  # type: ignore[union-attr]
        sink = sinks.get(WebhookSink)
        assert sink is not None and sink.stats.resumed == len(events)
        gauges = {"sink": sink.name}
        names = ("swapwatch_outbox_events", "swapwatch_outbox_oldest_age_seconds")
        before = [metrics.value(name, gauges) for name in names]
        async with Receiver(port) as rx:
            sinks.start()
            await until(lambda: sink.stats.delivered == len(events), "the resumed events delivered")
            await until(lambda: metrics.value("swapwatch_outbox_events", gauges) == 0, "the depth gauge at 0")
            assert metrics.value("swapwatch_outbox_oldest_age_seconds", gauges) == 0
            await sinks.aclose()
        return metrics, sink, rx, before

    arun(first_run())
    metrics, sink, rx, (depth, age) = arun(second_run())
    assert depth == len(events) and age >= 60.0
    assert set(rx.processed) == {e.id for e in events} and rx.per_stream() == by_stream(events)
    assert metrics.value("swapwatch_sink_delivered_total", {"sink": sink.name}) == len(events)


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from swapwatch.stream.events import stream_event
    from swapwatch.stream.sinks.webhook import WebhookConfig, WebhookSink

    async def main(url, outbox, n):
        sink = WebhookSink(WebhookConfig(url=url, outbox=outbox, backoff_s=0.05, backoff_max_s=0.2, max_in_flight=2))
        sink.start()
        ids = []
        for i in range(n):
            event = stream_event(f"cam{i % 3}", "live", reason=f"#{i}")
            await sink.publish(event)  # returns once the row is committed
            ids.append(event.id)
        print("written", *ids, flush=True)
        while sink.depth:
            await asyncio.sleep(0.02)
        print("done", sink.stats.resumed, flush=True)
        await sink.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def start_child(port: int, outbox: Path, n: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url(port), str(outbox), str(n), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )


async def read_line(proc: asyncio.subprocess.Process, what: str) -> list[str]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert line, f"the child exited before {what} (rc {await proc.wait()})"
    return line.decode().split()


def test_kill_9_during_delivery_loses_no_event(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite"
    n = 30

    async def main() -> tuple[list[str], Receiver, int, int, int]:
        children: list[asyncio.subprocess.Process] = []
        async with Receiver(delay_s=0.2) as rx:
            try:
                children.append(first := await start_child(rx.port, outbox, n))
                written = await read_line(first, "writing the events")
                assert written[0] == "written" and len(written) == n + 1
                await until(lambda: len(rx.processed) >= 5, "some deliveries before the kill", safety_s=120)
                first.send_signal(signal.SIGKILL)
                rc = await first.wait()
                answered_before = len(rx.processed)
                children.append(second := await start_child(rx.port, outbox, 0))  # no new events: what was left
                assert await read_line(second, "starting") == ["written"]
                done = await read_line(second, "delivering what was left")
                assert await asyncio.wait_for(second.wait(), 60) == 0
            finally:
                for child in children:
                    if child.returncode is None:
                        child.kill()
                        await child.wait()
        return written[1:], rx, rc, answered_before, int(done[1])

    ids, rx, rc, answered_before, resumed = arun(main())
    assert rc == -signal.SIGKILL
    assert answered_before < n  # killed mid-way, with events left to send
    assert resumed >= n - answered_before  # the second process found at least what had not been accepted
    assert set(rx.processed) == set(ids)  # none missing (duplicates allowed: a 2xx the first never read)
    assert Outbox(outbox, url(rx.port)).count() == 0


# -- metrics ----------------------------------------------------------------------------------------------------


def test_depth_and_oldest_age_gauges_follow_the_outbox(tmp_path: Path) -> None:
    port = free_port()
    metrics = Metrics()
    stale, recent = events_of(["a"], 2, age_s=120.0), events_of(["b"], 3)

    def text() -> str:
        return generate_latest(metrics.registry).decode()

    async def main() -> tuple[WebhookSink, list[tuple[float | None, float | None]], str]:
        sink = WebhookSink(webhook(tmp_path, port), metrics=metrics)
        labels = {"sink": sink.name}
        seen = []

        def gauges() -> tuple[float | None, float | None]:
            return (metrics.value("swapwatch_outbox_events", labels),
                    metrics.value("swapwatch_outbox_oldest_age_seconds", labels))  # fmt: skip

        seen.append(gauges())
        for e in recent:
            await sink.publish(e)
        seen.append(gauges())
        for e in stale:
            await sink.publish(e)
        seen.append(gauges())
        busy = text()
        async with Receiver(port):
            await until(lambda: gauges()[0] == 0, "the outbox emptied")
            seen.append(gauges())
            await sink.aclose()
        return sink, seen, busy

    sink, seen, busy = arun(main())
    (empty, _), (three, young), (five, old), (drained, none) = seen
    assert (empty, three, five, drained) == (0, 3, 5, 0)
    assert young is not None and 0 <= young < 60 and old is not None and old >= 120 and none == 0
    assert f'swapwatch_outbox_events{{sink="{sink.name}"}} 5.0' in busy
    for reason in DROP_REASONS:  # every reason is a series from the start, at 0
        assert f'swapwatch_sink_dropped_total{{kind="event",reason="{reason}",sink="{sink.name}"}} 0.0' in busy
    assert f'swapwatch_sink_delivered_total{{sink="{sink.name}"}} 5.0' in text()
