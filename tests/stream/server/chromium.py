"""A headless Chromium driven over the DevTools protocol (CDP), for the dashboard and browser tests.

Just enough of CDP for a test: open a tab, evaluate JavaScript, take a screenshot; optionally a fake
camera playing a .y4m file (`camera_flags`), the flags FACTS.md found to work for WebRTC here. It talks to
Debian's `chromium` over its own WebSocket with aiohttp; no driver package is needed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import aiohttp

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--no-default-browser-check", "--window-size=1280,1100")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def camera_flags(camera: Path) -> tuple[str, ...]:
    """A fake camera playing `camera` (.y4m), no permission prompt, loopback ICE candidates allowed and
    mDNS candidate hiding off, so the server (aiortc) can reach the browser."""
    return ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}", "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required")


class Chromium:
    """`async with Chromium(profile_dir) as browser: page = await browser.open(url)`.

    Chromium's stderr goes to a file in the profile folder: a pipe nobody reads would fill up and
    block the browser.
    """

    def __init__(self, profile: Path, flags: Sequence[str] = ()) -> None:
        self.profile = profile
        self.flags = tuple(flags)
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        from tests.stream.server.conftest import free_port

        exe = chromium_path()
        assert exe is not None
        self.profile.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        with (self.profile / "chromium.log").open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                exe, *FLAGS, *self.flags, f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}", "about:blank",
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )
        self.session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                async with self.session.get(f"http://127.0.0.1:{self.port}/json/version") as resp:
                    if resp.status == 200:
                        return self
            except aiohttp.ClientError:
                pass
            if self.proc.returncode is not None or loop.time() > deadline:
                await self.__aexit__()
                raise RuntimeError(f"chromium did not open its DevTools port; see {self.profile / 'chromium.log'}")
            await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def open(self, url: str) -> Page:
        """A new tab at `url` (left open until the browser closes)."""
        return (await self._new_tab(url))[0]

    @contextlib.asynccontextmanager
    async def tab(self, url: str) -> AsyncIterator[Page]:
        """A new tab at `url`, loaded, closed again on exit."""
        from tests.stream.server.conftest import wait_until

        page, target_id = await self._new_tab(url)
        try:
            await page.call("Page.enable")
            await wait_until(lambda: page.evaluate("location.href !== 'about:blank' && document.readyState === 'complete'"),
                             timeout=20)
            yield page
        finally:
            await page.ws.close()
            assert self.session is not None
            async with self.session.get(f"http://127.0.0.1:{self.port}/json/close/{target_id}"):
                pass

    async def _new_tab(self, url: str) -> tuple[Page, str]:
        assert self.session is not None
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?{quote(url, safe='')}") as resp:
            target = await resp.json()
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        return Page(ws), target["id"]


class Page:
    """One tab: `evaluate(js)` returns the value; `screenshot(path)` writes a PNG."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> Any:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection closed: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        result = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))
        return path
