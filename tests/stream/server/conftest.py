"""Fixtures for the server tests: the enrolled-identity model and the swap clip from test_pipeline.py, a
monitor config for them, and a running monitor + app on a free loopback port.

Everything is real: the demo clip (H.264, real faces, a known swapped span), the embedded face detector,
ONNX Runtime, the batcher, the smoother, and an aiohttp server on 127.0.0.1 that the tests talk to over
TCP with a real client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from swapwatch.stream.config import MonitorConfig
from tests.stream.test_pipeline import (
    monitor_config,
)

TOKEN = "test-token-0123456789abcdef"

LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]
"""`server.allowed_networks` for tests whose API streams come from servers on this machine (denied by default)."""


def server_config(model: Path, tmp: Path, sources: list[dict[str, Any]] | None = None, **server: Any) -> MonitorConfig:
    """A test config: the reference model, JSONL events, metrics on, and a `server` section."""
    return monitor_config(sources or [], model, tmp, server={"port": 0, "token": TOKEN, **server},
                          sinks={"jsonl": {"path": str(tmp / "events.jsonl")}, "metrics": {}})


@dataclass
class Running:
    """A monitor with its app served on 127.0.0.1:port, plus a client session."""

    monitor: Any
    app: Any
    base: str
    session: aiohttp.ClientSession
    feed: Any

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


@contextlib.asynccontextmanager
async def running_server(cfg: MonitorConfig, *, token: str | None = TOKEN) -> AsyncIterator[Running]:
    """Start a Monitor in serve mode and its app on a free loopback port; stop both at the end."""
    from swapwatch.stream.server.app import serve_monitor

    async with serve_monitor(cfg, token=token) as served, aiohttp.ClientSession() as session:
        yield Running(served.monitor, served.app, served.base_url, session, served.feed)


async def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Poll `predicate()` (sync or async) until it is truthy; AssertionError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


# --- a server in a thread, shared by the table tests of one module ------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    def json(self) -> Any:
        import json

        return json.loads(self.text)


class ServerThread:
    """`serve_monitor` on its own event loop in a thread, so sync tests (and pytest parametrization) can
    share one warm server; `http()` talks to it over TCP with the standard library's client."""

    def __init__(self, cfg: MonitorConfig, token: str | None = TOKEN) -> None:
        import threading

        self.cfg, self.token = cfg, token
        self.base = ""
        self.served: Any = None
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="test-server", daemon=True)

    async def _main(self) -> None:
        from swapwatch.stream.server.app import serve_monitor

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with serve_monitor(self.cfg, token=self.token) as served:
                self.served, self.base = served, served.base_url
                self._ready.set()
                await self._stop.wait()
        except BaseException as err:  # noqa: BLE001 - reported to the test thread
            self.error = err
        finally:
            self._ready.set()

    def __enter__(self) -> ServerThread:  # noqa: PYI034 - a plain test helper, never subclassed
        self._thread.start()
        self._ready.wait(120)
        if self.error is not None or not self.base:
            raise RuntimeError(f"test server did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop (e.g. to look at the monitor) and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def monitor(self) -> Any:
        return self.served.monitor

    def http(self, method: str, path: str, *, body: bytes | str | None = None, json_body: Any = None,
             headers: dict[str, str] | None = None, token: str | None = "default") -> Reply:
        import json
        import urllib.error
        import urllib.request

        hdrs = dict(headers or {})
        tok = self.token if token == "default" else token
        if tok is not None:
            hdrs.setdefault("Authorization", f"Bearer {tok}")
        data = body.encode() if isinstance(body, str) else body
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return Reply(resp.status, resp.headers, resp.read().decode())
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.headers, err.read().decode())


def free_port() -> int:
    """A TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
