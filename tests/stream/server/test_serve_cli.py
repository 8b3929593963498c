"""`swapwatch serve` as a real subprocess: refuses unsafe settings (exit 2), answers, stops on SIGTERM (exit 0)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from swapwatch.stream.bench.demo_clip import DemoClip
from tests.stream.server.conftest import TOKEN
from tests.stream.test_pipeline import REF_SMOOTHING

SERVE = [sys.executable, "-m", "swapwatch", "serve"]


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SWAPWATCH_TOKEN"}
    return env | extra


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ([], {}, "server.token: no API token"),
        (["--host", "0.0.0.0"], {}, "server.token: no API token (required to listen on '0.0.0.0')"),
        (["--host", "0.0.0.0", "--no-auth"], {}, "server.auth: authentication can be switched off only on a loopback"),
        (["--token", "short"], {}, "server.token: too short"),
        ([], {"SWAPWATCH_TOKEN": TOKEN}, None),  # --print-config below: accepted
        (["--set", "server.whip.max_sessions=0"], {"SWAPWATCH_TOKEN": TOKEN}, "server.whip"),
        (["--set", "server.cors_origins=['*']"], {"SWAPWATCH_TOKEN": TOKEN}, "server.cors_origins"),
        (["--set", "server.max_body_bytes=10"], {"SWAPWATCH_TOKEN": TOKEN}, "server.max_body_bytes"),
    ],
)
def test_unsafe_or_bad_settings_exit_2(args: list[str], env: dict[str, str], needle: str | None) -> None:
    if needle is None:
        out = subprocess.run([*SERVE, *args, "--print-config"], env=env_with(**env), capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 0 and "server:" in out.stdout
        assert TOKEN not in out.stdout and "token: '**********'" in out.stdout
        return
    out = subprocess.run([*SERVE, *args, "--duration", "1"], env=env_with(**env), capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_answers_and_exits_0_on_sigterm(reference_model: Path, swap_clip: DemoClip, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    sets = [f"smoothing.{k}={v}" for k, v in REF_SMOOTHING.items()] + ["batcher.max_batch=8", "batcher.max_wait_ms=2"]
    cmd = [*SERVE, "--port", "0", "--events", str(events), "--model", str(reference_model), "--no-whip",
           *[a for s in sets for a in ("--set", s)], str(swap_clip.path)]
    proc = subprocess.Popen(cmd, env=env_with(SWAPWATCH_TOKEN=TOKEN), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    try:
        base = None
        deadline = time.monotonic() + 90
        while base is None and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            base = m.group(1) if m else None
        assert base, "".join(lines)
        with urllib.request.urlopen(base + "/healthz", timeout=10) as resp:
            assert resp.status == 200 and json.load(resp)["status"] == "ok"
        req = urllib.request.Request(base + "/api/streams", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert [s["name"] for s in json.load(resp)["streams"]] == [swap_clip.path.stem]
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines) + rest
    assert proc.returncode == 0, stderr
    assert "stopped (SIGTERM)" in stderr and TOKEN not in stderr
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    assert rows[-1]["type"] == "stream" and rows[-1]["source_state"] == "ended"
