"""RTSP sources against a real RTSP server (GStreamer's, or the listen-mode fallback; see rtsp_server.py).

Covers: frames arrive and the state goes connecting -> live; a server killed mid-stream and restarted
on the same port (reconnecting -> live, counted); end-of-stream on a live URL is a loss; a frozen
server trips the stall watchdog; connection refused and 404 give their specific errors naming the URL;
two sources at once where one server dies and the other keeps delivering; credentials never shown.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest

from swapwatch.stream.sources import (
    Frame,
    Source,
    SourceEndedError,
    SourceNotFoundError,
    SourceStalledError,
    SourceUnreachableError,
    open_source,
)
from tests.stream.conftest import ClipFactory, collect, read_marker, run_async, states
from tests.stream.rtsp_server import RtspServer, choose_backend, free_port

ServerFactory = Callable[..., RtspServer]
QUICK = {"initial_s": 0.1, "max_s": 0.4, "jitter": 0}


def rtsp_source(server: RtspServer, **options: Any) -> Source:
    """A source for the server's URL, with the reader options its backend needs."""
    return open_source(server.url, ffmpeg_options=server.reader_options, **options)


def needs_gstreamer(what: str) -> None:
    """Skip when the tests run on the listen-mode fallback, which cannot produce `what`."""
    if choose_backend()[0] == "listen":
        pytest.skip(f"{what} needs the GStreamer RTSP server (running the listen-mode fallback)")


class Reader:
    """Consumes a source in a background task, keeping the frames (and a slow-consumer delay if asked)."""

    def __init__(self, source: Source, delay_s: float = 0.0) -> None:
        self.source = source
        self.frames: list[Frame] = []
        self.delay_s = delay_s
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for frame in self.source.frames():
                self.frames.append(frame)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
        except Exception as err:  # noqa: BLE001 - kept for the assertions
            self.error = err

    async def wait_frames(self, n: int, timeout: float = 15.0) -> None:
        """Wait until at least `n` frames in total arrived (a liveness bound, not a speed check)."""
        async def enough() -> None:
            while len(self.frames) < n:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(enough(), timeout)

    async def close(self) -> None:
        await self.source.aclose()
        await asyncio.wait_for(self.task, 10)


def test_frames_arrive_and_state_goes_live(rtsp_server: ServerFactory) -> None:
    server = rtsp_server()

    async def scenario() -> tuple[list[Frame], list[str], Any]:
        reader = Reader(rtsp_source(server))
        await reader.source.wait_for_state("live", timeout=15)
        await reader.wait_frames(30)
        stats = reader.source.stats()
        await reader.close()
        return reader.frames, states(reader.source), stats

    frames, seen, stats = run_async(scenario())
    assert seen == ["connecting", "live", "ended"]
    assert (stats.kind, stats.policy, stats.state) == ("rtsp", "latest", "live")
    assert stats.fps > 0 and stats.frames == stats.delivered + stats.dropped + stats.queued
    assert all(f.image.shape == (360, 640, 3) for f in frames)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))
    markers = [read_marker(f.image) for f in frames[:30]]
    assert markers == sorted(set(markers))  # the clip's own frame numbers, in order (a new client starts at 0)
    assert all(b.received >= a.received for a, b in itertools.pairwise(frames))


def test_server_killed_and_restarted_reconnects(rtsp_server: ServerFactory) -> None:
    server = rtsp_server()

    async def scenario() -> tuple[Reader, int]:
        reader = Reader(rtsp_source(server, reconnect=QUICK))
        await reader.source.wait_for_state("live", timeout=15)
        await reader.wait_frames(10)
        server.kill()
        await reader.source.wait_for_state("reconnecting", timeout=15)
        before = len(reader.frames)
        await asyncio.sleep(0.5)  # down for a while: retries are refused meanwhile
        await asyncio.to_thread(server.restart)
        await reader.source.wait_for_state("live", timeout=15)
        await reader.wait_frames(before + 10)
        await reader.close()
        return reader, before

    reader, before = run_async(scenario())
    seen = states(reader.source)
    assert seen[:3] == ["connecting", "live", "reconnecting"] and seen[-2:] == ["live", "ended"]
    assert set(seen[3:-2]) <= {"reconnecting"}
    loss = reader.source.history[2]
    assert isinstance(loss.error, SourceEndedError) and "stream ended" in loss.reason  # the quiet EOF, detected
    stats = reader.source.stats()
    assert (stats.reconnects, stats.losses) == (1, 1) and stats.attempts >= 1
    indices = [f.index for f in reader.frames]
    assert indices == sorted(set(indices))  # one frame numbering across the reconnection
    assert read_marker(reader.frames[before].image) < 30  # the restarted server plays the clip from its start


def test_two_sources_one_server_dies_the_other_keeps_going(rtsp_server: ServerFactory) -> None:
    dying, steady = rtsp_server(), rtsp_server()

    async def scenario() -> tuple[Reader, Reader, int]:
        a = Reader(rtsp_source(dying, name="dying", reconnect=QUICK))
        b = Reader(rtsp_source(steady, name="steady", reconnect=QUICK))
        await asyncio.gather(a.wait_frames(5), b.wait_frames(5))
        dying.kill()
        await a.source.wait_for_state("reconnecting", timeout=15)
        b_before = len(b.frames)
        await b.wait_frames(b_before + 30)  # another second of video from the healthy server
        await asyncio.gather(a.close(), b.close())
        return a, b, b_before

    a, b, b_before = run_async(scenario())
    assert len(b.frames) >= b_before + 30 and b.error is None
    assert states(b.source) == ["connecting", "live", "ended"] and b.source.stats().losses == 0
    assert {f.stream for f in b.frames} == {"steady"}
    assert "reconnecting" in states(a.source) and a.source.stats().reconnects == 0


def test_unreachable_url_gives_connection_refused_then_fails() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/live"  # nothing listens there
    source = open_source(url, reconnect={**QUICK, "initial_s": 0.05, "max_attempts": 2})
    frames, err = run_async(collect(source))
    assert isinstance(err, SourceUnreachableError)
    assert str(err).startswith(f"{url}: connection refused")
    assert states(source) == ["connecting", "reconnecting", "reconnecting", "failed"]
    assert source.stats().attempts == 2 and not frames
    assert [c.attempt for c in source.history] == [0, 1, 2, 3]


def test_unknown_path_gives_not_found(rtsp_server: ServerFactory) -> None:
    needs_gstreamer("a 404")
    server = rtsp_server()
    url = server.url.rsplit("/", 1)[0] + "/no-such-stream"
    source = open_source(url, reconnect={**QUICK, "max_attempts": 0})
    frames, err = run_async(collect(source))
    assert isinstance(err, SourceNotFoundError) and "404" in err.reason
    assert str(err).startswith(url) and not frames
    assert states(source) == ["connecting", "failed"]


def test_end_of_stream_on_a_live_url_is_a_loss(rtsp_server: ServerFactory, make_clip: ClipFactory) -> None:
    needs_gstreamer("replaying after EOF")
    server = rtsp_server(loop=False, clip=make_clip("face_1s.mp4", seconds=1.0))

    async def scenario() -> Reader:
        reader = Reader(rtsp_source(server, reconnect=QUICK))
        await reader.source.wait_for_state("live", timeout=15)
        await reader.source.wait_for_state("reconnecting", timeout=15)
        await reader.source.wait_for_state("live", timeout=15)  # each connection plays the clip again
        await reader.close()
        return reader

    reader = run_async(scenario())
    assert states(reader.source)[:4] == ["connecting", "live", "reconnecting", "live"]
    assert isinstance(reader.source.history[2].error, SourceEndedError)
    assert reader.source.stats().reconnects == 1


def test_frozen_server_trips_the_stall_watchdog(rtsp_server: ServerFactory) -> None:
    needs_gstreamer("a frozen stream")
    server = rtsp_server(freeze_after=15)
    # read_timeout_s is long on purpose: the watchdog, not FFmpeg's read timeout, must notice the stall.
    source = rtsp_source(server, stall_timeout_s=0.5, read_timeout_s=10, reconnect={**QUICK, "max_attempts": 0})
    frames, err = run_async(collect(source))
    assert isinstance(err, SourceStalledError) and "no frame for" in err.reason
    assert states(source) == ["connecting", "live", "failed"]
    assert 0 < len(frames) <= 15


def test_latest_policy_on_a_live_stream_drops_stale_frames(rtsp_server: ServerFactory) -> None:
    server = rtsp_server()

    async def scenario() -> Reader:
        reader = Reader(rtsp_source(server), delay_s=0.2)  # a consumer at 5 fps on a 30 fps stream
        await reader.wait_frames(8)
        await reader.close()
        return reader

    reader = run_async(scenario())
    stats = reader.source.stats()
    assert stats.dropped > 0 and stats.delivered + stats.dropped + stats.queued == stats.frames
    gaps = [b.index - a.index for a, b in itertools.pairwise(reader.frames)]
    assert max(gaps) > 1  # the consumer skipped ahead to fresh frames instead of falling behind


def test_rtsp_credentials_are_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/cam"
    source = open_source(url, reconnect={**QUICK, "max_attempts": 1})
    _, err = run_async(collect(source))
    assert isinstance(err, SourceUnreachableError)
    shown = " ".join([caplog.text, str(err), source.name, repr(source), str(source.stats())])
    shown += " ".join(str(c.to_event()) for c in source.history)
    assert "hunter2" not in shown and "admin:***@" in shown
