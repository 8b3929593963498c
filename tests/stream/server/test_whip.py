"""WHIP ingest with real peers: an aiortc publisher (swapwatch's own WHIP client) sends a real H.264 clip,
re-encoded live as VP8 or H.264, over loopback into an aiohttp app with `add_whip_routes`, served on a real
TCP port. The clip carries its frame index as a barcode, so the tests read back exactly which frames
arrived after encoding, RTP, decoding and conversion.

aioice leaves 127.0.0.1 out of its host candidates, so the `loopback_ice` fixture patches
`aioice.ice.get_host_addresses` for the test only (FACTS.md, "Video").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection

from swapwatch.stream.bench.whip_client import FileTrack, WhipClientError, publish
from swapwatch.stream.server.sdp import add_bitrate_hints
from swapwatch.stream.server.whip import (
    WHIP_INGEST,
    StreamRejected,
    WhipIngest,
    add_whip_routes,
)
from swapwatch.stream.server.whip_config import WhipConfig
from swapwatch.stream.sources import Frame, Source
from swapwatch.stream.sources.webrtc import WebRTCSource
from tests.stream.conftest import ClipFactory, read_marker, run_async


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let aiortc use 127.0.0.1 as its only host candidate (test-only; FACTS.md)."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=False: ["127.0.0.1"])
    yield


@pytest.fixture(scope="module")
def clip(make_clip: ClipFactory) -> Path:
    """640x360, 30 fps, 2 s, with the frame-index barcode."""
    return make_clip("whip_360p.mp4", seconds=2.0)


@dataclass
class Harness:
    """An aiohttp app with the WHIP routes on 127.0.0.1, consuming every published stream like the monitor."""

    base: str
    ingest: WhipIngest
    sources: dict[str, WebRTCSource] = field(default_factory=dict)
    frames: dict[str, list[Frame]] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)
    reject: StreamRejected | None = None
    pace: Callable[[Source, Frame], Awaitable[None]] | None = None
    """Awaited by the consumer after each frame it takes (a slow consumer)."""

    def url(self, path: str = "/whip") -> str:
        return self.base + path

    async def wait_frames(self, name: str, n: int, timeout: float = 20.0) -> list[Frame]:
        await wait_for(lambda: len(self.frames.get(name, [])) >= n, timeout)
        return self.frames[name]

    async def wait_ended(self, name: str, timeout: float = 20.0) -> None:
        await wait_for(lambda: name in self.ended and not self.ingest.sessions, timeout)


async def wait_for(predicate: Any, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def whip_app(*, static: bool = False, **config: Any) -> AsyncIterator[Harness]:
    """The WHIP routes (with `config`) on 127.0.0.1; `static=True` also serves the publish page at /static/."""
    app = web.Application()
    if static:
        from importlib import resources

        app.router.add_static("/static/", Path(str(resources.files("swapwatch.stream.server") / "static")))
    holder: dict[str, Harness] = {}

    async def consume(source: Source, h: Harness) -> None:
        async for frame in source.frames():
            h.frames.setdefault(source.name, []).append(frame)
            if h.pace is not None:
                await h.pace(source, frame)

    async def on_source(source: Source) -> str:
        h = holder["h"]
        if h.reject is not None:
            raise h.reject
        assert isinstance(source, WebRTCSource)
        h.sources[source.name] = source
        h.consumers.append(asyncio.ensure_future(consume(source, h)))
        return source.name

    async def on_end(name: str) -> None:
        holder["h"].ended.append(name)

    ingest = add_whip_routes(app, on_source=on_source, on_end=on_end, config=WhipConfig(**config))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    h = Harness(base=f"http://127.0.0.1:{port}", ingest=ingest)
    holder["h"] = h
    assert app[WHIP_INGEST] is ingest
    try:
        yield h
    finally:
        await runner.cleanup()  # on_shutdown ends every session left
        await asyncio.gather(*h.consumers, return_exceptions=True)


async def make_offer(*kinds: str) -> str:
    """A real SDP offer from aiortc with one sendonly transceiver per kind (closed right after)."""
    pc = RTCPeerConnection()
    for kind in kinds:
        pc.addTransceiver(kind, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def own_threads() -> set[str]:
    """Threads other than asyncio's default executor (a pool that lives as long as the loop, by design)."""
    return {f"{t.name}#{t.ident}" for t in threading.enumerate() if not t.name.startswith("asyncio_")}


def check_frames(frames: list[Frame], fps: float = 30.0) -> None:
    """Frames are in order, pts on the sender's media clock, and each image is the frame its pts says."""
    indices = [f.index for f in frames]
    assert indices == sorted(indices)
    pts = [f.pts for f in frames]
    assert all(p is not None for p in pts)
    assert all(b > a for a, b in itertools.pairwise(pts)), "pts must increase"
    assert all(b.received >= a.received for a, b in itertools.pairwise(frames))
    for frame in frames:
        assert frame.image.shape == (360, 640, 3)
        # The barcode survives VP8/H.264 at these rates: the picture is the one sent at that media time.
        assert read_marker(frame.image) == round(frame.pts * fps) % 60


# --- publish, receive, end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_publish_then_delete_ends_the_stream(loopback_ice: None, clip: Path, codec: str) -> None:
    async def scenario() -> None:
        async with whip_app() as h:
            session = await publish(h.url("/whip/lobby"), FileTrack(clip, loop=True), codec=codec)
            assert session.location.startswith(h.url("/whip/resource/"))
            assert session.etag
            frames = await h.wait_frames("lobby", 20)
            source = h.sources["lobby"]
            assert source.state == "live" and source.kind == "webrtc" and source.policy == "latest"
            check_frames(list(frames))
            assert await session.close() == 200
            await h.wait_ended("lobby")
            assert source.state == "ended"
            assert "DELETE" in source.history[-1].reason
            assert h.ended == ["lobby"]
            stats = source.stats()
            assert stats.frames >= 20 and stats.frames == stats.delivered + stats.dropped + stats.queued

    run_async(scenario(), timeout=60)


def test_peer_closing_without_delete_ends_the_stream(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app() as h:
            session = await publish(h.url("/whip"), FileTrack(clip, loop=True))
            frames = await h.wait_frames("webrtc-1", 5)
            assert frames
            await session.pc.close()  # RTCP BYE + DTLS close, no DELETE
            await h.wait_ended("webrtc-1")
            source = h.sources["webrtc-1"]
            assert source.state == "ended"
            assert source.history[-1].new == "ended"
            # The session resource is gone: a late DELETE gets 404.
            assert await session.close() == 404

    run_async(scenario(), timeout=60)


def test_peer_that_stops_sending_is_ended_by_the_media_timeout(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app(media_timeout_s=1.0) as h:
            track = FileTrack(clip, loop=True)
            session = await publish(h.url("/whip/quiet"), track)
            await h.wait_frames("quiet", 5)
            track.stop()  # the sender stops sending, without BYE, and the connection stays up (ICE consent)
            await h.wait_ended("quiet", timeout=10)
            assert "media timeout" in h.sources["quiet"].history[-1].reason
            await session.close()

    run_async(scenario(), timeout=60)


def test_monitor_closing_the_source_hangs_up(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app() as h:
            session = await publish(h.url("/whip/gone"), FileTrack(clip, loop=True))
            await h.wait_frames("gone", 3)
            await h.sources["gone"].aclose()  # e.g. the stream removed through the API
            await h.wait_ended("gone")
            await wait_for(lambda: session.pc.connectionState == "closed", 15)
            await session.close()

    run_async(scenario(), timeout=60)


def test_slow_consumer_gets_the_newest_frames_and_drops_are_counted(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app() as h:
            async def two_newer_frames_arrive(source: Source, frame: Frame) -> None:
                # slower than the stream whatever the machine's speed: back only once frames index+1 and
                # index+2 were received, so the one-frame queue had to drop index+1 (or once it ended)
                await wait_for(lambda: source.stats().frames >= frame.index + 3 or source.state == "ended", 20)

            h.pace = two_newer_frames_arrive
            session = await publish(h.url("/whip/slow"), FileTrack(clip, loop=True))
            taken = [f.index for f in list(await h.wait_frames("slow", 6))]
            stats = h.sources["slow"].stats()
            gaps = [b - a for a, b in itertools.pairwise(taken)]
            assert all(gap >= 2 for gap in gaps), taken  # the newest frame each time, never a stale queued one
            assert stats.dropped >= sum(gap - 1 for gap in gaps)  # every frame skipped was counted as dropped
            assert stats.frames == stats.delivered + stats.dropped + stats.queued
            await session.close()

    run_async(scenario(), timeout=60)


def test_json_offer_form(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app() as h:
            pc = RTCPeerConnection()
            pc.addTransceiver(FileTrack(clip, loop=True), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            async with aiohttp.ClientSession() as http:
                body = {"sdp": pc.localDescription.sdp, "type": "offer", "stream": "json-cam"}
                async with http.post(h.url("/offer"), json=body) as r:
                    assert r.status == 200, await r.text()
                    answer = await r.json()
                assert answer["type"] == "answer" and answer["streams"] == ["json-cam"]
                assert r.headers["Location"] == answer["location"] == f"/whip/resource/{answer['session']}"
                from aiortc import RTCSessionDescription

                await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
                await h.wait_frames("json-cam", 5)
                async with http.delete(h.url(answer["location"])) as r:
                    assert r.status == 200
            await h.wait_ended("json-cam")
            await pc.close()

    run_async(scenario(), timeout=60)


@pytest.mark.parametrize(
    ("server_codecs", "client_codec", "expected"),
    [
        (["H264", "VP8"], None, "H264"),  # the client offers VP8 first; the server's order wins
        (["VP8", "H264"], None, "VP8"),
        (["H264", "VP8"], "vp8", "VP8"),  # a VP8-only publisher still gets in
        (["H264"], "vp8", 400),
    ],
)
def test_the_servers_codec_order_decides(
    loopback_ice: None, clip: Path, server_codecs: list[str], client_codec: str | None, expected: str | int
) -> None:
    async def scenario() -> None:
        async with whip_app(video_codecs=server_codecs) as h:
            if isinstance(expected, int):
                with pytest.raises(WhipClientError) as refused:
                    await publish(h.url("/whip/c"), FileTrack(clip), codec=client_codec)
                assert refused.value.status == expected and "no codec in common" in str(refused.value)
                return
            session = await publish(h.url("/whip/c"), FileTrack(clip, loop=True), codec=client_codec)
            assert [s["codec"] for s in h.ingest.snapshot()] == [expected]
            frames = await h.wait_frames("c", 10)
            check_frames(list(frames))
            await session.close()

    run_async(scenario(), timeout=60)


def test_answer_carries_chrome_bitrate_hints(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app(start_bitrate_kbps=2000, min_bitrate_kbps=800, max_bitrate_kbps=5000) as h:
            session = await publish(h.url("/whip/hints"), FileTrack(clip, loop=True))
            video = session.answer.split("m=video", 1)[1]
            assert "x-google-start-bitrate=2000;x-google-min-bitrate=800;x-google-max-bitrate=5000" in video
            await h.wait_frames("hints", 3)  # aiortc, as a sender, accepts the munged answer
            await session.close()

    run_async(scenario(), timeout=60)


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body", "status", "says"),
    [
        ("POST", "/whip", "text/plain", "OFFER", 415, "Content-Type must be application/sdp"),
        ("POST", "/whip", "application/sdp", "hello", 400, "must start with 'v=0'"),
        ("POST", "/whip", "application/sdp", "v=0\r\ns=-\r\n", 400, "no media section"),
        ("POST", "/whip", "application/sdp", "AUDIO", 400, "no video in the offer"),
        ("POST", "/whip", "application/sdp", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=garbage\r\n", 400,
         "malformed SDP offer"),
        ("POST", "/whip", "application/sdp", "VIDEO_NO_CODEC", 400, "no codec in common"),
        ("POST", "/whip", "application/sdp", "HUGE", 413, "body too large"),
        ("POST", "/whip/bad name!", "application/sdp", "OFFER", 400, "stream name"),
        ("POST", "/whip", "application/sdp", b"v=0\xff\xfe", 400, "not UTF-8"),
        ("DELETE", "/whip/resource/nope", None, None, 404, "no such WHIP session"),
        ("PATCH", "/whip/resource/nope", "application/trickle-ice-sdpfrag", "a=x", 404, "no such WHIP session"),
        ("POST", "/offer", "application/sdp", "OFFER", 415, "application/json"),
        ("POST", "/offer", "application/json", "{not json", 400, "not JSON"),
        ("POST", "/offer", "application/json", '{"sdp": "v=0", "type": "answer"}', 400, "type must be 'offer'"),
        ("POST", "/offer", "application/json", '{"sdp": "v=0", "extra": 1}', 400, "unknown field(s) extra"),
        ("POST", "/offer", "application/json", "HUGE", 413, "body too large"),
    ],
)
def test_bad_requests_get_their_status(
    loopback_ice: None, method: str, path: str, content_type: str | None, body: str | bytes | None, status: int,
    says: str,
) -> None:
    async def scenario() -> None:
        video_offer = await make_offer("video")
        payload: str | bytes | None = {
            "OFFER": video_offer,
            "AUDIO": await make_offer("audio"),
            "VIDEO_NO_CODEC": video_offer.replace("VP8/90000", "XYZ/90000").replace("H264/90000", "XYZ/90000"),
            "HUGE": "v=0\r\n" + "a=x\r\n" * 20_000,
        }.get(body, body) if isinstance(body, str) else body
        async with whip_app(max_offer_bytes=64 * 1024) as h, aiohttp.ClientSession() as http:
            headers = {"Content-Type": content_type} if content_type else {}
            async with http.request(method, h.url(path), data=payload, headers=headers) as r:
                text = await r.text()
                assert r.status == status, text
                assert says in text
                if status == 415 and path == "/whip":
                    assert r.headers["Accept-Post"] == "application/sdp"
            assert not h.ingest.sessions and not h.sources  # nothing half-built is left

    run_async(scenario(), timeout=30)


def test_patch_on_a_live_session_is_405_with_allow(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app() as h, aiohttp.ClientSession() as http:
            session = await publish(h.url("/whip"), FileTrack(clip, loop=True))
            headers = {"Content-Type": "application/trickle-ice-sdpfrag"}
            async with http.patch(session.location, data="a=end-of-candidates\r\n", headers=headers) as r:
                assert r.status == 405
                assert r.headers["Allow"] == "DELETE"
            async with http.options(h.url("/whip/cam")) as r:
                assert r.status == 204
                assert r.headers["Accept-Post"] == "application/sdp"
            await session.close()

    run_async(scenario(), timeout=30)


def test_limits_conflicts_and_rejections(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app(max_sessions=1) as h:
            first = await publish(h.url("/whip/one"), FileTrack(clip, loop=True))
            with pytest.raises(WhipClientError) as full:
                await publish(h.url("/whip/two"), FileTrack(clip, loop=True))
            assert full.value.status == 503
            await first.close()
            await h.wait_ended("one")
        async with whip_app(max_sessions=4) as h:
            first = await publish(h.url("/whip/same"), FileTrack(clip, loop=True))
            with pytest.raises(WhipClientError) as taken:
                await publish(h.url("/whip/same"), FileTrack(clip, loop=True))
            assert taken.value.status == 409
            h.reject = StreamRejected("a file stream is already called 'other'")
            with pytest.raises(WhipClientError) as rejected:
                await publish(h.url("/whip/other"), FileTrack(clip, loop=True))
            assert rejected.value.status == 409 and "already called 'other'" in str(rejected.value)
            assert list(h.ingest.sessions) == [s["session"] for s in h.ingest.snapshot()]
            assert len(h.ingest.sessions) == 1  # the refused sessions were torn down
            await first.close()

    run_async(scenario(), timeout=60)


def test_nothing_leaks_after_publish_and_leave_cycles(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app() as h:
            baseline_tasks = {t for t in asyncio.all_tasks() if not t.done()}
            baseline_threads = own_threads()
            server_pcs: list[weakref.ref[Any]] = []
            source_refs: list[weakref.ref[Any]] = []
            for cycle in range(4):
                name = f"cycle{cycle}"
                session = await publish(h.url(f"/whip/{name}"), FileTrack(clip, loop=True))
                server_pcs.extend(weakref.ref(s.pc) for s in h.ingest.sessions.values())
                await h.wait_frames(name, 3)
                source_refs.append(weakref.ref(h.sources[name]))
                if cycle % 2:
                    await session.close()
                else:
                    await session.pc.close()
                    session.track.stop()
                await h.wait_ended(name)
                del session
            await asyncio.gather(*h.consumers)
            h.consumers.clear()
            h.sources.clear()
            h.frames.clear()
            assert h.ended == [f"cycle{i}" for i in range(4)]
            await wait_for(lambda: own_threads() <= baseline_threads, 10)
            gc.collect()
            assert not h.ingest.sessions
            assert [r for r in server_pcs if r() is not None] == []
            assert [r for r in source_refs if r() is not None] == []
            leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline_tasks - {asyncio.current_task()}
            assert leftover == set(), [t.get_name() for t in leftover]

    run_async(scenario(), timeout=120)


def test_shutdown_ends_every_session(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        sessions = []
        async with whip_app() as h:
            for name in ("a", "b"):
                sessions.append(await publish(h.url(f"/whip/{name}"), FileTrack(clip, loop=True)))
            await h.wait_frames("a", 2)
            await h.wait_frames("b", 2)
        assert sorted(h.ended) == ["a", "b"]
        assert all(s.state == "ended" for s in h.sources.values())
        for s in sessions:
            await wait_for(lambda s=s: s.pc.connectionState == "closed", 15)
            await s.close()

    run_async(scenario(), timeout=60)


# --- pieces -------------------------------------------------------------------------------------------------------

OFFER_FRAGMENT = "\r\n".join([
    "v=0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f",
    "",
])


@pytest.mark.parametrize(
    ("hints", "expected_lines", "absent"),
    [
        ({"start_kbps": 2500, "min_kbps": 1000, "max_kbps": 6000},
         ["a=fmtp:96 x-google-start-bitrate=2500;x-google-min-bitrate=1000;x-google-max-bitrate=6000",
          ("a=fmtp:102 packetization-mode=1;profile-level-id=42e01f;x-google-start-bitrate=2500;"
           "x-google-min-bitrate=1000;x-google-max-bitrate=6000"),
          "a=fmtp:97 apt=96", "a=fmtp:111 minptime=10;useinbandfec=1"], []),
        ({"start_kbps": None, "min_kbps": 800, "max_kbps": None},
         ["a=fmtp:96 x-google-min-bitrate=800"], ["x-google-start-bitrate"]),
        ({"start_kbps": None, "min_kbps": None, "max_kbps": None}, [], ["x-google"]),
    ],
)
def test_bitrate_hints_touch_only_video_codecs(hints: dict[str, int | None], expected_lines: list[str],
                                               absent: list[str]) -> None:
    out = add_bitrate_hints(OFFER_FRAGMENT, **hints)
    lines = out.split("\r\n")
    for line in expected_lines:
        assert line in lines
    for text in absent:
        assert text not in out
    assert add_bitrate_hints(out, **hints) == out  # applying twice changes nothing
    if not any(hints.values()):
        assert out == OFFER_FRAGMENT


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"max_sessions": 0}, "max_sessions"),
        ({"min_bitrate_kbps": 5000, "max_bitrate_kbps": 1000}, "min_bitrate_kbps"),
        ({"start_bitrate_kbps": 100, "min_bitrate_kbps": 500}, "start_bitrate_kbps"),
        ({"ice_servers": [{"urls": ["http://example.org"]}]}, "stun:"),
        ({"turn": "x"}, "turn"),
    ],
)
def test_whip_config_names_the_bad_field(fields: dict[str, Any], says: str) -> None:
    from swapwatch.config import parse_config
    from swapwatch.errors import ConfigError

    with pytest.raises(ConfigError, match=says):
        parse_config(WhipConfig, fields, source="whip")


def test_concurrent_publishers_up_to_the_limit(loopback_ice: None, clip: Path) -> None:
    async def scenario() -> None:
        async with whip_app(max_sessions=3) as h:
            results = await asyncio.gather(
                *(publish(h.url(f"/whip/p{i}"), FileTrack(clip, loop=True)) for i in range(4)),
                return_exceptions=True,
            )
            sessions = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, WhipClientError)]
            assert len(sessions) == 3 and [e.status for e in refused] == [503]
            names = sorted(s for snap in h.ingest.snapshot() for s in snap["streams"])
            await asyncio.gather(*(h.wait_frames(name, 3) for name in names))
            await asyncio.gather(*(s.close() for s in sessions))
            await wait_for(lambda: not h.ingest.sessions and len(h.ended) == 3, 20)

    run_async(scenario(), timeout=60)


def test_one_stream_per_session_whatever_the_offer_holds(loopback_ice: None, clip: Path) -> None:
    """An offer with three video sections makes one stream; the others are answered inactive."""

    async def scenario() -> None:
        async with whip_app() as h:
            pc = RTCPeerConnection()
            tracks = [FileTrack(clip, loop=True) for _ in range(3)]
            for track in tracks:
                pc.addTrack(track)
            await pc.setLocalDescription(await pc.createOffer())
            async with aiohttp.ClientSession() as http:
                async with http.post(h.url("/whip/multi"), data=pc.localDescription.sdp,
                                     headers={"Content-Type": "application/sdp"}) as resp:
                    assert resp.status == 201, await resp.text()
                    answer = await resp.text()
                    location = resp.headers["Location"]
                from aiortc import RTCSessionDescription

                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                sections = answer.split("m=video ")[1:]
                assert len(sections) == 3
                assert ["a=inactive" in s for s in sections] == [False, True, True]
                await h.wait_frames("multi", 3)
                assert list(h.sources) == ["multi"]
                assert [s["streams"] for s in h.ingest.snapshot()] == [["multi"]]
                async with http.delete(h.base + location if location.startswith("/") else location) as resp:
                    assert resp.status == 200
            await h.wait_ended("multi")
            await pc.close()
            for track in tracks:
                track.stop()

    run_async(scenario(), timeout=60)
