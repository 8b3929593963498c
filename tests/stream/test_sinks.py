"""Sinks with real parts: files, PyAV encode/decode, an aiohttp server on 127.0.0.1, a Prometheus registry.

Async code runs under `asyncio.run` (no pytest plugin needed). Waits on asynchronous outcomes poll a
condition with a generous safety deadline that only turns a hang into a failure: nothing asserts on
how long anything took.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from swapwatch.errors import ConfigError
from swapwatch.stream.events import Event, FrameTrack, state_event, stream_event, summary_event
from swapwatch.stream.sinks import SinksConfig, SinkSet, build_sinks
from swapwatch.stream.sinks.annotate import STATE_COLORS_BGR, AnnotateConfig, AnnotatedVideoSink, draw_tracks
from swapwatch.stream.sinks.console import ConsoleConfig, ConsoleSink
from swapwatch.stream.sinks.evidence import BufferedFrame, EvidenceConfig, EvidenceSink, FrameRing
from swapwatch.stream.sinks.jsonl import JsonlConfig, JsonlSink
from swapwatch.stream.sinks.metrics import FRAME_DROP_REASONS, STAGES, Metrics, MetricsConfig, MetricsSink, metric_names
from swapwatch.stream.sinks.outbox import Outbox
from swapwatch.stream.sinks.webhook import WebhookConfig, WebhookSink, backoff_delay, default_outbox_path
from swapwatch.stream.temporal import SmoothingConfig, StreamVerdict, TrackState

REPO = Path(__file__).resolve().parents[2]
SAFETY_S = 30.0


def arun(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def until(cond: Callable[[], bool], what: str) -> None:
    """Yield to the loop until `cond()` holds; fail (not time) if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SAFETY_S
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


def ts(track: int, state: str, previous: str, t: float = 1.0, score: float = 0.9) -> TrackState:
    return TrackState(track, t, score, score, state, previous, state != previous, t, 10)  # type: ignore[arg-type]


def numbered(n: int, stream: str = "cam") -> list[Event]:
    return [stream_event(stream, "live", reason=f"#{i}") for i in range(n)]


# -- SinkSet ------------------------------------------------------------------------------------------------


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.frames: list[float | None] = []
        self.closed = False

    async def publish(self, event: Event) -> None:
        self.events.append(event)

    async def on_frame(self, stream: str, frame: np.ndarray, pts: float | None, tracks: Sequence[FrameTrack]) -> None:
        self.frames.append(pts)

    async def aclose(self) -> None:
        self.closed = True


class Failing:
    name = "failing"

    def __init__(self) -> None:
        self.closed = False

    async def publish(self, event: Event) -> None:
        raise RuntimeError("sink broke")

    async def on_frame(self, stream: str, frame: np.ndarray, pts: float | None, tracks: Sequence[FrameTrack]) -> None:
        raise RuntimeError("frame sink broke")

    async def aclose(self) -> None:
        self.closed = True


class Hanging:
    name = "hanging"

    def __init__(self) -> None:
        self.entered = 0
        self.closed = False

    async def publish(self, event: Event) -> None:
        self.entered += 1
        await asyncio.Event().wait()  # never returns

    async def aclose(self) -> None:
        self.closed = True


def test_sinkset_isolates_failing_and_hanging_sinks(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[Recorder, Failing, Hanging, dict[str, Any]]:
        rec, bad, hang = Recorder(), Failing(), Hanging()
        drops: list[tuple[str, str]] = []
        sinks = SinkSet([bad, hang, rec], event_queue=5, frame_queue=3, drain_timeout_s=0.05,
                        on_drop=lambda name, kind: drops.append((name, kind)))  # fmt: skip
        events = numbered(20)
        for e in events[:5]:  # the workers have not run yet: these fill every queue exactly
            sinks.publish_nowait(e)
        await until(lambda: hang.entered == 1 and len(rec.events) == 5, "first events delivered")
        # the hanging sink holds event 0 and has 1-4 queued: 19 events for 5 places, 14 dropped (oldest first)
        for e in events[5:]:
            await sinks.publish(e)
            await asyncio.sleep(0)  # lets the healthy sinks' workers keep up
        frame = np.zeros((8, 8, 3), np.uint8)
        for i in range(4):
            sinks.frame_nowait("cam", frame, i / 30, [])
            await asyncio.sleep(0)
        await until(lambda: len(rec.events) == 20 and len(rec.frames) == 4, "all events to the recorder")
        await sinks.aclose()
        assert drops.count(("hanging", "event")) == 14
        return rec, bad, hang, {k: v.as_dict() for k, v in sinks.stats().items()}

    with caplog.at_level(logging.WARNING, logger="swapwatch.stream.sinks"):
        rec, bad, hang, stats = arun(main())
    drop_lines = [r.getMessage() for r in caplog.records if "items dropped" in r.getMessage()]
    counts = [int(m.group(1)) for line in drop_lines if (m := re.search(r"\(event queue_full\): (\d+)", line))]
    assert all(line.startswith("sink hanging:") for line in drop_lines) and sum(counts) == 14 and len(counts) <= 2
    assert [e.reason for e in rec.events] == [f"#{i}" for i in range(20)]
    assert rec.frames == [0.0, 1 / 30, 2 / 30, 3 / 30]
    assert (stats["recorder"]["published"], stats["recorder"]["dropped_events"]) == (20, 0)
    assert (stats["failing"]["errors"], stats["failing"]["frame_errors"], stats["failing"]["published"]) == (20, 4, 0)
    assert (stats["hanging"]["dropped_events"], stats["hanging"]["unsent_at_close"]) == (14, 5)
    assert rec.closed and bad.closed and hang.closed


@pytest.mark.parametrize(("queue", "sent", "dropped"), [(1, 3, 2), (3, 3, 0), (4, 10, 6)])
def test_sinkset_drops_oldest_frames(queue: int, sent: int, dropped: int) -> None:
    async def main() -> tuple[list[float | None], int]:
        rec = Recorder()
        sinks = SinkSet([rec], frame_queue=queue)
        for i in range(sent):  # no await in between: the worker sees only what the queue kept
            sinks.frame_nowait("cam", np.zeros((2, 2, 3), np.uint8), float(i), [])
        await sinks.aclose()
        return rec.frames, sinks.stats()["recorder"].dropped_frames

    frames, drops = arun(main())
    assert drops == dropped
    assert frames == [float(i) for i in range(sent - min(queue, sent), sent)]


def test_sinkset_refuses_after_close() -> None:
    async def main() -> None:
        sinks = SinkSet([Recorder()])
        await sinks.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            sinks.publish_nowait(numbered(1)[0])

    arun(main())


# -- JSONL --------------------------------------------------------------------------------------------------


def _events_mixed() -> list[Event]:
    verdict = StreamVerdict("cam", 2.0, "alert", 0.9, 1, {"clear": 0, "suspicious": 0, "alert": 1}, 4)
    return [
        stream_event("cam", "live", "opened"),
        state_event("cam", ts(4, "alert", "suspicious"), box=[1, 2, 3, 4], frame_pts=1.0, latency_ms=40.0),
        summary_event(verdict, fps=30.0),
        stream_event("cam", "ended", "end of file"),
    ]


@pytest.mark.parametrize(
    ("types", "expected"),
    [(["state", "summary", "stream"], ["stream", "state", "summary", "stream"]), (["state"], ["state"])],
)
def test_jsonl_lines_parse(tmp_path: Path, types: list[str], expected: list[str]) -> None:
    path = tmp_path / "sub" / "events.jsonl"
    events = _events_mixed()

    async def main() -> None:
        sinks = SinkSet([JsonlSink(JsonlConfig(path=str(path), types=types))])  # type: ignore[arg-type]
        for e in events:
            sinks.publish_nowait(e)
        await sinks.aclose()

    arun(main())
    parsed = [Event.from_json(line) for line in path.read_text().splitlines()]
    assert [e.type for e in parsed] == expected
    assert parsed == [e for e in events if e.type in types]


@pytest.mark.parametrize(("existing", "append", "expected_lines"), [
    ('{"partial": tr', True, 3),  # a crash mid-line: the new lines still start on their own line
    ("", True, 2),
    ('{"partial": tr', False, 2),  # truncated
])  # fmt: skip
def test_jsonl_repairs_a_torn_last_line(tmp_path: Path, existing: str, append: bool, expected_lines: int) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(existing)
    sink = JsonlSink(JsonlConfig(path=str(path), append=append))
    for e in numbered(2):
        assert sink.write_line(e)
    sink.close()
    sink.close()  # idempotent
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and len(lines) - 1 == expected_lines
    assert [Event.from_json(x).reason for x in lines[-3:-1]] == ["#0", "#1"]


def test_jsonl_complete_lines_survive_sigterm(tmp_path: Path) -> None:
    """The process dies by SIGTERM's default action (no cleanup): every line written is complete."""
    path = tmp_path / "events.jsonl"
    script = textwrap.dedent(
        f"""
        import os, signal
        from swapwatch.stream.events import stream_event
        from swapwatch.stream.sinks.jsonl import JsonlConfig, JsonlSink
        sink = JsonlSink(JsonlConfig(path={str(path)!r}))
        for i in range(3):
            sink.write_line(stream_event("cam", "live", reason=str(i)))
        os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGTERM, proc.stderr.decode()
    assert [Event.from_json(x).reason for x in path.read_text().splitlines()] == ["0", "1", "2"]


def test_jsonl_unwritable_path_names_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Exception, match=str(blocker)):
        JsonlSink(JsonlConfig(path=str(blocker / "events.jsonl")))


# -- webhook ------------------------------------------------------------------------------------------------


class Receiver:
    """A real aiohttp server on 127.0.0.1 with routes that succeed, fail, refuse and hang."""

    def __init__(self) -> None:
        self.requests: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        self.flaky_failures = 2
        self.hang_entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __aenter__(self) -> Receiver:
        from aiohttp import web

        async def record(request: web.Request) -> web.Response:
            body = await request.read()
            self.requests.setdefault(request.path, []).append((dict(request.headers), body))
            return web.Response(status=204)

        async def flaky(request: web.Request) -> web.Response:
            body = await request.read()
            self.requests.setdefault(request.path, []).append((dict(request.headers), body))
            if len(self.requests[request.path]) <= self.flaky_failures:
                return web.Response(status=503, headers={"Retry-After": "0"})
            return web.Response(status=200)

        async def refuse(request: web.Request) -> web.Response:
            self.requests.setdefault(request.path, []).append((dict(request.headers), await request.read()))
            return web.Response(status=400)

        async def hang(request: web.Request) -> web.Response:
            self.requests.setdefault(request.path, []).append((dict(request.headers), await request.read()))
            self.hang_entered.set()
            await self.release.wait()
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/ok", record)
        app.router.add_post("/flaky", flaky)
        app.router.add_post("/refuse", refuse)
        app.router.add_post("/hang", hang)
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.runner.cleanup()


def test_webhook_retries_then_succeeds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SW_TEST_TOKEN", "tok123")
    monkeypatch.setenv("SW_TEST_SECRET", "s3cret")

    async def main() -> tuple[WebhookSink, list[tuple[dict[str, str], bytes]], Event]:
        async with Receiver() as rx:
            cfg = WebhookConfig(url=rx.url("/flaky"), backoff_s=0.01, backoff_max_s=0.05, token_env="SW_TEST_TOKEN",
                                secret_env="SW_TEST_SECRET", outbox=str(tmp_path / "o.sqlite"))  # fmt: skip
            sink = WebhookSink(cfg, rng=random.Random(0))
            event = state_event("cam", ts(1, "alert", "suspicious"), box=[0, 0, 10, 10])
            await sink.publish(event)
            await sink.publish(summary_event(StreamVerdict.of("cam", 0.0, [])))  # summaries are not sent by default
            await until(lambda: sink.stats.delivered == 1, "delivery after retries")
            await sink.aclose()
            return sink, rx.requests["/flaky"], event

    sink, requests, event = arun(main())
    assert (sink.stats.attempts, sink.stats.retries, sink.stats.delivered, sink.stats.dropped) == (3, 2, 1, 0)
    assert sink.stats.queued == 1
    assert len(requests) == 3
    for headers, body in requests:
        assert Event.from_json(body) == event
        assert headers["X-Swapwatch-Event-Id"] == headers["Idempotency-Key"] == event.id
        assert headers["Authorization"] == "Bearer tok123"
        # what a receiver computes (docs/alerts.md): "sha256=" + hex HMAC-SHA256 of the raw body, keyed by the secret
        assert headers["X-Swapwatch-Signature"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()


def test_webhook_hanging_receiver_never_blocks_publish(tmp_path: Path) -> None:
    outbox = tmp_path / "o.sqlite"
    events = numbered(51)

    async def main() -> tuple[WebhookSink, int]:
        async with Receiver() as rx:
            cfg = WebhookConfig(url=rx.url("/hang"), timeout_s=60, queue_size=4, close_timeout_s=0.05,
                                outbox=str(outbox))  # fmt: skip
            sink = WebhookSink(cfg)
            await sink.publish(events[0])
            await asyncio.wait_for(rx.hang_entered.wait(), SAFETY_S)
            for e in events[1:]:  # each returns at once: the outbox keeps the newest 4, the oldest are dropped
                await sink.publish(e)
            await sink.aclose()  # gives up on the hung request after close_timeout_s
            return sink, len(rx.requests["/hang"])

    sink, received = arun(main())
    assert received == 1
    assert (sink.stats.queued, sink.stats.dropped, sink.stats.delivered) == (51, 47, 0)
    assert sink.stats.drops == {"outbox_full": 47}
    assert sink.stats.unsent_at_close == 4  # the one in flight + the 3 newest, kept for the next start
    box = Outbox(outbox, sink.config.url)
    assert [r.event_id for r in box.pending()] == [e.id for e in [events[0], *events[-3:]]]
    box.close()


@pytest.mark.parametrize(
    ("path", "attempts", "delivered", "drops"),
    [("/ok", 1, 1, {}), ("/refuse", 1, 0, {"rejected_4xx": 1}), ("/hang", 2, 0, {"max_attempts": 1})],
)
def test_webhook_outcomes(path: str, attempts: int, delivered: int, drops: dict[str, int], tmp_path: Path) -> None:
    async def main() -> WebhookSink:
        async with Receiver() as rx:
            cfg = WebhookConfig(url=rx.url(path), timeout_s=0.2, max_attempts=2, backoff_s=0.01,
                                outbox=str(tmp_path / "o.sqlite"))  # fmt: skip
            sink = WebhookSink(cfg)
            await sink.publish(numbered(1)[0])
            await until(lambda: sink.stats.delivered + sink.stats.dropped == 1, "an outcome")
            await sink.aclose()
            return sink

    sink = arun(main())
    assert (sink.stats.attempts, sink.stats.delivered, sink.stats.drops) == (attempts, delivered, drops)
    assert sink.stats.unsent_at_close == 0


@pytest.mark.parametrize(
    ("events_path", "outbox"),
    [("out/events.jsonl", "out/events.webhooks.sqlite"), ("ev", "ev.webhooks.sqlite"),
     ("-", "swapwatch-webhooks.sqlite"), (None, "swapwatch-webhooks.sqlite")],
)  # fmt: skip
def test_default_outbox_path_is_next_to_the_events_file(events_path: str | None, outbox: str) -> None:
    assert default_outbox_path(events_path) == Path(outbox)


class _MaxRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize(("retry", "expected"), [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (100, 30.0)])
def test_backoff_is_exponential_and_capped(retry: int, expected: float) -> None:
    assert backoff_delay(retry, 0.5, 30.0, _MaxRandom()) == expected
    assert 0.0 <= backoff_delay(retry, 0.5, 30.0, random.Random(retry)) <= expected


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"token_env": "SW_SURELY_UNSET_VAR"}, ConfigError),
        ({"url": "ftp://x"}, ValueError),
        ({"retries": 3}, ValueError),
    ],
)
def test_webhook_config_errors(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        WebhookSink(WebhookConfig(**{"url": "http://127.0.0.1:9/x", **fields}))


# -- metrics ------------------------------------------------------------------------------------------------


def test_metrics_from_events_and_stages() -> None:
    m = Metrics()
    sink = MetricsSink(m)
    for e in [
        stream_event("a", "connecting"),
        stream_event("a", "live"),
        state_event("a", ts(1, "suspicious", "clear")),
        state_event("a", ts(1, "alert", "suspicious")),
        state_event("a", ts(2, "alert", "clear")),
        state_event("a", ts(1, "clear", "alert")),
        summary_event(StreamVerdict("a", 5.0, "alert", 0.9, 3, {"clear": 2, "suspicious": 0, "alert": 1}), fps=24.5),
        stream_event("a", "reconnecting"),
        stream_event("a", "reconnecting"),
        stream_event("b", "failed", "refused"),
    ]:
        sink.apply(e)
    for i, stage in enumerate(STAGES):
        m.observe_stage(stage, 0.001 * (i + 1))
    m.observe_stage("infer", 0.2)
    m.sink_dropped("webhook:x", "event")
    m.sink_dropped("webhook:x", "event", "expired", 3)
    v = m.value
    assert v("swapwatch_alerts_total", {"stream": "a"}) == 2
    assert v("swapwatch_state_changes_total", {"stream": "a", "state": "clear"}) == 1
    assert v("swapwatch_reconnects_total", {"stream": "a"}) == 2
    assert v("swapwatch_source_state", {"stream": "a", "source_state": "reconnecting"}) == 1
    assert v("swapwatch_source_state", {"stream": "a", "source_state": "live"}) == 0
    assert v("swapwatch_source_state", {"stream": "b", "source_state": "failed"}) == 1
    # the stream events after the summary carry state "clear": the verdict follows the latest event
    assert v("swapwatch_stream_level", {"stream": "a"}) == 0
    assert v("swapwatch_fps", {"stream": "a"}) == 24.5
    assert v("swapwatch_stage_latency_seconds_count", {"stage": "infer"}) == 2
    assert v("swapwatch_stage_latency_seconds_sum", {"stage": "infer"}) == pytest.approx(0.204)
    assert v("swapwatch_sink_dropped_total", {"sink": "webhook:x", "kind": "event", "reason": "queue_full"}) == 1
    assert v("swapwatch_sink_dropped_total", {"sink": "webhook:x", "kind": "event", "reason": "expired"}) == 3
    with pytest.raises(ValueError, match="unknown stage"):
        m.observe_stage("decoding", 0.1)


def test_forgetting_a_stream_removes_every_series_of_it_and_only_those() -> None:
    m = Metrics()
    sink = MetricsSink(m)
    for name in ("gone", "kept"):
        for e in [stream_event(name, "live"), state_event(name, ts(1, "alert", "clear")),
                  summary_event(StreamVerdict(name, 1.0, "alert", 0.9, 1, {"alert": 1}), fps=10.0)]:
            sink.apply(e)
        m.frame(name)
        m.observe_latency(name, 0.05)
        for reason in FRAME_DROP_REASONS:
            m.dropped(name, reason, 0)
    m.forget_stream("gone")
    m.forget_stream("never-seen")  # no error for a stream without series
    text = m.render()[0].decode()
    assert 'stream="gone"' not in text
    kept = [line for line in text.splitlines() if 'stream="kept"' in line]
    assert len(kept) >= 20 and m.value("swapwatch_alerts_total", {"stream": "kept"}) == 1


@pytest.mark.parametrize(("state", "level"), [("clear", 0), ("suspicious", 1), ("alert", 2)])
def test_metrics_state_gauges(state: str, level: int) -> None:
    m = Metrics()
    MetricsSink(m).apply(summary_event(StreamVerdict("s", 0.0, state, 0.5, 1, {}), fps=1.0))  # type: ignore[arg-type]
    assert m.value("swapwatch_stream_level", {"stream": "s"}) == level
    assert [
        m.value("swapwatch_stream_state", {"stream": "s", "state": x}) for x in ("clear", "suspicious", "alert")
    ] == [1.0 if x == state else 0.0 for x in ("clear", "suspicious", "alert")]
    assert m.value("swapwatch_faces", {"stream": "s"}) == 1


def test_metrics_http_server_and_render() -> None:
    m = Metrics(MetricsConfig(port=0))
    m.frame("cam", 5)
    port = m.start_http_server()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        m.stop_http_server()
    assert 'swapwatch_frames_total{stream="cam"} 5.0' in text
    body, content_type = m.render()
    assert b"swapwatch_frames_total" in body and content_type.startswith("text/plain")
    assert {"swapwatch_stage_latency_seconds", "swapwatch_alerts", "swapwatch_stream_state"} <= set(metric_names(m))


def test_two_metrics_objects_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.frame("x")
    assert (
        a.value("swapwatch_frames_total", {"stream": "x"}) == 1
        and b.value("swapwatch_frames_total", {"stream": "x"}) is None
    )


# -- console ------------------------------------------------------------------------------------------------


def _console(tty: bool) -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=tty, width=160, color_system=None)


@pytest.mark.parametrize(("every", "summary_lines"), [(0.0, 0), (3600.0, 1)])
def test_console_plain_lines(every: float, summary_lines: int) -> None:
    con = _console(tty=False)
    sink = ConsoleSink(ConsoleConfig(plain_summary_every_s=every), console=con)
    assert not sink.live_mode

    async def main() -> None:
        for e in [*_events_mixed(), summary_event(StreamVerdict.of("cam", 3.0, []))]:
            await sink.publish(e)
        await sink.aclose()

    arun(main())
    lines = con.file.getvalue().splitlines()
    assert len(lines) == 3 + summary_lines
    assert "cam: source live (opened)" in lines[0]
    assert "track 4 suspicious -> ALERT" in lines[1]
    assert sink.rows["cam"].alerts == 1 and sink.rows["cam"].source_state == "ended"


def test_console_live_table() -> None:
    con = _console(tty=True)
    sink = ConsoleSink(ConsoleConfig(), console=con)
    assert sink.live_mode

    async def main() -> None:
        for e in _events_mixed()[:3]:
            await sink.publish(e)
        await sink.aclose()

    arun(main())
    out = con.file.getvalue()
    assert "swapwatch" in out and "cam" in out and "alert" in out and "30.0" in out


@pytest.mark.parametrize(("width", "last_change_column"), [(80, False), (111, False), (112, True), (160, True)])
def test_console_table_fits_the_terminal(width: int, last_change_column: bool) -> None:
    from rich.console import Console

    con = Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)
    sink = ConsoleSink(ConsoleConfig(), console=con)
    long_name = "front-door-camera-of-the-east-wing"
    events = [
        stream_event(long_name, "reconnecting", "connection refused"),
        state_event(long_name, ts(14, "alert", "suspicious"), box=[1, 2, 3, 4], frame_pts=1.0, latency_ms=1234.0),
        summary_event(StreamVerdict(long_name, 2.0, "alert", 0.987, 12, {"clear": 0, "suspicious": 0, "alert": 1}, 4),
                      fps=29.97),
        stream_event("cam", "connecting", "opening"),
    ]
    for e in events:
        sink.apply(e)
    con.print(sink.table())
    lines = con.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    rows = [line for line in lines if line.startswith(("front-door", "cam "))]
    assert len(rows) == 2, lines  # one line per stream: nothing wraps
    assert "reconnecting" in rows[0] and "alert" in rows[0] and "1234 ms" in rows[0] and "30.0" in rows[0]
    assert ("suspicious->alert" in rows[0]) is last_change_column
    assert any(line.startswith("last change: ") for line in lines) is not last_change_column


# -- annotated video ----------------------------------------------------------------------------------------


def _frame(h: int, w: int, i: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (np.arange(w) * 255 // max(1, w - 1)).astype(np.uint8)[None, :]
    img[..., 1] = (i * 7) % 256
    return img


TRACKS = [
    FrameTrack(1, (20.0, 20.0, 100.0, 120.0), "clear", 0.10, 0.12),
    FrameTrack(2, (140.0, 30.0, 220.0, 130.0), "suspicious", 0.60, 0.70),
    FrameTrack(3, (250.0, 40.0, 310.0, 140.0), "alert", 0.93, 0.95),
]


@pytest.mark.parametrize("track", TRACKS, ids=lambda t: t.state)
def test_draw_tracks_colours_by_state(track: FrameTrack) -> None:
    frame = np.full((240, 320, 3), 255, np.uint8)
    out = draw_tracks(frame, [track])
    x1, y1, _, y2 = (int(v) for v in track.box)
    assert tuple(int(c) for c in out[(y1 + y2) // 2, x1]) == STATE_COLORS_BGR[track.state]
    assert np.array_equal(frame, np.full((240, 320, 3), 255, np.uint8))  # input untouched


def _decode(path: Path) -> tuple[list[float], tuple[int, int], list[np.ndarray]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return (
        [float(f.time) for f in frames],
        (frames[0].width, frames[0].height),
        [f.to_ndarray(format="bgr24") for f in frames],
    )


@pytest.mark.parametrize(
    ("size", "max_side", "expected_size"),
    [((240, 320), None, (320, 240)), ((241, 321), None, (320, 240)), ((360, 480), 240, (240, 180))],
)
def test_annotated_video_decodes(tmp_path: Path, size: tuple[int, int], max_side: int | None,
                                 expected_size: tuple[int, int]) -> None:  # fmt: skip
    path = tmp_path / "out" / "annotated.mp4"
    pts: list[float | None] = [i / 30 for i in range(40)]
    pts[20] = pts[19] + 0.1  # a late frame: the file keeps the real spacing
    pts[21:] = [p + 0.1 for p in pts[21:]]  # type: ignore[operator]
    pts[10] = None  # no pts: one nominal interval after the previous

    async def main() -> None:
        sinks = SinkSet([AnnotatedVideoSink(AnnotateConfig(path=str(path), max_side=max_side))], frame_queue=100)
        for i, p in enumerate(pts):
            sinks.frame_nowait("cam", _frame(*size, i), p, TRACKS)
            sinks.frame_nowait("other", _frame(*size, i), p, [])  # not written: the file is cam's
        await sinks.aclose()

    arun(main())
    times, got_size, images = _decode(path)
    assert got_size == expected_size and len(times) == len(pts)
    expected = [p if p is not None else pts[9] + 1 / 30 for p in pts]  # type: ignore[operator]
    assert times == pytest.approx(expected, abs=1e-3)
    assert images[0].shape[:2] == expected_size[::-1]


def test_annotated_video_one_file_per_stream(tmp_path: Path) -> None:
    async def main() -> None:
        sinks = SinkSet([AnnotatedVideoSink(AnnotateConfig(path=str(tmp_path / "{stream}.mp4")))], frame_queue=64)
        for i in range(6):
            sinks.frame_nowait("cam/1", _frame(64, 96, i), i / 10, TRACKS[:1])
            if i < 3:
                sinks.frame_nowait("cam2", _frame(64, 96, i), i / 10, [])
        await sinks.aclose()

    arun(main())
    assert [len(_decode(tmp_path / f"{name}.mp4")[0]) for name in ("cam_1", "cam2")] == [6, 3]


@pytest.mark.parametrize(
    ("grace", "comeback", "expected"),
    [
        (60.0, False, {"cam.mp4": 8}),  # frames that arrive after the ended event still go in the same file
        (0.0, True, {"cam.mp4": 5, "cam-2.mp4": 3}),  # a stream back under the same name never overwrites
    ],
)
def test_annotated_video_stream_end(tmp_path: Path, grace: float, comeback: bool, expected: dict[str, int]) -> None:
    async def main() -> None:
        sink = AnnotatedVideoSink(AnnotateConfig(path=str(tmp_path / "{stream}.mp4"), end_grace_s=grace))
        for i in range(5):
            await sink.on_frame("cam", _frame(64, 96, i), i / 10, [])
        await sink.publish(stream_event("cam", "ended"))
        if comeback:
            await until(lambda: "cam" not in sink.writers and not sink._finishing, "the file finished")
            for i in range(3):
                await sink.on_frame("cam", _frame(64, 96, i), i / 10, [])
        else:
            for i in range(5, 8):
                await sink.on_frame("cam", _frame(64, 96, i), i / 10, [])
        await sink.aclose()

    arun(main())
    assert {p.name: len(_decode(p)[0]) for p in sorted(tmp_path.glob("*.mp4"))} == expected


# -- evidence -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep_s", "max_bytes", "pts", "kept"),
    [
        (2.0, 10_000, [0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
        (10.0, 250, [0.0, 1.0, 2.0, 3.0], [2.0, 3.0]),  # 100-byte frames, 250 bytes at most
        (10.0, 50, [0.0, 1.0], [1.0]),  # never empty: the newest frame stays
    ],
)
def test_frame_ring_bounds(keep_s: float, max_bytes: int, pts: list[float], kept: list[float]) -> None:
    ring = FrameRing(keep_s, max_bytes)
    for p in pts:
        ring.add(BufferedFrame(p, b"x" * 100, 1.0))
    assert [f.pts for f in ring.frames] == kept and ring.nbytes == 100 * len(kept)


FACE = (200.0, 100.0, 300.0, 220.0)


def _alert_event(pts: float | None) -> Event:
    return state_event(
        "cam", ts(5, "alert", "suspicious", t=pts or 0.0, score=0.9), box=list(FACE), frame_pts=pts, latency_ms=30.0
    )


async def _feed(sink: EvidenceSink, stream: str, t0: float, t1: float, fps: float, alert_at: float | None) -> None:
    i = round(t0 * fps)
    while i / fps <= t1 + 1e-9:
        t = i / fps
        frame = _frame(360, 480, i)
        cv2.rectangle(frame, (200, 100), (300, 220), (255, 255, 255), -1)
        alerting = alert_at is not None and t >= alert_at
        score = 0.92 if alerting else 0.3
        await sink.on_frame(
            stream, frame, t, [FrameTrack(5, FACE, "alert" if alerting else "clear", score, score + 0.02)]
        )
        i += 1


@pytest.mark.parametrize(
    ("end", "ended_event", "clip_span"),
    [
        (9.0, False, (1.0, 7.0)),  # frames reach alert + post_s: the clip covers both sides
        (5.5, True, (1.0, 5.5)),  # the stream ends 1.5 s after the alert: what there is
    ],
)
def test_evidence_clip_snapshot_timeline(
    tmp_path: Path, end: float, ended_event: bool, clip_span: tuple[float, float]
) -> None:
    smoothing = SmoothingConfig()
    cfg = EvidenceConfig(dir=str(tmp_path / "ev"), pre_s=3.0, post_s=3.0, max_side=240, end_grace_s=0.0)

    async def main() -> EvidenceSink:
        sink = EvidenceSink(cfg, smoothing=smoothing)
        await _feed(sink, "cam", 0.0, 4.0 - 1 / 30, 30, None)
        await sink.publish(_alert_event(4.0))
        await _feed(sink, "cam", 4.0, end, 30, 4.0)
        if ended_event:
            await sink.publish(stream_event("cam", "ended", "end of file"))
            await until(lambda: not sink.pending, "the ended stream's alert written after end_grace_s")
        await sink.flush()
        assert len(sink.items) == 1  # written before close: at alert + post_s, or when the stream ended
        await sink.aclose()
        return sink

    sink = arun(main())
    index = json.loads((tmp_path / "ev" / "index.json").read_text())
    assert len(index["items"]) == 1
    item = index["items"][0]
    assert (item["stream"], item["track"], item["alert_pts"]) == ("cam", 5, 4.0)
    assert (item["clip_start_pts"], item["clip_end_pts"]) == pytest.approx(clip_span, abs=1e-6)
    times, size, _ = _decode(tmp_path / "ev" / item["clip"])
    assert size == (240, 180)
    assert len(times) == item["clip_frames"] == round((clip_span[1] - clip_span[0]) * 30) + 1
    assert times[0] == 0.0 and times[-1] == pytest.approx(clip_span[1] - clip_span[0], abs=1e-3)
    face = cv2.imread(str(tmp_path / "ev" / item["snapshot"]))
    assert face.shape[:2] == (120 + 2 * 36, 100 + 2 * 30)  # full resolution, margin 0.3 each side
    assert face[face.shape[0] // 2, face.shape[1] // 2].tolist() == [255, 255, 255]
    timeline = cv2.imread(str(tmp_path / "ev" / item["timeline"]))
    assert timeline is not None and timeline.shape[0] > 100
    assert json.loads((tmp_path / "ev" / item["folder"] / "event.json").read_text())["state"] == "alert"
    assert sink.pending == [] and sink.failed == 0


def test_evidence_index_survives_restart_and_skips_non_alerts(tmp_path: Path) -> None:
    cfg = EvidenceConfig(dir=str(tmp_path), pre_s=0.5, post_s=0.5, max_side=120)

    async def session(alert_at: float) -> int:
        sink = EvidenceSink(cfg)
        await sink.publish(state_event("cam", ts(5, "suspicious", "clear")))  # not an alert: no evidence
        await _feed(sink, "cam", 0.0, alert_at, 10, None)
        await sink.publish(_alert_event(alert_at))
        await _feed(sink, "cam", alert_at + 0.1, alert_at + 1.0, 10, alert_at)
        await sink.aclose()
        return len(sink.items)

    assert arun(session(1.0)) == 1
    assert arun(session(2.0)) == 2
    items = json.loads((tmp_path / "index.json").read_text())["items"]
    assert [i["alert_pts"] for i in items] == [1.0, 2.0]
    assert all((tmp_path / i["clip"]).is_file() for i in items)


# -- config -------------------------------------------------------------------------------------------------


def test_build_sinks_from_config(tmp_path: Path) -> None:
    cfg = SinksConfig.model_validate(
        {
            "jsonl": {"path": str(tmp_path / "e.jsonl")},
            "metrics": {},
            "console": {"mode": "plain", "plain_summary_every_s": 0},
            "annotate": {"path": str(tmp_path / "a.mp4")},
            "evidence": {"dir": str(tmp_path / "ev")},
            "webhooks": [{"url": "http://127.0.0.1:9/x"}],
        }
    )
    sinks = build_sinks(cfg, smoothing=SmoothingConfig())
    hook = sinks.get(WebhookSink)
    assert hook is not None and hook.outbox_path == tmp_path / "e.webhooks.sqlite"  # next to the events file
    assert [type(s).__name__ for s in sinks.sinks] == [
        "MetricsSink", "JsonlSink", "WebhookSink", "ConsoleSink", "AnnotatedVideoSink", "EvidenceSink",
    ]  # fmt: skip
    assert sinks.wants_frames and sinks.get(MetricsSink) is sinks.sinks[0]

    async def close() -> None:
        await sinks.aclose()

    arun(close())
    with pytest.raises(ValueError, match="jsonl_path"):
        SinksConfig.model_validate({"jsonl_path": "x"})
    assert os.path.isfile(tmp_path / "e.jsonl")
