"""A headless Chromium driven over the DevTools protocol (CDP), for the dashboard test.

Just enough of CDP for a test: open a page, evaluate JavaScript, take a screenshot. It talks to
Debian's `chromium` over its own WebSocket with aiohttp; no driver package is needed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
from pathlib import Path
from typing import Any, Self

import aiohttp

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--no-default-browser-check", "--window-size=1280,1100")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """`async with Chromium(profile_dir) as browser: page = await browser.open(url)`.

    Chromium's stderr goes to a file in the profile folder: a pipe nobody reads would fill up and
    block the browser.
    """

    def __init__(self, profile: Path) -> None:
        self.profile = profile
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
                exe, *FLAGS, f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}", "about:blank",
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
        assert self.session is not None
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?{url}") as resp:
            target = await resp.json()
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        return Page(ws)


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
                return data.get("result")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        result = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))
        return path
