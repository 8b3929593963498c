"""End to end through the real server: `swapwatch publish`'s client sends the demo clip with a face-swapped
segment over WHIP into `serve_monitor` (the monitor, the API, the event feed), and the alert comes out of
the event API. The model is the enrolled-identity reference model of the pipeline tests (a real ONNX model
run by ONNX Runtime, whose scores rise on the swapped face), so the alert is certain within one play of the
clip. The CLI itself is run as a subprocess against the same server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.bench.whip_client import FileTrack, WhipClientError, publish
from tests.stream.conftest import run_async
from tests.stream.server.conftest import TOKEN, running_server, server_config, wait_until
from tests.stream.server.test_whip import loopback_ice  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[3]


async def events(srv: Any, **query: str) -> list[dict[str, Any]]:
    async with srv.session.get(srv.url("/api/events"), params=query, headers=srv.auth) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["events"]


def test_whip_published_swap_raises_an_alert(
    loopback_ice: None, reference_model: Path, swap_clip: DemoClip, tmp_path: Path  # noqa: F811
) -> None:
    async def scenario() -> None:
        cfg = server_config(reference_model, tmp_path)
        async with running_server(cfg) as srv:
            with pytest.raises(WhipClientError) as refused:
                await publish(srv.url("/whip/caller"), FileTrack(swap_clip.path), token=None)
            assert refused.value.status == 401

            session = await publish(srv.url("/whip/caller"), FileTrack(swap_clip.path), token=TOKEN)
            await session.wait_connected()

            async def alerted() -> bool:
                return bool(await events(srv, stream="caller", state="alert"))

            await wait_until(alerted, timeout=swap_clip.duration + 20)
            alert = (await events(srv, stream="caller", state="alert"))[0]
            assert alert["stream"] == "caller" and alert["state"] == "alert"
            # The alert is about the swapped span of the clip: pts is the sender's media time.
            start, end = swap_clip.segment
            assert start <= alert["frame_pts"] <= end + 2.0
            assert alert["latency_ms"] is not None and alert["latency_ms"] >= 0

            async with srv.session.get(srv.url("/api/streams/caller"), headers=srv.auth) as r:
                assert r.status == 200
                stream = await r.json()
            # a WHIP publication is a `webrtc` stream named by its path, live and scored while it plays
            assert (stream["kind"], stream["url"], stream["name"]) == ("webrtc", "webrtc://caller", "caller")
            assert stream["running"] and stream["source_state"] == "live" and stream["faces_scored"] > 0

            assert await session.close() == 200

            async def ended() -> list[dict[str, Any]]:
                return [e for e in await events(srv, stream="caller", type="stream") if e["source_state"] == "ended"]

            await wait_until(ended, timeout=20)
            assert "DELETE" in (await ended())[0]["reason"]

    run_async(scenario(), timeout=180)


def test_publish_command_streams_until_sigint(
    loopback_ice: None, reference_model: Path, swap_clip: DemoClip, tmp_path: Path  # noqa: F811
) -> None:
    """`swapwatch publish` in its own process: frames reach the monitor, SIGINT sends DELETE, exit 0.

    The subprocess's aiortc is not patched, so it offers its non-loopback host addresses; this
    process (patched) answers from 127.0.0.1 and the kernel routes between them locally.
    """
    async def scenario() -> None:
        cfg = server_config(reference_model, tmp_path)
        async with running_server(cfg) as srv:
            env = {**os.environ, "SWAPWATCH_TOKEN": TOKEN}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "swapwatch", "publish", str(swap_clip.path), srv.url("/whip/cli"),
                "--loop", cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            try:
                async def streaming() -> bool:
                    async with srv.session.get(srv.url("/api/streams/cli"), headers=srv.auth) as r:
                        return r.status == 200 and (await r.json()).get("frames", 0) > 10

                await wait_until(streaming, timeout=30)
                async with srv.session.get(srv.url("/api/streams/cli"), headers=srv.auth) as r:
                    stream = await r.json()
                assert stream["running"] and stream["source_state"] == "live" and stream["kind"] == "webrtc"
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGINT)
            out = (await asyncio.wait_for(proc.communicate(), 20))[0].decode()
            assert proc.returncode == 0, out
            assert "SIGINT received" in out and "DELETE -> 200" in out, out
            assert TOKEN not in out

            # The DELETE ends the session: the stream's source ends (its last event says why) and the
            # server takes the stream off its list.
            async def ended() -> list[dict[str, Any]]:
                return [e for e in await events(srv, stream="cli", type="stream") if e["source_state"] == "ended"]

            await wait_until(ended, timeout=20)
            assert "DELETE" in (await ended())[0]["reason"]

            async def removed() -> bool:
                async with srv.session.get(srv.url("/api/streams/cli"), headers=srv.auth) as r:
                    return r.status == 404

            await wait_until(removed, timeout=20)
            async with srv.session.get(srv.url("/api/streams"), headers=srv.auth) as r:
                assert "cli" not in [s["name"] for s in (await r.json())["streams"]]

    run_async(scenario(), timeout=120)


def test_removing_a_webrtc_stream_through_the_api_hangs_up(
    loopback_ice: None, reference_model: Path, swap_clip: DemoClip, tmp_path: Path  # noqa: F811
) -> None:
    async def scenario() -> None:
        cfg = server_config(reference_model, tmp_path)
        async with running_server(cfg) as srv:
            session = await publish(srv.url("/whip/desk"), FileTrack(swap_clip.path, loop=True), token=TOKEN)

            async def streaming() -> bool:
                async with srv.session.get(srv.url("/api/streams/desk"), headers=srv.auth) as r:
                    return r.status == 200 and (await r.json()).get("frames", 0) > 5

            await wait_until(streaming, timeout=30)
            async with srv.session.delete(srv.url("/api/streams/desk"), headers=srv.auth) as r:
                assert r.status == 200, await r.text()
            await wait_until(lambda: session.pc.connectionState == "closed", timeout=20)
            assert await session.close() == 404  # the server already ended the session
            async with srv.session.get(srv.url("/api/streams/desk"), headers=srv.auth) as r:
                assert r.status == 404 or (await r.json())["source_state"] == "ended"

    run_async(scenario(), timeout=120)


def test_api_whip_and_offer_streams_share_one_limit(
    loopback_ice: None, reference_model: Path, swap_clip: DemoClip, tmp_path: Path  # noqa: F811
) -> None:
    """server.max_streams holds across every ingest path: API streams, WHIP sessions and /offer."""
    from tests.stream.server.conftest import LOOPBACK_NETWORKS
    from tests.stream.server.test_whip import make_offer

    async def scenario() -> None:
        cfg = server_config(reference_model, tmp_path, max_streams=2, file_roots=[str(swap_clip.path.parent)],
                            allowed_networks=LOOPBACK_NETWORKS)
        async with running_server(cfg) as srv:
            body = {"url": str(swap_clip.path), "name": "api-1", "realtime": True}
            async with srv.session.post(srv.url("/api/streams"), json=body, headers=srv.auth) as r:
                assert r.status == 201, await r.text()
            first = await publish(srv.url("/whip/whip-1"), FileTrack(swap_clip.path, loop=True), token=TOKEN)
            # Full: a third stream is refused whichever way it comes.
            with pytest.raises(WhipClientError) as whip_full:
                await publish(srv.url("/whip/whip-2"), FileTrack(swap_clip.path, loop=True), token=TOKEN)
            assert whip_full.value.status == 429 and "limit 2" in str(whip_full.value)
            offer = {"sdp": await make_offer("video"), "type": "offer", "stream": "offer-1"}
            async with srv.session.post(srv.url("/offer"), json=offer, headers=srv.auth) as r:
                assert r.status == 429, await r.text()
            body2 = {**body, "name": "api-2"}
            async with srv.session.post(srv.url("/api/streams"), json=body2, headers=srv.auth) as r:
                assert r.status == 429 and "server.max_streams" in (await r.json())["error"]
            # The refused sessions left nothing behind, and freeing a slot lets the next one in.
            async with srv.session.get(srv.url("/api/streams"), headers=srv.auth) as r:
                assert sorted(s["name"] for s in (await r.json())["streams"]) == ["api-1", "whip-1"]
            async with srv.session.delete(srv.url("/api/streams/api-1"), headers=srv.auth) as r:
                assert r.status == 200
            second = await publish(srv.url("/whip/whip-2"), FileTrack(swap_clip.path, loop=True), token=TOKEN)
            await second.close()
            await first.close()

    run_async(scenario(), timeout=120)
