"""Sources without an RTSP server: configs, the frame queue, backoff, the reconnect state machine,
files (paced and fast, policies, corrupt and truncated), HTTP(S)/HLS, webcams.

Real parts: clips encoded with PyAV, read back through the real PyAV source, a real HTTP server
(the standard library's) for HTTP and HLS, real threads and event loops. The reconnect state machine is
also driven by a scripted source, so its transitions are checked deterministically.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import itertools
import logging
import random
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from swapwatch.errors import ConfigError, MediaError
from swapwatch.stream.sources import (
    Backoff,
    Frame,
    FrameQueue,
    PyAVSource,
    ReconnectConfig,
    Source,
    SourceConfig,
    SourceCorruptError,
    SourceEndedError,
    SourceError,
    SourceNotFoundError,
    SourceStalledError,
    SourceTruncatedError,
    SourceUnreachableError,
    StateChange,
    WebcamSource,
    build_options,
    list_webcams,
    mask_url,
    open_source,
    redact,
)
from tests.stream.conftest import (
    collect,
    read_marker,
    run_async,
    states,
    write_face_clip,
)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` until true; fails after a generous `timeout` (liveness only)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def blank(i: int = 0) -> Frame:
    return Frame("test", i, np.zeros((4, 4, 3), np.uint8), i / 30, time.monotonic(), time.time())


# --- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "live", "policy", "queue", "name"),
    [
        ("clip.mp4", "file", False, "all", 8, "clip"),
        ("/data/lobby cam.mkv", "file", False, "all", 8, "lobby_cam"),
        ("file:///data/a.webm", "file", False, "all", 8, "a"),
        ("rtsp://cam.local/live/1", "rtsp", True, "latest", 1, "cam.local_live_1"),
        ("rtsps://u:pw@10.0.0.5:322/s?x=1", "rtsp", True, "latest", 1, "10.0.0.5:322_s"),
        ("https://cdn.example/live/index.m3u8", "http", True, "latest", 1, "cdn.example_live_index.m3u8"),
        ("http://host/recordings/day1.mp4", "http", False, "all", 8, "host_recordings_day1.mp4"),
        ("http://host:8080/video.mjpg", "http", True, "latest", 1, "host:8080_video.mjpg"),
        ("/dev/video2", "webcam", True, "latest", 1, "video2"),
        ("0", "webcam", True, "latest", 1, "video0"),
        ("v4l2:///dev/video1", "webcam", True, "latest", 1, "video1"),
    ],
)
def test_config_derives_kind_liveness_policy_and_name(
    url: str, kind: str, live: bool, policy: str, queue: int, name: str
) -> None:
    cfg = SourceConfig(url=url)
    assert (cfg.resolved_kind, cfg.is_live, cfg.resolved_policy, cfg.resolved_queue_size, cfg.resolved_name) == (
        kind,
        live,
        policy,
        queue,
        name,
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"url": "rtsp://cam/x", "policy": "all"}, ("all", 8, "cam_x")),
        ({"url": "rtsp://cam/x", "policy": "latest", "queue_size": 2}, ("latest", 2, "cam_x")),
        ({"url": "rtsp://cam/x", "live": False}, ("all", 8, "cam_x")),
        ({"path": "rtsp://cam/x", "name": "door"}, ("latest", 1, "door")),
        ({"path": "clip.mp4", "kind": "file", "policy": "latest"}, ("latest", 1, "clip")),
    ],
)
def test_config_explicit_values_win(data: dict[str, Any], expected: tuple[str, int, str]) -> None:
    cfg = SourceConfig.model_validate(data)
    assert (cfg.resolved_policy, cfg.resolved_queue_size, cfg.resolved_name) == expected


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"url": "rtmp://host/app/stream"}, "unsupported URL scheme 'rtmp'"),
        ({"url": ""}, "url"),
        ({"url": "rtsp://cam/x", "video_size": "1280x720"}, "video_size: only for webcam"),
        ({"url": "/dev/video0", "video_size": "big"}, "video_size"),
        ({"url": "a.mp4", "policy": "newest"}, "policy"),
        ({"url": "a.mp4", "queue_size": 0}, "queue_size"),
        ({"url": "a.mp4", "reconnect": {"initial_s": 5, "max_s": 1}}, "max_s (1.0) must be >= initial_s"),
        ({"url": "a.mp4", "reconnect": {"jitter": 1.5}}, "reconnect.jitter"),
        ({"url": "a.mp4", "stall_timeout": 3}, "stall_timeout"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, Any], field: str) -> None:
    overrides = {k: v for k, v in data.items() if k != "url"}
    with pytest.raises(ConfigError, match=re.escape(field)):
        open_source(data["url"], **overrides)


@pytest.mark.parametrize(
    ("url", "masked", "secrets"),
    [
        ("rtsp://admin:hunter2@cam/live", "rtsp://admin:***@cam/live", ["hunter2"]),
        ("https://TOKEN123@api.example/s.m3u8", "https://***@api.example/s.m3u8", ["TOKEN123"]),
        ("http://h/x.m3u8?token=abc&q=1", "http://h/x.m3u8?token=***&q=1", ["abc"]),
        ("http://h/v.mp4?X-Amz-Signature=deadbeef", "http://h/v.mp4?X-Amz-Signature=***", ["deadbeef"]),
        ("rtsp://cam:554/live", "rtsp://cam:554/live", []),
        ("/videos/clip.mp4", "/videos/clip.mp4", []),
    ],
)
def test_credentials_are_masked_everywhere(url: str, masked: str, secrets: list[str]) -> None:
    assert mask_url(url) == masked
    cfg = SourceConfig(url=url)
    shown = " ".join([cfg.masked_url, cfg.resolved_name, repr(cfg), str(cfg), redact(f"failed: '{url}'", url)])
    for secret in secrets:
        assert secret not in shown
    assert url in cfg.url  # the real URL is kept for FFmpeg


RTSP_PROTOCOLS = "rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"url": "rtsp://c/x"}, {"rtsp_transport": "tcp", "timeout": "5000000", "flags": "low_delay",
                                 "probesize": "32768", "analyzeduration": "0", "protocol_whitelist": RTSP_PROTOCOLS}),
        ({"url": "rtsp://c/x", "low_latency": False, "rtsp_transport": "udp", "open_timeout_s": 2},
         {"rtsp_transport": "udp", "timeout": "2000000", "protocol_whitelist": RTSP_PROTOCOLS}),
        ({"url": "rtsp://c/x", "ffmpeg_options": {"rtsp_flags": "listen"}},
         {"rtsp_transport": "tcp", "timeout": "5000000", "flags": "low_delay", "probesize": "32768",
          "analyzeduration": "0", "rtsp_flags": "listen", "listen_timeout": "5", "protocol_whitelist": RTSP_PROTOCOLS}),
        ({"url": "https://h/a.m3u8", "ffmpeg_options": {"user_agent": "swapwatch"}},
         {"timeout": "5000000", "user_agent": "swapwatch", "protocol_whitelist": "http,https,tls,tcp,crypto"}),
        ({"url": "/dev/video0", "video_size": "1280x720", "framerate": 30, "input_format": "mjpeg"},
         {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}),
        ({"url": "a.mp4"}, {"protocol_whitelist": "file"}),
    ],
)  # fmt: skip
def test_ffmpeg_options_per_kind(data: dict[str, Any], expected: dict[str, str]) -> None:
    assert build_options(SourceConfig.model_validate(data)) == expected


# --- backoff -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "delays"),
    [
        ({"initial_s": 0.5, "max_s": 4, "jitter": 0}, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]),
        ({"initial_s": 1, "max_s": 10, "multiplier": 3, "jitter": 0}, [1, 3, 9, 10, 10, 10]),
        ({"initial_s": 0.2, "max_s": 0.2, "jitter": 0}, [0.2] * 6),
    ],
)
def test_backoff_is_exponential_and_capped(cfg: dict[str, float], delays: list[float]) -> None:
    backoff = Backoff(ReconnectConfig(**cfg))
    assert [backoff.delay(n) for n in range(1, 7)] == pytest.approx(delays)
    assert backoff.delay(10_000) == pytest.approx(delays[-1])  # no overflow for a camera down for days


@pytest.mark.parametrize("failures", [1, 3, 8])
def test_backoff_jitter_stays_within_bounds_and_varies(failures: int) -> None:
    cfg = ReconnectConfig(initial_s=1, max_s=100, jitter=0.25)
    backoff = Backoff(cfg, random.Random(7))
    samples = [backoff.delay(failures) for _ in range(200)]
    nominal = min(100.0, 2.0 ** (failures - 1))
    assert all(min(100.0, nominal * 0.75) <= s <= min(100.0, nominal * 1.25) for s in samples)
    if nominal * 1.25 <= 100:
        assert len(set(samples)) > 100  # really spread, not a constant


@pytest.mark.parametrize(("max_attempts", "gives_up_at"), [(0, 1), (1, 2), (3, 4), (None, None)])
def test_backoff_gives_up_after_max_attempts(max_attempts: int | None, gives_up_at: int | None) -> None:
    backoff = Backoff(ReconnectConfig(max_attempts=max_attempts))
    verdicts = [backoff.gives_up(n) for n in range(1, 50)]
    first = verdicts.index(True) + 1 if True in verdicts else None
    assert first == gives_up_at


# --- the frame queue -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("maxsize", "kept"), [(1, [9]), (2, [8, 9])])
def test_latest_queue_keeps_the_newest_and_counts_drops(maxsize: int, kept: list[int]) -> None:
    async def scenario() -> tuple[list[int], int]:
        queue = FrameQueue("latest", maxsize)
        producer = threading.Thread(target=lambda: [queue.put(blank(i)) for i in range(10)])
        producer.start()
        await asyncio.to_thread(producer.join)
        queue.close()
        got = []
        while (frame := await queue.get()) is not None:
            got.append(frame.index)
        return got, queue.dropped

    got, dropped = run_async(scenario())
    assert got == kept
    assert dropped == 10 - len(kept)


def test_all_queue_blocks_the_producer_and_never_drops() -> None:
    async def scenario() -> tuple[list[int], int, int]:
        queue = FrameQueue("all", 2)
        producer = threading.Thread(target=lambda: [queue.put(blank(i)) for i in range(6)])
        producer.start()
        await wait_until(lambda: queue.qsize() == 2)
        await asyncio.sleep(0.2)
        held_while_blocked = queue.accepted
        assert producer.is_alive()  # blocked on the full queue, not dropping
        got = []
        for _ in range(6):
            frame = await asyncio.wait_for(queue.get(), 10)
            assert frame is not None
            got.append(frame.index)
        await asyncio.to_thread(producer.join, 10)
        return got, queue.dropped, held_while_blocked

    got, dropped, held = run_async(scenario())
    assert got == list(range(6))
    assert dropped == 0
    assert held == 2


def test_closing_the_queue_releases_a_blocked_producer() -> None:
    async def scenario() -> list[bool]:
        queue = FrameQueue("all", 1)
        results: list[bool] = []
        producer = threading.Thread(target=lambda: results.extend(queue.put(blank(i)) for i in range(3)))
        producer.start()
        await wait_until(lambda: queue.qsize() == 1)
        await asyncio.sleep(0.1)  # the producer is now blocked on its second frame
        queue.close()
        await asyncio.to_thread(producer.join, 10)
        assert not producer.is_alive()
        assert (await queue.get()) is not None  # what was queued is still delivered
        assert (await queue.get()) is None
        return results

    assert run_async(scenario()) == [True, False, False]


# --- the reconnect state machine, scripted ---------------------------------------------------------------


class ScriptedSource(Source):
    """Each connection attempt plays the next step: ("refuse",), ("eof", n frames) or ("stall", n frames)."""

    def __init__(self, config: SourceConfig, script: list[tuple[Any, ...]]) -> None:
        super().__init__(config)
        self.script = script
        self.sessions = 0

    def _run_session(self, session: Any) -> None:
        step = self.script[min(self.sessions, len(self.script) - 1)]
        self.sessions += 1
        if step[0] == "refuse":
            raise SourceUnreachableError(self.url, "connection refused")
        for i in range(step[1]):
            if not self._emit(session, np.zeros((8, 8, 3), np.uint8), i / 30):
                return
        if step[0] == "stall":
            session.stop_event.wait(30)


FAST = {"initial_s": 0.01, "max_s": 0.05, "jitter": 0}


@pytest.mark.parametrize(
    ("live", "reconnect", "script", "expected_states", "error", "counters"),
    [
        (True, {"max_attempts": 2}, [("refuse",)],
         ["connecting", "reconnecting", "reconnecting", "failed"], SourceUnreachableError,
         {"attempts": 2, "reconnects": 0, "losses": 0}),
        (True, {"max_attempts": 1}, [("eof", 5)],
         ["connecting", "live", "reconnecting", "live", "failed"], SourceEndedError,
         {"attempts": 1, "reconnects": 1, "losses": 1, "frames": 10}),
        (True, {"max_attempts": 1, "reset_after_s": 0}, [("eof", 3), ("eof", 3), ("refuse",)],
         ["connecting", "live", "reconnecting", "live", "reconnecting", "failed"],
         SourceUnreachableError, {"attempts": 2, "reconnects": 1, "losses": 2, "frames": 6}),
        # A short-lived connection does not reset the count (reset_after_s 10): a flapping stream still gives up.
        (True, {"max_attempts": 2}, [("refuse",), ("eof", 4), ("refuse",)],
         ["connecting", "reconnecting", "live", "reconnecting", "failed"], SourceUnreachableError,
         {"attempts": 2, "reconnects": 1, "losses": 1, "frames": 4}),
        (True, {"max_attempts": 0}, [("stall", 3)],
         ["connecting", "live", "failed"], SourceStalledError, {"frames": 3}),
        (False, {}, [("eof", 4)], ["connecting", "live", "ended"], None, {"frames": 4, "attempts": 0}),
        (False, {"max_attempts": 5}, [("refuse",)], ["connecting", "failed"], SourceUnreachableError,
         {"attempts": 0}),
    ],
)  # fmt: skip
def test_reconnect_state_machine(
    live: bool,
    reconnect: dict[str, Any],
    script: list[tuple[Any, ...]],
    expected_states: list[str],
    error: type[SourceError] | None,
    counters: dict[str, int],
) -> None:
    # Only the stalling script gets a short watchdog, so a busy machine cannot fake a stall elsewhere.
    stall = 0.3 if any(step[0] == "stall" for step in script) else 10.0
    cfg = SourceConfig(
        url="rtsp://127.0.0.1:9/scripted", live=live, policy="all", stall_timeout_s=stall, reconnect={**FAST, **reconnect}
    )
    source = ScriptedSource(cfg, script)
    frames, err = run_async(collect(source))
    assert states(source) == expected_states
    assert type(err) is error if error else err is None
    stats = source.stats().to_dict()
    assert {k: stats[k] for k in counters} == counters
    assert len(frames) == stats["frames"]
    assert [f.index for f in frames] == list(range(len(frames)))
    if error:
        assert source.history[-1].error is err and stats["last_error"] == str(err)


def test_reconnecting_changes_carry_attempt_and_delay() -> None:
    backoff = {"initial_s": 0.01, "max_s": 0.04, "jitter": 0, "max_attempts": 3}
    cfg = SourceConfig(url="rtsp://127.0.0.1:9/x", reconnect=backoff)
    source = ScriptedSource(cfg, [("refuse",)])
    run_async(collect(source))
    retries = [(c.attempt, c.retry_in_s) for c in source.history if c.new == "reconnecting"]
    assert retries == [(1, 0.01), (2, 0.02), (3, 0.04)]
    event = source.history[-1].to_event()
    assert event["type"] == "stream" and event["state"] == "failed" and event["previous"] == "reconnecting"
    assert event["error"] == "SourceUnreachableError" and "giving up after 4" in event["reason"]


def test_a_raising_listener_does_not_break_the_source(clip_360p: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = open_source(str(clip_360p), realtime=False)
    seen: list[StateChange] = []
    source.add_listener(lambda change: 1 / 0)
    source.add_listener(seen.append)
    frames, err = run_async(collect(source))
    assert err is None and len(frames) == 90
    assert [c.new for c in seen] == ["connecting", "live", "ended"]
    assert "ZeroDivisionError" in caplog.text


# --- files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["clip_360p", "clip_720p"])
@pytest.mark.parametrize("realtime", [False, True])
def test_file_source_delivers_every_frame_in_order(clip: str, realtime: bool, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(clip)
    n = int(av.open(str(path)).streams.video[0].frames)
    source = open_source(str(path), realtime=realtime)
    started = time.monotonic()
    frames, err = run_async(collect(source))
    elapsed = time.monotonic() - started
    assert err is None
    assert states(source) == ["connecting", "live", "ended"]
    assert len(frames) == n and [f.index for f in frames] == list(range(n))
    assert [read_marker(f.image) for f in frames] == list(range(n))
    pts = [f.pts for f in frames]
    assert all(p is not None for p in pts) and all(b > a for a, b in itertools.pairwise(pts))
    stats = source.stats()
    assert (stats.frames, stats.delivered, stats.dropped, stats.policy) == (n, n, 0, "all")
    assert frames[0].stream == path.stem and frames[0].image.dtype == np.uint8 and frames[0].image.ndim == 3
    if realtime:
        # Paced: no frame is handed over before it is due on the clip's own clock.
        t0, p0 = frames[0].received, frames[0].pts
        assert all(f.received - t0 >= f.pts - p0 - 0.005 for f in frames)
        assert elapsed >= pts[-1] - pts[0]


def test_all_policy_never_drops_for_a_slow_consumer(clip_360p: Path) -> None:
    source = open_source(str(clip_360p), realtime=False, policy="all", queue_size=2)
    frames, err = run_async(collect(source, delay_s=0.005))
    assert err is None
    assert [f.index for f in frames] == list(range(90))
    assert source.stats().dropped == 0


def test_latest_policy_drops_and_counts_for_a_slow_consumer(clip_360p: Path) -> None:
    source = open_source(str(clip_360p), realtime=True, policy="latest")
    frames, err = run_async(collect(source, delay_s=0.1))
    assert err is None
    stats = source.stats()
    indices = [f.index for f in frames]
    assert stats.dropped > 0
    assert stats.delivered + stats.dropped == stats.frames == 90
    assert indices == sorted(set(indices)) and len(indices) < 90
    assert indices[-1] == 89  # the newest frame always wins, down to the last one
    assert [read_marker(f.image) for f in frames] == indices


def _truncate(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory: pytest.TempPathFactory, clip_360p: Path) -> dict[str, Path]:
    """Files that are broken in different ways (built once for the module)."""
    tmp_path = tmp_path_factory.mktemp("broken")
    faststart = write_face_clip(tmp_path / "fs.mp4", faststart=True)
    mkv = write_face_clip(tmp_path / "clip.mkv")
    (tmp_path / "folder.mp4").mkdir()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    renamed = tmp_path / "notes.mp4"
    renamed.write_text("this is not a video\n" * 100)
    (tmp_path / "empty.mp4").write_bytes(b"")
    return {
        "garbage": garbage,
        "text": renamed,
        "empty": tmp_path / "empty.mp4",
        "missing": tmp_path / "missing.mp4",
        "folder": tmp_path / "folder.mp4",
        "cut_mp4": _truncate(clip_360p, tmp_path / "cut.mp4", 0.5),
        "cut_faststart": _truncate(faststart, tmp_path / "cut_fs.mp4", 0.5),
        "cut_mkv": _truncate(mkv, tmp_path / "cut.mkv", 0.5),
    }


@pytest.mark.parametrize(
    ("case", "error", "message", "some_frames"),
    [
        ("garbage", SourceCorruptError, "not a readable video", False),
        ("text", SourceCorruptError, "not a readable video", False),
        ("empty", SourceCorruptError, "the file is empty", False),
        ("missing", SourceNotFoundError, "file not found", False),
        ("folder", SourceError, "is a directory", False),
        ("cut_mp4", SourceTruncatedError, "no 'moov' box|ends inside its 'mdat' box", False),
        ("cut_faststart", SourceTruncatedError, "only \\d+ of the 90 frames", True),
        ("cut_mkv", SourceTruncatedError, "frames cover .* of the 3.00 s", True),
    ],
)
def test_broken_files_give_specific_errors_naming_the_file(
    broken_files: dict[str, Path], case: str, error: type[SourceError], message: str, some_frames: bool
) -> None:
    path = broken_files[case]
    source = open_source(str(path), realtime=False)
    frames, err = run_async(collect(source))
    assert type(err) is error
    assert isinstance(err, MediaError) and err.path == str(path)
    assert str(err).startswith(f"{path}: ")
    assert (len(frames) > 0) == some_frames
    assert re.search(message, err.reason), err.reason
    assert states(source)[-1] == "failed" and source.stats().last_error == str(err)


def test_a_failing_file_does_not_disturb_another(broken_files: dict[str, Path], clip_360p: Path) -> None:
    async def scenario() -> tuple[Any, Any]:
        good = open_source(str(clip_360p), realtime=False, name="good")
        bad = open_source(str(broken_files["cut_faststart"]), realtime=False, name="bad")
        return await asyncio.gather(collect(good, 0.001), collect(bad, 0.001))

    (good_frames, good_err), (bad_frames, bad_err) = run_async(scenario())
    assert good_err is None and len(good_frames) == 90 and {f.stream for f in good_frames} == {"good"}
    assert isinstance(bad_err, SourceTruncatedError) and 0 < len(bad_frames) < 90


def test_closing_mid_stream_ends_the_iteration(clip_360p: Path) -> None:
    async def scenario() -> tuple[int, Source]:
        source = open_source(str(clip_360p), realtime=True)
        count = 0
        async for _ in source.frames():
            count += 1
            if count == 5:
                await source.aclose()
        return count, source

    count, source = run_async(scenario())
    assert 5 <= count <= 5 + source.config.resolved_queue_size  # only frames already queued follow
    assert states(source) == ["connecting", "live", "ended"] and source.history[-1].reason == "closed"
    assert source._session is not None and not source._session.alive


# --- HTTP(S) and HLS ------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server over a tmp folder: (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", root
    server.shutdown()
    server.server_close()


def _write_hls(clip: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    playlist = folder / "index.m3u8"
    options = {"hls_time": "1", "hls_playlist_type": "vod", "hls_segment_filename": str(folder / "seg%03d.ts")}
    with av.open(str(clip)) as src, av.open(str(playlist), "w", format="hls", options=options) as out:
        ist = src.streams.video[0]
        ost = out.add_stream_from_template(ist)
        for packet in src.demux(ist):
            if packet.dts is not None:
                packet.stream = ost
                out.mux(packet)
    return playlist


@pytest.mark.parametrize(
    ("what", "options"),
    [("mp4", {}), ("mkv", {}), ("hls", {"live": False})],
)
def test_http_sources_deliver_the_clip(
    http_root: tuple[str, Path], clip_360p: Path, what: str, options: dict[str, Any]
) -> None:
    base, root = http_root
    if what == "mp4":
        write_face_clip(root / "clip.mp4", faststart=True)  # no range requests here: the index must come first
        url = f"{base}/clip.mp4"
    elif what == "mkv":
        write_face_clip(root / "clip.mkv")
        url = f"{base}/clip.mkv"
    else:
        _write_hls(clip_360p, root / "hls")
        url = f"{base}/hls/index.m3u8"
    source = open_source(url, realtime=False, **options)
    assert source.kind == "http"
    frames, err = run_async(collect(source))
    assert err is None and len(frames) == 90
    assert [read_marker(f.image) for f in frames] == list(range(90))
    assert states(source) == ["connecting", "live", "ended"]


@pytest.fixture
def https_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTPS server (self-signed certificate made with the openssl CLI) over a tmp folder."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_port}", root
    server.shutdown()
    server.server_close()


def test_https_source_reads_over_tls(https_root: tuple[str, Path]) -> None:
    base, root = https_root
    write_face_clip(root / "clip.mp4", faststart=True, seconds=1.0)
    source = open_source(f"{base}/clip.mp4", realtime=False)
    frames, err = run_async(collect(source))
    assert err is None and len(frames) == 30
    assert [read_marker(f.image) for f in frames] == list(range(30))


@pytest.mark.parametrize("path", ["/missing.mp4", "/live/missing.m3u8"])
def test_http_404_gives_not_found_naming_the_url(http_root: tuple[str, Path], path: str) -> None:
    url = http_root[0] + path
    source = open_source(url, reconnect={**FAST, "max_attempts": 1})
    frames, err = run_async(collect(source))
    assert isinstance(err, SourceNotFoundError) and "404" in err.reason
    assert str(err).startswith(url) and not frames
    expected = ["connecting", "reconnecting", "failed"] if source.live else ["connecting", "failed"]
    assert states(source) == expected


# --- webcams -------------------------------------------------------------------------------------------


def test_missing_webcam_gives_not_found() -> None:
    source = open_source("/dev/video97", reconnect={**FAST, "max_attempts": 0})
    assert isinstance(source, WebcamSource) and source.device == "/dev/video97"
    frames, err = run_async(collect(source))
    assert isinstance(err, SourceNotFoundError) and "no such device" in str(err) and not frames


@pytest.mark.skipif(not list_webcams(), reason="no /dev/video* device on this machine")
def test_webcam_delivers_frames() -> None:
    async def scenario() -> list[Frame]:
        source = open_source(list_webcams()[0], reconnect={"max_attempts": 0})
        frames = []
        try:
            async for frame in source.frames():
                frames.append(frame)
                if len(frames) == 5:
                    break
        finally:
            await source.aclose()
        return frames

    frames = run_async(scenario())
    assert len(frames) == 5 and frames[0].image.ndim == 3


def test_pyav_source_is_the_default_for_files_and_urls(clip_360p: Path) -> None:
    assert type(open_source(str(clip_360p))) is PyAVSource
    assert type(open_source("rtsp://cam/x")) is PyAVSource
    assert type(open_source(SourceConfig(url="0"))) is WebcamSource


def test_credentials_never_reach_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = "http://viewer:hunter2@127.0.0.1:9/cam.m3u8?token=s3cr3t"
    source = open_source(url, reconnect={**FAST, "max_attempts": 1})
    _, err = run_async(collect(source))
    assert isinstance(err, SourceUnreachableError)
    shown = " ".join(
        [caplog.text, str(err), repr(source), str(source.stats()), repr(source.config)]
        + [str(c.to_event()) for c in source.history]
    )
    assert "hunter2" not in shown and "s3cr3t" not in shown
    assert "viewer:***@127.0.0.1:9" in str(err)
