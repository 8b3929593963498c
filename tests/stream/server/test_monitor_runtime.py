"""Streams added and removed while the monitor runs (`Monitor.run(serve=True)`), on real clips and a real model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from swapwatch.errors import ConfigError
from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.pipeline import Monitor, MonitorStoppedError, StreamNotFoundError
from swapwatch.stream.sources import SourceConfig
from tests.stream.conftest import run_async
from tests.stream.server.conftest import server_config, wait_until
from tests.stream.test_pipeline import read_events


async def _serve(monitor: Monitor) -> asyncio.Task[Any]:
    task = asyncio.create_task(monitor.run(serve=True))
    await asyncio.wait_for(monitor.wait_ready(), 30)
    return task


def test_serve_mode_runs_with_no_streams_until_stopped(reference_model: Path, tmp_path: Path) -> None:
    async def scenario() -> Any:
        monitor = Monitor(server_config(reference_model, tmp_path))
        task = await _serve(monitor)
        await asyncio.sleep(0.3)
        assert not task.done() and monitor.ready and monitor.status()["streams"] == {}
        monitor.stop("test")
        return await task

    report = run_async(scenario())
    assert report.stopped_by == "test" and report.streams == {}


def test_add_status_and_remove_at_run_time(reference_model: Path, swap_clip: DemoClip, tmp_path: Path) -> None:
    async def scenario() -> Any:
        monitor = Monitor(server_config(reference_model, tmp_path))
        task = await _serve(monitor)
        paced = SourceConfig(url=str(swap_clip.path), name="paced", realtime=True)
        assert await monitor.add_source(paced) == "paced"
        assert await monitor.add_source(SourceConfig(url=str(swap_clip.path), name="fast", realtime=False)) == "fast"
        with pytest.raises(ConfigError, match="name: a stream named 'paced' is already running"):
            await monitor.add_source(SourceConfig(url=str(swap_clip.path), name="paced"))

        await wait_until(lambda: monitor.stream_status("paced")["faces_scored"] >= 10)
        status = monitor.stream_status("paced")
        assert status["running"] and status["source_state"] == "live" and status["fps"] > 0
        assert {t["track"] for t in status["tracks"]} and all(t["score"] is not None for t in status["tracks"])
        assert status["latency_ms"]["p95"] > 0 and "detect" in status["stages_ms"]

        report = await monitor.remove_stream("paced")
        assert 0 < report.frames < swap_clip.frames and report.source_state == "ended"
        with pytest.raises(StreamNotFoundError, match="'paced': no such stream"):
            monitor.stream_status("paced")
        with pytest.raises(StreamNotFoundError, match="'nope'"):
            await monitor.remove_stream("nope")

        # The fast one ends on its own and stays listed as ended; the monitor keeps serving.
        await wait_until(lambda: not monitor.stream_status("fast")["running"])
        assert monitor.stream_status("fast")["source_state"] == "ended" and not task.done()
        # Its name is free again: adding it replaces the ended entry.
        await monitor.add_source(SourceConfig(url=str(swap_clip.path), name="fast", realtime=True))
        assert monitor.stream_status("fast")["running"]
        monitor.stop("test")
        report = await task
        with pytest.raises(MonitorStoppedError):
            await monitor.add_source(str(swap_clip.path))
        return report

    report = run_async(scenario(), timeout=90)
    assert report.stopped_by == "test"
    events = read_events(tmp_path / "events.jsonl")
    paced = [e for e in events if e.stream == "paced"]
    # Removing a stream ends it in order: its last events are the track ends, then `stream ended`.
    assert paced[-1].type == "stream" and paced[-1].source_state == "ended"
    assert any(e.type == "state" and e.ended for e in paced)
    fast = [e for e in events if e.stream == "fast" and e.type == "stream"]
    assert [e.source_state for e in fast].count("ended") == 2  # ran to its end, then the second run was stopped


def test_a_stream_added_before_start_runs_with_the_configured_ones(
    reference_model: Path, swap_clip: DemoClip, tmp_path: Path
) -> None:
    async def scenario() -> Any:
        cfg = server_config(reference_model, tmp_path, [{"url": str(swap_clip.path), "name": "cfg", "realtime": False}])
        monitor = Monitor(cfg)
        with pytest.raises(ConfigError, match="'cfg' is already running"):
            await monitor.add_source(SourceConfig(url=str(swap_clip.path), name="cfg"))
        await monitor.add_source(SourceConfig(url=str(swap_clip.path), name="early", realtime=False))
        return await monitor.run()  # not serve: ends when both sources end

    report = run_async(scenario(), timeout=90)
    assert report.stopped_by == "sources ended"
    assert {n: s.frames for n, s in report.streams.items()} == {"cfg": swap_clip.frames, "early": swap_clip.frames}


class HangingServer:
    """A TCP server on loopback that accepts connections and never answers (a stuck camera or CDN).

    Each connection is held until the client closes it, then closed here too, so the test's own fds
    return to their baseline when the readers are gone."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True, name="hanging-server").start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._hold, args=(conn,), daemon=True, name="hanging-conn")
            t.start()
            self._threads.append(t)

    @staticmethod
    def _hold(conn: Any) -> None:
        with conn:
            while True:
                try:
                    if not conn.recv(4096):
                        return
                except OSError:
                    return

    def close(self) -> None:
        self.sock.close()


def _reader_threads() -> int:
    import threading

    return sum(1 for t in threading.enumerate() if t.name.startswith("swapwatch-source-"))


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def test_a_removed_streams_blocked_reader_counts_against_the_limit_until_it_exits(
    reference_model: Path, tmp_path: Path
) -> None:
    from swapwatch.stream.pipeline import StreamLimitError

    server = HangingServer()

    async def scenario() -> None:
        monitor = Monitor(server_config(reference_model, tmp_path))
        task = await _serve(monitor)
        fds = _open_fds()
        url = f"http://127.0.0.1:{server.port}/live.m3u8"
        for cycle in range(5):  # add and remove while every open is stuck in FFmpeg
            await monitor.add_source(SourceConfig(url=url, name=f"stuck{cycle}", open_timeout_s=10.0, read_timeout_s=1.0))
            await wait_until(lambda c=cycle: server.accepted > c, 10)
            await monitor.remove_stream(f"stuck{cycle}")
        assert monitor.stream_names() == []
        assert monitor.streams_in_use() == 5  # removed, but their readers still wait on the server
        with pytest.raises(StreamLimitError, match="5 of them removed and still closing"):
            await monitor.add_source(SourceConfig(url=url, name="one-more"), limit=5)
        await wait_until(lambda: monitor.streams_in_use() == 0, 20)  # each exits at its 10 s open timeout
        await wait_until(lambda: _reader_threads() == 0, 5)
        await wait_until(lambda: _open_fds() <= fds, 5)
        assert await monitor.add_source(SourceConfig(url=url, name="one-more"), limit=5) == "one-more"
        await monitor.remove_stream("one-more")
        monitor.stop("test")
        await task

    try:
        run_async(scenario(), timeout=90)
    finally:
        server.close()


def test_a_server_lets_go_of_removed_and_replaced_streams(reference_model: Path, swap_clip: DemoClip, tmp_path: Path) -> None:
    """Serving for days must not keep every stream it ever ran: sources (and their frames) and the
    removed ones' metric series are freed."""
    import gc
    import weakref

    from swapwatch.stream.sources import open_source

    async def scenario() -> list[weakref.ref[Any]]:
        monitor = Monitor(server_config(reference_model, tmp_path))
        task = await _serve(monitor)
        refs = []
        for name in ("a", "b", "a"):  # b is removed; the first a ends and is replaced by the second
            source = open_source(SourceConfig(url=str(swap_clip.path), name=name, realtime=False))
            refs.append(weakref.ref(source))
            await monitor.add_source(source)
            del source
            await wait_until(lambda n=name: not monitor.stream_status(n)["running"], 60)
            if name == "b":
                await monitor.remove_stream("b")
        # The removed stream's metric series go too (once its last events reached the metrics sink).
        await wait_until(lambda: 'stream="b"' not in monitor.metrics.render()[0].decode())
        assert 'stream="a"' in monitor.metrics.render()[0].decode()
        monitor.stop("test")
        await task
        gc.collect()
        return refs[:2]

    assert [r() for r in run_async(scenario(), timeout=120)] == [None, None]
