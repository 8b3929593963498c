"""Exit codes that tell the truth, through real subprocess runs of the CLI with the embedded model.

`swapwatch watch`: 1 when a source delivered no frame at all (a camera that never connected, a missing
file), with the reason on stderr; 0 when every source delivered frames; off a terminal each change is
printed once (stdout), not again as a log line on stderr. `swapwatch scan`: 0 every input read, 1 none,
3 some (each unreadable input named once on stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swapwatch.cli.scan_command import EXIT_PARTIAL
from swapwatch.samples import sample_face_images
from tests.stream.conftest import ClipFactory
from tests.stream.server.conftest import free_port

CLI = [sys.executable, "-m", "swapwatch"]
# The embedded model, with fixed batcher sizes so the run does not profile the engine first.
WATCH_FAST = ["--backend", "onnxruntime", "--set", "batcher.max_batch=4", "--set", "batcher.max_wait_ms=2"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWAPWATCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


# --- watch ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sources", "code", "stderr_has", "stderr_lacks"),
    [
        # An RTSP camera nobody answers for: it retried for the whole run and never sent a frame.
        (["dead"], 1, ["NO FRAME received", "connection refused", "1 of 1 source(s) delivered no frame"], []),
        # One good file does not hide the camera that never connected.
        (["clip", "dead"], 1, ["NO FRAME received", "1 of 2 source(s) delivered no frame"], []),
        (["clip", "missing"], 1, ["file not found", "1 of 2 source(s) delivered no frame"], []),
        (["clip"], 0, ["frames", "faces scored"], ["NO FRAME", "delivered no frame"]),
    ],
)
def test_watch_exit_code_says_whether_every_source_was_monitored(
    make_clip: ClipFactory, tmp_path: Path, sources: list[str], code: int, stderr_has: list[str],
    stderr_lacks: list[str],
) -> None:
    urls = {
        "dead": f"rtsp://127.0.0.1:{free_port()}/live",
        "clip": str(make_clip("exit_codes_small.mp4", width=320, height=180, seconds=1.0)),
        "missing": str(tmp_path / "missing.mp4"),
    }
    # Console on: stdout is a pipe here, so it writes plain lines there.
    out = run_cli("watch", *[urls[s] for s in sources], "--duration", "3", "--no-realtime", *WATCH_FAST, cwd=tmp_path)
    assert out.returncode == code, out.stderr[-3000:]
    for needle in stderr_has:
        assert needle in out.stderr, (needle, out.stderr[-3000:])
    for needle in stderr_lacks:
        assert needle not in out.stderr, (needle, out.stderr[-3000:])
    assert "Traceback" not in out.stderr
    if "dead" in sources:
        # Each retry is one message, on stdout (the plain console), not repeated as a log line on stderr.
        both = out.stdout + out.stderr
        assert both.count("retry 1 in") == 1 and "retry 1 in" in out.stdout, both[-3000:]


# --- scan -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "code", "unreadable"),
    [
        (["missing-a.jpg", "missing-b.jpg"], 1, ["missing-a.jpg", "missing-b.jpg"]),
        (["corrupt.jpg"], 1, ["corrupt.jpg"]),
        (["face"], 0, []),
        (["face", "missing-a.jpg"], EXIT_PARTIAL, ["missing-a.jpg"]),
        (["corrupt.jpg", "face", "missing-b.jpg"], EXIT_PARTIAL, ["corrupt.jpg", "missing-b.jpg"]),
    ],
)
def test_scan_exit_code_counts_the_inputs_it_could_read(
    tmp_path: Path, inputs: list[str], code: int, unreadable: list[str]
) -> None:
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    face = sample_face_images()["tom_hanks"]  # an aligned face crop, as the scan tests use it
    paths = [str(face) if name == "face" else str(tmp_path / name) for name in inputs]
    results = tmp_path / "results.jsonl"
    out = run_cli("scan", *paths, "--crops", "--out", str(results), cwd=tmp_path)
    assert out.returncode == code, out.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == [Path(p).name for p in paths]  # every input has its line
    reported = [line for line in out.stderr.splitlines() if "cannot read" in line]
    assert len(reported) == len(unreadable), out.stderr
    for name in unreadable:
        assert sum(name in line for line in reported) == 1, (name, out.stderr)
    summary = {1: "none of the", 0: None, EXIT_PARTIAL: f"exit {EXIT_PARTIAL}"}[code]
    if summary is None:
        assert "could not be read" not in out.stderr
    else:
        assert summary in out.stderr
    assert "Traceback" not in out.stderr


def test_exit_codes_are_in_the_help() -> None:
    for command, needle in (("watch", "delivered no frame"), ("scan", f"{EXIT_PARTIAL} some inputs could not be read")):
        out = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True, timeout=120, check=True)
        assert needle in " ".join(out.stdout.split()), out.stdout
