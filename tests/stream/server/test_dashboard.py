"""The dashboard in headless Chromium: log in with the token, watch a real stream raise an alert on the
swapped face, see it on the tile, in the alert banner and in the event log; a screenshot is saved.

Skips with the install line when Chromium is missing (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from swapwatch.stream.bench.demo_clip import DemoClip
from tests.stream.conftest import run_async
from tests.stream.server.chromium import Chromium, chromium_path
from tests.stream.server.conftest import TOKEN, running_server, server_config

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="needs Chromium: apt-get install -y chromium")

PROBE = """!document.querySelector("#conn") ? "null" : JSON.stringify({
  conn: document.querySelector('#conn').dataset.state,
  login: !document.querySelector('#login').hidden,
  tile: (() => { const t = document.querySelector('.tile[data-stream="call"]');
                 return t ? {state: t.dataset.state, source: t.dataset.sourceState,
                             faces: [...t.querySelectorAll('.face')].map(f => [f.dataset.track, f.dataset.state, f.dataset.score])}
                          : null; })(),
  alerts: Number(document.querySelector('#alerts').dataset.count),
  alertLog: document.querySelectorAll('#event-log li[data-type="state"][data-state="alert"][data-stream="call"]').length,
  stored: sessionStorage.getItem('swapwatch.token') !== null,
})"""


async def probe(page: Any) -> dict[str, Any]:
    return json.loads(await page.evaluate(PROBE)) or {}  # {} while the page is still loading


async def until(page: Any, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await probe(page)
        if state and check(state):
            return state
        if loop.time() > deadline:
            raise AssertionError(f"dashboard never got there: {state}")
        await asyncio.sleep(0.2)


def test_dashboard_shows_the_alert(reference_model: Path, swap_clip: DemoClip, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard-alert.png"

    async def scenario() -> dict[str, Any]:
        cfg = server_config(reference_model, tmp_path, status_interval_s=0.25, file_roots=[str(swap_clip.path.parent)])
        async with running_server(cfg) as srv, Chromium(tmp_path / "profile") as browser:
            page = await browser.open(srv.url("/"))
            await until(page, lambda s: s["login"] and s["conn"] == "auth")  # 401 without a token: asks for it
            await page.evaluate(f"document.querySelector('#token').value = {json.dumps(TOKEN)};"
                                "document.querySelector('#login').requestSubmit(); true")
            await until(page, lambda s: s["conn"] == "live" and s["stored"] and not s["login"])
            added = await srv.session.post(srv.url("/api/streams"), headers=srv.auth,
                                           json={"url": str(swap_clip.path), "name": "call", "realtime": True})
            assert added.status == 201
            state = await until(page, lambda s: s["tile"] and s["tile"]["state"] == "alert" and s["alerts"] > 0
                                and s["alertLog"] > 0 and any(f[1] == "alert" for f in s["tile"]["faces"]))
            await page.screenshot(shot)
            return state

    state = run_async(scenario(), timeout=120)
    assert state["tile"]["source"] == "live"
    assert any(face_state == "alert" and float(score) >= 0.8 for _, face_state, score in state["tile"]["faces"])
    assert shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")  # shown with -s; pytest keeps the last runs' tmp dirs
