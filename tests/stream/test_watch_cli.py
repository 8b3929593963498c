"""`swapwatch watch` through the real CLI: duration, SIGTERM, bad config, annotated video, --print-config.

Uses the generated clip and the enrolled-identity test model of test_pipeline.py (see its docstring).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from swapwatch.cli import main as cli
from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.events import Event
from tests.stream.test_pipeline import (
    REF_SMOOTHING,
)

REPO = Path(__file__).resolve().parents[2]
WATCH = ("swapwatch.cli.watch_command", "monitor live streams and files for deepfaked faces")
# Runs the CLI with `watch` registered even before cli.py lists it (a no-op once it does).
CLI = (
    "import sys; from swapwatch.cli import main as cli; "
    f"cli.COMMANDS.setdefault('watch', {WATCH!r}); sys.exit(cli.main())"
)
SMOOTHING_SETS = [f"--set=smoothing.{k}={v}" for k, v in REF_SMOOTHING.items()]


@pytest.fixture
def clip(swap_clip: DemoClip) -> DemoClip:
    return swap_clip  # the session's swap clip (tests/stream/conftest.py)


@pytest.fixture(autouse=True)
def _watch_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "watch", cli.COMMANDS.get("watch", WATCH))


def fast_args(model: Path) -> list[str]:
    """Options every test run shares: the test model, fixed batcher sizes, no console."""
    return ["--model", str(model), "--backend", "onnxruntime", "--no-console",
            "--set", "batcher.max_batch=8", "--set", "batcher.max_wait_ms=2", *SMOOTHING_SETS]


def events_of(path: Path) -> list[Event]:
    return [Event.from_json(line) for line in path.read_text().splitlines()]


def test_watch_duration_stops_and_exits_0(clip: DemoClip, reference_model: Path, tmp_path: Path) -> None:
    events = tmp_path / "ev.jsonl"
    report = tmp_path / "report.json"
    rc = cli.main(["watch", str(clip.path), "--events", str(events), "--duration", "1", "--realtime",
                   "--report", str(report), *fast_args(reference_model)])
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["stopped_by"].startswith("duration")
    assert 0 < data["streams"]["clip"]["frames"] < clip.frames
    evs = events_of(events)
    assert evs[-1].type == "stream" and evs[-1].source_state == "ended"
    assert max(e.frame_pts or 0.0 for e in evs) < clip.duration - 1.0  # stopped well before the clip's end


def test_watch_sigterm_flushes_events_and_exits_0(clip: DemoClip, reference_model: Path, tmp_path: Path) -> None:
    events = tmp_path / "ev.jsonl"
    cmd = [sys.executable, "-c", CLI, "watch", str(clip.path), "--events", str(events), "--realtime",
           *fast_args(reference_model), "--set", "summary_interval_s=0.2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait (generously: a loaded machine) until the monitor is scoring: a summary event is written.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if events.exists() and '"type":"summary"' in events.read_text():
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"watch ended before SIGTERM: {proc.communicate()}"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    evs = events_of(events)  # every line is complete and valid
    assert evs[-1].type == "stream" and evs[-1].source_state == "ended"
    assert "SIGTERM" in err and "stopped" in err
    assert max(e.frame_pts or 0.0 for e in evs) < clip.duration - 0.5


@pytest.mark.parametrize(
    ("yaml_text", "extra", "field"),
    [
        ("sorces: []\n", [], "sorces"),
        ("faces:\n  detect_evry: 2\n", [], "faces.detect_evry"),
        ("sinks:\n  jsonl:\n    path: e.jsonl\n    fsyncc: true\n", [], "sinks.jsonl.fsyncc"),
        ("smoothing:\n  alert_enter: high\n", [], "smoothing.alert_enter"),
        ("", ["--set", "batcher.max_batch=0"], "batcher.max_batch"),
        ("", ["--set", "nonsense"], "--set"),
        ("- just\n- a list\n", [], "top level must be a mapping"),
    ],
)
def test_bad_config_exits_2_naming_the_field(
    clip: DemoClip, tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, extra: list[str], field: str
) -> None:
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(yaml_text)
    assert cli.main(["watch", str(clip.path), "--config", str(cfg), *extra]) == 2
    err = capsys.readouterr().err
    assert field in err


def test_missing_config_file_and_no_source_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["watch", "x.mp4", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert cli.main(["watch", "--no-console"]) == 2
    assert "SOURCE" in capsys.readouterr().err


def test_annotated_video_decodes(clip: DemoClip, reference_model: Path, tmp_path: Path) -> None:
    video = tmp_path / "annotated.mp4"
    # A frame queue as long as the clip, so no frame is dropped by a slow encoder and the count is exact.
    rc = cli.main(["watch", str(clip.path), "--no-realtime", "--annotate", str(video), "--events",
                   str(tmp_path / "e.jsonl"), "--set", f"sinks.frame_queue={clip.frames}", *fast_args(reference_model)])
    assert rc == 0
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == clip.frames
    assert frames[0].shape == (clip.height, clip.width, 3)
    # The swapped face is boxed in red (alert) in the middle of the segment and in green before it.
    mid = frames[int((clip.segment[0] + 2.0) * clip.fps)]
    before = frames[int(1.0 * clip.fps)]
    red = (mid[..., 2] > 200) & (mid[..., 1] < 60) & (mid[..., 0] < 60)
    assert red[:, : clip.width // 2].sum() > 100
    green = (before[..., 1] > 160) & (before[..., 2] < 80) & (before[..., 0] < 80)
    assert green.sum() > 100


def test_all_sources_failing_exits_1(reference_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["watch", str(tmp_path / "missing.mp4"), "--events", str(tmp_path / "e.jsonl"),
                   *fast_args(reference_model)])
    assert rc == 1
    assert "missing" in capsys.readouterr().err
    assert events_of(tmp_path / "e.jsonl")[-1].source_state == "failed"


def test_print_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PW", "hunter2")
    monkeypatch.setenv("SWAPWATCH_WEBHOOK_SECRET", "hmac-secret-value")
    monkeypatch.setenv("SWAPWATCH_WEBHOOK_URL", "https://hooks.example/in?token=tok123")
    cfg = tmp_path / "m.yaml"
    cfg.write_text("sources:\n  - url: rtsp://admin:${CAM_PW}@cam.local/live\n")
    assert cli.main(["watch", "--config", str(cfg), "--print-config", "--set", "faces.detect_every=4"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "hmac-secret-value" not in out and "tok123" not in out
    assert "admin:***@cam.local/live" in out and "secret_env: SWAPWATCH_WEBHOOK_SECRET" in out
    assert "detect_every: 4" in out and "# smoothing thresholds" in out


def test_events_on_stdout_keep_stdout_to_json_lines(clip: DemoClip, reference_model: Path, tmp_path: Path) -> None:
    """`--events -` with the console on: stdout carries only events, the console's lines go to stderr."""
    args = [a for a in fast_args(reference_model) if a != "--no-console"]
    cmd = [sys.executable, "-c", CLI, "watch", str(clip.path), "--events", "-", "--no-realtime", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "SWAPWATCH_PROGRESS": "0"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    events = [Event.from_json(line) for line in run.stdout.splitlines()]
    assert events and events[-1].type == "stream" and events[-1].source_state == "ended"
    assert "clip: source live" in run.stderr  # the console's plain lines, off a terminal
