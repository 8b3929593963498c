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
import pytest

from swapwatch.stream.config import MonitorConfig
from swapwatch.stream.demo_clip import DemoClip
from tests.stream.test_pipeline import (
    make_reference_model,
    make_test_clip,
    monitor_config,
)

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def reference_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_reference_model(tmp_path_factory)


@pytest.fixture(scope="session")
def swap_clip(tmp_path_factory: pytest.TempPathFactory) -> DemoClip:
    """8 s at 20 fps, the left face swapped at 2-5 s (the reference model raises it to alert)."""
    return make_test_clip(tmp_path_factory)


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
