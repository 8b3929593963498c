"""`swapwatch bench SOURCE...`: short real runs (RTSP server, paced file, WebRTC) and the numbers' rules.

The runs use the real default model, the real detector and real transports on a small generated face
clip, for a few seconds each: they check that the numbers are sane and consistent, not that they are
fast (speed is what the command itself measures).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from swapwatch.stream import rtsp_replay
from swapwatch.stream.cli import main
from swapwatch.stream.stream_bench import StreamBenchSettings, run_stream_bench
from swapwatch.stream.stream_bench.recorder import STAGE_ORDER, FrameRecord
from swapwatch.stream.stream_bench.results import max_realtime, run_summary, stream_summary
from tests.stream.conftest import ClipFactory

PLOTS = ("latency.png", "timeline.png", "stages.png", "sweep.png")


def _settings(clip: Path, out: Path, via: str, **extra: object) -> StreamBenchSettings:
    return StreamBenchSettings(sources=[clip], via=via, streams=[1], duration_s=3.0, warmup_s=1.0, ceiling_s=0.5,
                               clip_seconds=2.0, out=out, **extra)  # type: ignore[arg-type]


def _check_report(out: Path, via: str, stamped: bool) -> dict:
    report = json.loads((out / "bench.json").read_text())
    assert report["mode"] == "stream" and report["via"] == via
    (run,) = report["runs"]
    lat, frames, stages = run["latency_ms"], run["frames"], run["stages_ms"]
    # Every check is listed, and a failure shows the whole run: on a shared CI machine the numbers
    # themselves say whether it was the code or the load.
    checks = {
        # Generous bounds: the machine is shared; a latency of 0 or of seconds would mean a broken clock join.
        "latency ordered and bounded": 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 5000,
        "frames scored": frames["scored"] > 20,
        "expected >= scored": frames["expected"] >= frames["scored"],
        "dropped = expected - scored": frames["dropped"] == frames["expected"] - frames["scored"],
        "faces on most frames": frames["with_faces"] > 0.8 * frames["scored"],  # the clip always shows a face
        "one latency per scored frame": lat["n"] == frames["scored"],
        "fps plausible": 5 < run["fps"]["per_stream_mean"] <= 31,
        "decode ceiling above real time": run["decode_ceiling"]["fps_per_decoder"] > 30,
        "every stage reported": set(STAGE_ORDER) <= set(stages),
    }
    if set(STAGE_ORDER) <= set(stages):
        stage_sum = sum(stages[s]["mean"] for s in STAGE_ORDER)
        checks["parts add up to the total"] = math.isclose(stage_sum, lat["mean"], rel_tol=0.02, abs_tol=0.5)
        # Stamped: encode + network are never free. A paced file's glass time is its due time, when the
        # reader hands it over: late only when the reader is starved.
        checks["receive plausible"] = stages["receive"]["p50"] > 1 if stamped else stages["receive"]["p50"] < 5
    if via == "webrtc":
        # A lost RTP packet on a busy loopback leaves the VP8 decoder showing blocks of an older frame: the
        # stamp's CRC rejects such pictures (never a wrong time), and they are counted, not timed.
        checks["few unreadable stamps"] = frames["unreadable_stamps"] <= 0.5 * frames["received_whole_run"]
    else:
        checks["no unreadable stamps"] = frames["unreadable_stamps"] == 0
    failed = [name for name, ok in checks.items() if not ok]
    assert not failed, f"{failed}: {json.dumps({k: v for k, v in run.items() if k != 'monitor'}, indent=1)}"
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert len(lines) == frames["scored"]
    assert {json.loads(lines[0])["stream"]} <= set(run["per_stream"])
    for name in PLOTS:
        assert (out / name).stat().st_size > 10_000, name
    return report


def test_short_run_over_rtsp(make_clip: ClipFactory, tmp_path: Path) -> None:
    problem = rtsp_replay.gstreamer_problem()
    if problem is not None:
        pytest.skip(f"GStreamer RTSP server unavailable: {problem}")
    clip = make_clip("bench_360p.mp4", seconds=2.0)
    run_stream_bench(_settings(clip, tmp_path / "out", "rtsp"))
    report = _check_report(tmp_path / "out", "rtsp", stamped=True)
    assert report["runs"][0]["cpu"]["sender_cores"] is not None


def test_short_run_from_a_paced_file_via_the_cli(make_clip: ClipFactory, tmp_path: Path) -> None:
    clip = make_clip("bench_360p.mp4", seconds=2.0)
    out = tmp_path / "out"
    code = main(["bench", str(clip), "--via", "file", "--duration", "3", "--warmup", "1", "--ceiling-seconds", "0.5",
                 "--clip-seconds", "2", "--out", str(out)])
    assert code == 0
    _check_report(out, "file", stamped=False)


def test_short_run_over_webrtc(make_clip: ClipFactory, tmp_path: Path) -> None:
    import aioice.ice

    if not [a for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) if not a.startswith("127.")]:
        pytest.skip("no non-loopback IPv4 address: aioice offers no 127.0.0.1 candidate")
    clip = make_clip("bench_360p.mp4", seconds=2.0)
    run_stream_bench(_settings(clip, tmp_path / "out", "webrtc"))
    _check_report(tmp_path / "out", "webrtc", stamped=True)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "file not found"),
        (lambda d: d, "is a directory"),
        (lambda d: (d / "notes.mp4").write_text("not a video") and d / "notes.mp4", "not a readable video"),
    ],
    ids=["missing", "directory", "not-a-video"],
)
def test_an_unreadable_source_is_a_usage_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         make: object, message: str) -> None:
    source = make(tmp_path)  # type: ignore[operator]
    code = main(["bench", str(source), "--via", "file", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(source) in err and message in err
    assert not (tmp_path / "out" / "bench.json").exists()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--size", "1280by720"], "--size"),
        (["--size", "641x360"], "size"),
        (["--streams", "0"], "streams"),
        (["--duration", "-1"], "duration_s"),
        (["--queue-size", "0"], "queue_size"),
        (["--set", "smoothing.alert_enter=2"], "smoothing.alert_enter"),
        (["--engine", "a.onnx", "--engine", "b.onnx"], "--engine"),
    ],
)
def test_bad_options_are_usage_errors_naming_the_field(make_clip: ClipFactory, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], args: list[str],
                                                       field: str) -> None:
    clip = make_clip("bench_360p.mp4", seconds=2.0)
    assert main(["bench", str(clip), *args, "--out", str(tmp_path / "out")]) == 2
    assert field in capsys.readouterr().err


def test_rtsp_without_gstreamer_names_the_packages(make_clip: ClipFactory, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # What a machine without Debian's GStreamer looks like to the probe: no system interpreter to run it.
    monkeypatch.setattr(rtsp_replay, "SYSTEM_PYTHON", str(tmp_path / "no-python3"))
    rtsp_replay.gstreamer_problem.cache_clear()
    try:
        clip = make_clip("bench_360p.mp4", seconds=2.0)
        code = main(["bench", str(clip), "--via", "rtsp", "--out", str(tmp_path / "out")])
    finally:
        rtsp_replay.gstreamer_problem.cache_clear()
    err = capsys.readouterr().err
    assert code == 1
    assert "gir1.2-gst-rtsp-server-1.0" in err and "no-python3" in err and "--via file" in err


def test_pyav_frames_carry_their_decode_time(make_clip: ClipFactory) -> None:
    import asyncio

    from swapwatch.stream.sources import open_source

    clip = make_clip("bench_360p.mp4", seconds=2.0)

    async def first_frames() -> list[float | None]:
        source = open_source(str(clip), realtime=False)
        got: list[float | None] = []
        async for frame in source.frames():
            got.append(frame.decode_ms)
            if len(got) == 10:
                break
        await source.aclose()
        return got

    times = asyncio.run(first_frames())
    assert all(t is not None and 0 < t < 1000 for t in times)


# --- the rules that turn records into numbers ------------------------------------------------------------------


def _rec(seq: int, glass: float, latency_ms: float = 50.0, stream: str = "a", alert: bool = False) -> FrameRecord:
    received = glass + 0.02
    score_ready = glass + latency_ms / 1e3
    return FrameRecord(stream=stream, seq=seq, glass=glass, received=received, score_ready=score_ready,
                       done=score_ready + 0.001, stages={"decode": 4.0, "queue": 1.0, "detect": 10.0, "infer": 5.0},
                       faces=1, scored_faces=1, alert_started=alert)


@pytest.mark.parametrize(
    ("seqs", "expected", "dropped"),
    [
        ([0, 1, 2, 3], 4, 0),
        ([0, 2, 4, 6], 7, 3),        # every other frame replaced by a newer one
        ([10, 11, 15], 6, 3),        # a burst lost
        ([5], 1, 0),
        ([3, 3, 4], 2, 0),           # a repeated sequence number is one frame
    ],
)
def test_drops_are_the_gaps_in_the_senders_sequence(seqs: list[int], expected: int, dropped: int) -> None:
    summary = stream_summary([_rec(s, i / 30) for i, s in enumerate(seqs)])
    assert (summary["expected"], summary["dropped"]) == (expected, dropped)


@pytest.mark.parametrize(
    ("latency_ms", "seqs", "realtime", "because"),
    [
        (50.0, list(range(100)), True, None),
        (300.0, list(range(100)), False, "p95"),
        (50.0, list(range(0, 100, 2)), False, "dropped"),
    ],
)
def test_real_time_needs_the_p95_and_the_drop_rate(latency_ms: float, seqs: list[int], realtime: bool,
                                                   because: str | None) -> None:
    records = [_rec(s, s / 30, latency_ms) for s in seqs]
    run = run_summary(records, streams=["a"], copies=1, source_fps=30, unreadable=0, received=0, p95_ms=250, max_drop=0.01)
    assert run["realtime"] is realtime
    if because:
        assert because in " ".join(run["not_realtime_because"])


def test_a_stream_that_scored_nothing_fails_the_run() -> None:
    records = [_rec(s, s / 30) for s in range(30)]
    run = run_summary(records, streams=["a", "b"], copies=1, source_fps=30, unreadable=0, received=0, p95_ms=250, max_drop=0.01)
    assert not run["realtime"] and "b" in run["not_realtime_because"][-1]


@pytest.mark.parametrize(
    ("verdicts", "best"),
    [
        ({1: True, 2: True, 3: False, 4: False}, 2),
        ({1: False, 2: True}, 0),  # read as "holds up to N": a pass above a failure does not count
        ({1: True, 2: True}, 2),
        ({2: True, 1: True, 4: False}, 2),
    ],
)
def test_max_realtime_is_the_last_count_before_the_first_failure(verdicts: dict[int, bool], best: int) -> None:
    assert max_realtime([{"streams": n, "realtime": ok} for n, ok in verdicts.items()]) == best


def test_the_breakdown_adds_up_to_glass_to_score() -> None:
    record = _rec(0, 100.0, latency_ms=60.0)
    parts = record.breakdown()
    assert list(parts) == list(STAGE_ORDER)
    assert math.isclose(sum(parts.values()), record.glass_to_score_ms, abs_tol=1e-6)
    assert math.isclose(parts["receive"], 20.0 - 4.0, abs_tol=1e-6)  # received 20 ms after glass, 4 of them decoding


def test_alerts_get_glass_to_alert() -> None:
    records = [_rec(s, s / 30, alert=(s == 5)) for s in range(10)]
    run = run_summary(records, streams=["a"], copies=1, source_fps=30, unreadable=0, received=0, p95_ms=250, max_drop=0.01)
    assert run["alerts"] == 1
    assert run["glass_to_alert_ms"]["n"] == 1 and math.isclose(run["glass_to_alert_ms"]["p50"], 51.0, abs_tol=0.01)
