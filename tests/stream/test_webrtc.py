"""WebRTCSource and the WHIP client's FileTrack, without a network in between.

A FileTrack is a real aiortc video track (it plays a real H.264 clip), so a WebRTCSource can read it
directly: the same `recv()` contract a remote track has, with the network left to test_whip.py.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rtp import RtpPacket

from swapwatch.config import parse_config
from swapwatch.errors import ConfigError, MediaError
from swapwatch.stream.bench.whip_client import FileTrack
from swapwatch.stream.sources import SourceConfig
from swapwatch.stream.sources.webrtc import MarkerJitterBuffer, WebRTCSource, release_frames_on_marker
from tests.stream.conftest import ClipFactory, collect, read_marker, run_async, states


@pytest.fixture(scope="module")
def clip(make_clip: ClipFactory) -> Path:
    """640x360, 30 fps, 1 s (30 frames), with the frame-index barcode."""
    return make_clip("webrtc_1s.mp4", seconds=1.0)


# --- FileTrack --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "says"),
    [
        (lambda tmp: tmp / "missing.mp4", MediaError, "file not found"),
        (lambda tmp: (tmp / "notes.mp4").write_text("not a video") and tmp / "notes.mp4", MediaError,
         "not a readable video"),
    ],
)
def test_file_track_refuses_what_it_cannot_play(tmp_path: Path, make, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        FileTrack(make(tmp_path))


@pytest.mark.parametrize("size", [(641, 360), (0, 360), (640, -2)])
def test_file_track_refuses_sizes_yuv420p_cannot_hold(clip: Path, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="size"):
        FileTrack(clip, size=size)


def test_file_track_plays_the_file_once_at_its_rate(clip: Path) -> None:
    async def scenario() -> None:
        track = FileTrack(clip)
        frames = []
        started = time.monotonic()
        while True:
            try:
                frames.append(await track.recv())
            except MediaStreamError:
                break
        elapsed = time.monotonic() - started
        assert len(frames) == 30 == track.frames_sent
        assert [f.pts for f in frames] == [round(i / 30 * 90_000) for i in range(30)]
        assert all(f.width == 640 and f.height == 360 for f in frames)
        assert [read_marker(f.to_ndarray(format="bgr24")) for f in frames] == list(range(30))
        assert elapsed > 0.8  # paced like a camera (29 intervals of 1/30 s), not dumped at decode speed
        assert track.readyState == "ended" and track.error is None

    run_async(scenario())


def test_file_track_loops_scales_and_transforms(clip: Path) -> None:
    calls: list[tuple[tuple[int, ...], float]] = []

    def stamp(image: np.ndarray, t_send: float) -> np.ndarray:
        calls.append((image.shape, t_send))
        out = image.copy()
        out[-8:, -8:] = 255
        return out

    async def scenario() -> None:
        track = FileTrack(clip, loop=True, size=(320, 180), transform=stamp)
        frames = [await track.recv() for _ in range(45)]
        track.stop()
        with pytest.raises(MediaStreamError):
            await track.recv()
        pts = [f.pts for f in frames]
        assert pts == sorted(pts) and len(set(pts)) == 45  # media time keeps going across the loop
        assert pts[30] == round(1.0 * 90_000)  # the second play starts one clip length later
        assert track.loops >= 1
        assert all(f.width == 320 and f.height == 180 for f in frames)
        assert len(calls) == 45 and calls[0][0] == (180, 320, 3)
        assert abs(calls[-1][1] - time.time()) < 5.0  # t_send is wall-clock time
        assert all(b[1] >= a[1] for a, b in itertools.pairwise(calls))
        assert frames[0].to_ndarray(format="bgr24")[-4:, -4:].mean() > 200  # the transform's drawing was sent

    run_async(scenario())


# --- WebRTCSource -------------------------------------------------------------------------------------------


def test_webrtc_source_states_frames_and_end(clip: Path) -> None:
    async def scenario() -> None:
        source = WebRTCSource(FileTrack(clip), "peer-1")
        assert (source.kind, source.policy, source.live, source.url) == ("webrtc", "latest", True, "webrtc://peer-1")
        frames, error = await collect(source)
        assert error is None
        assert states(source) == ["connecting", "live", "ended"]
        assert "track ended" in source.history[-1].reason
        # Every frame of the clip reached the source; the consumer got them all unless a loaded machine
        # delayed it past a frame interval, when the latest policy drops (and counts) the older one.
        stats = source.stats()
        assert (stats.frames, stats.kind) == (30, "webrtc")
        assert stats.delivered == len(frames) and stats.delivered + stats.dropped == 30
        assert len(frames) >= 20 and frames[-1].index == 29
        indices = [f.index for f in frames]
        assert indices == sorted(set(indices))
        assert [round(f.pts * 30) for f in frames] == indices  # pts is the clip's own time of that frame
        assert [read_marker(f.image) for f in frames] == indices  # and the picture is that frame
        assert all(f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8 for f in frames)

    run_async(scenario())


def test_webrtc_source_finish_and_close_hang_up_once(clip: Path) -> None:
    async def scenario() -> None:
        hung_up: list[str] = []

        async def on_close() -> None:
            hung_up.append("bye")

        track = FileTrack(clip, loop=True)
        source = WebRTCSource(track, "peer-2", on_close=on_close)
        source.start()
        await source.wait_for_state("live", timeout=10)
        await source.finish("the publisher deleted the session (DELETE)")
        await source.aclose()
        assert states(source) == ["connecting", "live", "ended"]
        assert source.history[-1].reason == "the publisher deleted the session (DELETE)"
        assert hung_up == ["bye"]
        assert source.stats().state == "ended"
        track.stop()

    run_async(scenario())


def test_webrtc_source_takes_only_video() -> None:
    with pytest.raises(ValueError, match="video track"):
        WebRTCSource(AudioStreamTrack(), "mic")


def test_webrtc_kind_is_refused_in_user_configs() -> None:
    with pytest.raises(ConfigError, match="published to the server"):
        parse_config(SourceConfig, {"url": "webrtc://x", "kind": "webrtc"}, source="sources[0]")


# --- the marker-aware jitter buffer ----------------------------------------------------------------------------


def _packet(seq: int, ts: int, marker: bool) -> RtpPacket:
    packet = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=ts)
    packet._data = f"<{seq}>".encode()  # type: ignore[attr-defined] - what aiortc's receiver sets: the depayloaded bytes
    return packet


@pytest.mark.parametrize(
    ("arrivals", "released"),
    [
        # (seq, timestamp, marker) in arrival order -> after which arrival (index) which frame (data) came out
        ([(1, 100, True)], {0: b"<1>"}),
        ([(1, 100, False), (2, 100, False), (3, 100, True)], {2: b"<1><2><3>"}),
        ([(1, 100, False), (3, 100, True), (2, 100, False)], {2: b"<1><2><3>"}),  # a gap holds it back
        ([(1, 100, True), (2, 200, False), (3, 200, True)], {0: b"<1>", 2: b"<2><3>"}),
        ([(1, 100, False), (2, 100, False), (3, 200, False)], {2: b"<1><2>"}),  # no marker: aiortc's own rule
    ],
)
def test_marker_jitter_buffer_releases_complete_frames_at_once(
    arrivals: list[tuple[int, int, bool]], released: dict[int, bytes]
) -> None:
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    out = {}
    for i, (seq, ts, marker) in enumerate(arrivals):
        _, frame = buffer.add(_packet(seq, ts, marker))
        if frame is not None:
            out[i] = frame.data
    assert out == released


def test_release_on_marker_swaps_the_video_receivers_buffer() -> None:
    async def scenario() -> None:
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection()
        video = pc.addTransceiver("video", direction="recvonly")
        audio = pc.addTransceiver("audio", direction="recvonly")
        assert release_frames_on_marker(video.receiver)
        assert isinstance(video.receiver._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)
        assert not release_frames_on_marker(audio.receiver)  # audio keeps aiortc's own buffer
        await pc.close()

    run_async(scenario())


# --- swapwatch publish: refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["{missing}", "http://127.0.0.1:9/whip"], 2, "file not found"),
        (["{clip}", "http://127.0.0.1:9/whip", "--size", "641x360"], 2, "--size"),
        (["{clip}", "rtsp://127.0.0.1/whip"], 2, "http:// or https://"),
        (["{clip}", "http://127.0.0.1:9/whip", "--duration", "0"], 2, "--duration"),
        (["{clip}", "http://127.0.0.1:9/whip", "--token", "s3cret-value"], 1, "cannot connect"),  # nothing listens
    ],
)
def test_publish_command_refusals(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, says: str
) -> None:
    from swapwatch.cli.main import main

    argv = ["publish", *(a.format(clip=clip, missing=tmp_path / "nope.mp4") for a in args)]
    assert main(argv) == code
    err = capsys.readouterr()
    assert says in err.err
    assert "s3cret-value" not in err.out + err.err
