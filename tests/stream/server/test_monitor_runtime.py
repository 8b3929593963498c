"""Streams added and removed while the monitor runs (`Monitor.run(serve=True)`), on real clips and a real model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from swapwatch.errors import ConfigError
from swapwatch.stream.demo_clip import DemoClip
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
