"""A real browser publishes a camera through the publish page into a real server, and the alert shows up.

Headless Debian Chromium (the `chromium` package; skipped with the reason when it is not on PATH) plays
the demo clip with its face-swapped segment as its fake camera (a .y4m made from the clip), the publish
page sends it over WebRTC with WHIP and the bearer token, the monitor (the enrolled-identity reference
model) raises the alert, and the test sees it in the event API and on the dashboard, which it
screenshots into tmp_path. The browser is driven over the DevTools protocol on its websocket with
aiohttp: no selenium or playwright, nothing downloaded.

The Chromium flags are the ones FACTS.md found to work here: a fake camera from a file, loopback ICE
candidates allowed, and mDNS candidate hiding off so the server (aiortc) can reach the browser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import pytest

from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.server.whip import WHIP_INGEST
from tests.stream.conftest import run_async
from tests.stream.server.chromium import Chromium, camera_flags, chromium_path
from tests.stream.server.conftest import (
    TOKEN,
    running_server,
    server_config,
    wait_until,
)
from tests.stream.server.test_whip import loopback_ice  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="needs Debian's headless Chromium on PATH (apt-get install -y chromium)"
)


def write_y4m(clip: Path, out: Path) -> Path:
    """The clip as raw YUV4MPEG2 (what Chromium's fake camera plays, in a loop)."""
    with av.open(str(clip)) as src, av.open(str(out), "w", format="yuv4mpegpipe") as dst:
        vin = src.streams.video[0]
        rate = vin.average_rate or 20
        vout = dst.add_stream("rawvideo", rate=rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        for frame in src.decode(vin):
            frame = frame.reformat(format="yuv420p")
            frame.pts = None
            for packet in vout.encode(frame):
                dst.mux(packet)
        for packet in vout.encode():
            dst.mux(packet)
    return out


async def events(srv: Any, **query: str) -> list[dict[str, Any]]:
    async with srv.session.get(srv.url("/api/events"), params=query, headers=srv.auth) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["events"]


def test_browser_camera_published_over_whip_raises_an_alert(
    loopback_ice: None, reference_model: Path, swap_clip: DemoClip, tmp_path: Path  # noqa: F811
) -> None:
    camera = write_y4m(swap_clip.path, tmp_path / "camera.y4m")

    async def scenario() -> None:
        cfg = server_config(reference_model, tmp_path)
        async with running_server(cfg) as srv, Chromium(tmp_path / "profile", camera_flags(camera)) as browser:
            async with browser.tab(srv.url("/")) as dashboard:
                # Log the dashboard in (its token lives in this tab's sessionStorage) before anything happens.
                await dashboard.evaluate(f"sessionStorage.setItem('swapwatch.token', {json.dumps(TOKEN)}); location.reload()")
                await wait_until(lambda: dashboard.evaluate("document.readyState === 'complete' && "
                                                        "document.querySelector('#conn').dataset.state === 'live'"),
                                 timeout=20)
                async with browser.tab(srv.url("/static/publish.html?stream=browser&size=640x360")) as page:
                    assert await page.evaluate("document.querySelector('#size').value") == "640x360"  # from the URL
                    await page.evaluate(f"document.querySelector('#token').value = {json.dumps(TOKEN)}")
                    await page.evaluate("document.querySelector('#start').click()")
                    await wait_until(lambda: page.evaluate("document.body.dataset.state === 'live'"), timeout=30)

                    async def alerted() -> bool:
                        return bool(await events(srv, stream="browser", state="alert"))

                    await wait_until(alerted, timeout=2 * swap_clip.duration + 30)
                    alert = (await events(srv, stream="browser", state="alert"))[0]
                    assert alert["type"] == "state" and alert["frame_pts"] is not None

                    # The dashboard got it from the live feed: the alert banner and the log line.
                    await wait_until(lambda: dashboard.evaluate(
                        "!document.querySelector('#alerts').hidden && "
                        "document.querySelectorAll('#alert-list li[data-stream=\"browser\"]').length > 0"
                    ), timeout=2 * swap_clip.duration + 10)
                    shot = await dashboard.screenshot(tmp_path / "dashboard-alert.png")
                    print(f"dashboard screenshot: {shot}")
                    assert shot.stat().st_size > 10_000
                    logged = await dashboard.evaluate(
                        "document.querySelectorAll('#event-log li[data-stream=\"browser\"][data-state=\"alert\"]').length"
                    )
                    assert logged >= 1
                    publish_shot = await page.screenshot(tmp_path / "publish-page.png")
                    print(f"publish page screenshot: {publish_shot}")
                    frames = await page.evaluate("document.querySelector('#n-frames').textContent")
                    assert int(frames) > 0

                    # What arrived is the browser's camera at the clip's size, not a downscaled copy.
                    async with srv.session.get(srv.url("/api/streams/browser"), headers=srv.auth) as r:
                        status = await r.json()
                    assert status["source_state"] == "live"

                    await page.evaluate("document.querySelector('#stop').click()")
                    await wait_until(lambda: page.evaluate("document.body.dataset.state === 'stopped'"), timeout=10)

                async def ended() -> list[dict[str, Any]]:
                    return [e for e in await events(srv, stream="browser", type="stream") if e["source_state"] == "ended"]

                await wait_until(ended, timeout=20)
                assert "DELETE" in (await ended())[0]["reason"]

    run_async(scenario(), timeout=240)


def test_publish_page_reports_a_refused_token(
    loopback_ice: None, reference_model: Path, swap_clip: DemoClip, tmp_path: Path  # noqa: F811
) -> None:
    camera = write_y4m(swap_clip.path, tmp_path / "camera.y4m")

    async def scenario() -> None:
        cfg = server_config(reference_model, tmp_path)
        async with running_server(cfg) as srv, Chromium(tmp_path / "profile", camera_flags(camera)) as browser, \
                browser.tab(srv.url("/static/publish.html")) as page:
            await page.evaluate("document.querySelector('#token').value = 'wrong-token'")
            await page.evaluate("document.querySelector('#start').click()")
            await wait_until(lambda: page.evaluate("document.body.dataset.state === 'error'"), timeout=30)
            message = await page.evaluate("document.querySelector('#error').textContent")
            assert "refused the token" in message and "401" in message
            assert not srv.app[WHIP_INGEST].sessions

    run_async(scenario(), timeout=120)



def test_chromium_720p_camera_arrives_at_720p(loopback_ice: None, make_clip: Any, tmp_path: Path) -> None:  # noqa: F811
    """Chromium's 720p camera reaches the server at 1280x720, every frame after the first second.

    FACTS.md: Chrome dropped a 720p camera to 360p unless the answer's fmtp carried x-google bitrates,
    which the WHIP answer does by default. (In this short run Chromium kept 720p without them too; the
    hints guard the start bitrate and longer runs.)
    """
    from tests.stream.server.test_whip import whip_app

    clip = make_clip("browser_720p.mp4", width=1280, height=720, seconds=3.0)
    camera = write_y4m(clip, tmp_path / "camera720.y4m")

    async def scenario() -> None:
        async with whip_app(static=True) as h, Chromium(tmp_path / "profile", camera_flags(camera)) as browser, \
                browser.tab(h.url("/static/publish.html?stream=hd&size=1280x720")) as page:
            await page.evaluate("document.querySelector('#start').click()")
            await wait_until(lambda: page.evaluate("document.body.dataset.state === 'live'"), timeout=30)
            first = (await h.wait_frames("hd", 1, timeout=20))[0]

            def after_the_first_second() -> list[Any]:
                return [f for f in h.frames["hd"] if f.received >= first.received + 1.0]

            # 31 frames after the first second, however long a busy machine takes to deliver them
            await wait_until(lambda: len(after_the_first_second()) > 30, timeout=60)
            later = after_the_first_second()
            sizes = sorted({f.image.shape[1::-1] for f in later})
            codec = h.ingest.snapshot()[0]["codec"]
            print(f"{len(later)} frames after the first second, sizes {sizes}, codec {codec}")
            assert codec in ("H264", "VP8")
            assert len(later) > 30
            assert sizes == [(1280, 720)]
            assert h.sources["hd"].frame_size == (1280, 720)
            await page.evaluate("document.querySelector('#stop').click()")
            await h.wait_ended("hd")

    run_async(scenario(), timeout=120)
