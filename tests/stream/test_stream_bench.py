"""`swapwatch bench SOURCE...`: short real runs (RTSP server, paced file, WebRTC) and the numbers' rules.

The runs use the real default model, the real detector and real transports on a small generated face
clip, for a few seconds each: they check that the numbers are sane and consistent, not that they are
fast (speed is what the command itself measures).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from swapwatch.cli.main import main
from swapwatch.stream.bench import rtsp_replay
from swapwatch.stream.bench.recorder import STAGE_ORDER, FrameRecord
from swapwatch.stream.bench.results import max_realtime, run_summary, stream_summary
from swapwatch.stream.bench.runner import run_stream_bench
from swapwatch.stream.bench.settings import StreamBenchSettings
from tests.stream.conftest import ClipFactory

PLOTS = ("latency.png", "timeline.png", "stages.png", "sweep.png")


def _settings(clip: Path, out: Path, via: str, **extra: object) -> StreamBenchSettings:
    return StreamBenchSettings(sources=[clip], via=via, streams=[1], duration_s=3.0, warmup_s=1.0, ceiling_s=0.5,
                               clip_seconds=2.0, out=out, **extra)  # type: ignore[arg-type]


def _check_report(out: Path, via: str, stamped: bool, wall_s: float) -> dict:
    """The run's numbers must agree with each other, with frames.jsonl and with `wall_s`, the run's duration
    timed here. Nothing bounds a speed: load slows a run down, it must not fail it (the speeds are what
    `swapwatch bench` itself reports: fps against the source, the decode ceiling, realtime or not)."""
    report = json.loads((out / "bench.json").read_text())
    assert report["mode"] == "stream" and report["via"] == via
    (run,) = report["runs"]
    lat, frames, stages, fps = run["latency_ms"], run["frames"], run["stages_ms"], run["fps"]
    rows = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    glass = [r["glass"] for r in rows]
    # Every check is listed, and a failure shows the whole run.
    checks = {
        # A broken clock join gives negative latencies or ones of days: no frame can wait longer than the run.
        "latency ordered and within the run": 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 1e3 * wall_s,
        "frames scored": frames["scored"] > 1,
        "expected >= scored": frames["expected"] >= frames["scored"],
        "dropped = expected - scored": frames["dropped"] == frames["expected"] - frames["scored"],
        "faces on most frames": frames["with_faces"] > 0.8 * frames["scored"],  # the clip always shows a face
        "one latency per scored frame": lat["n"] == frames["scored"] == len(rows),
        # fps: scored frames per second of glass time, recomputed from the frames' own glass times
        "fps is the frames' glass-time rate": math.isclose(
            fps["per_stream_mean"], (len(rows) - 1) / (glass[-1] - glass[0]), abs_tol=0.01),
        "fps not above the source's": 0 < fps["per_stream_mean"] <= 1.05 * fps["source"],
        "decode ceiling measured": run["decode_ceiling"]["decoders"] == 1 and run["decode_ceiling"]["seconds"] >= 0.5
        and run["decode_ceiling"]["fps_total"] > 0,
        "every stage reported": set(STAGE_ORDER) <= set(stages),
    }
    if set(STAGE_ORDER) <= set(stages):
        timed = ["queue", "detect", "batch_wait", "infer", "smooth"] + (["decode"] if via != "webrtc" else [])
        checks["each stage the monitor runs is timed"] = all(stages[s]["mean"] > 0 for s in timed)
        # WebRTC frames carry no decode time (aiortc decodes inside the track): none is made up
        checks["decode only where measured"] = via != "webrtc" or stages["decode"]["mean"] == 0
        # `other` is the remainder (hops no stage covers): most of the latency must be in named stages
        checks["named stages account for most of the latency"] = stages["other"]["mean"] < 0.5 * lat["mean"]
        # and no part is counted twice: per frame, the named parts never exceed the glass-to-score time
        checks["no part counted twice"] = all(
            sum(v for k, v in r["stages_ms"].items() if k != "other") <= r["glass_to_score_ms"] + 0.01 for r in rows)
        if stamped:
            # encode + network are never free
            checks["receive measured"] = stages["receive"]["p50"] > 1
        else:
            # a paced file's glass time is its frame's place on the schedule: whole frame intervals apart
            checks["glass times on the file's schedule"] = all(
                abs(t * fps["source"] - round(t * fps["source"])) < 0.01 for t in (g - glass[0] for g in glass))
    if via == "webrtc":
        # A lost RTP packet on a busy loopback leaves the VP8 decoder showing blocks of an older frame: the
        # stamp's CRC rejects such pictures (never a wrong time), and they are counted, not timed.
        checks["few unreadable stamps"] = frames["unreadable_stamps"] <= 0.5 * frames["received_whole_run"]
    else:
        checks["no unreadable stamps"] = frames["unreadable_stamps"] == 0
    failed = [name for name, ok in checks.items() if not ok]
    assert not failed, f"{failed}: {json.dumps({k: v for k, v in run.items() if k != 'monitor'}, indent=1)}"
    assert {rows[0]["stream"]} <= set(run["per_stream"])
    for name in PLOTS:
        assert (out / name).stat().st_size > 10_000, name
    return report


def test_short_run_over_rtsp(make_clip: ClipFactory, tmp_path: Path) -> None:
    problem = rtsp_replay.gstreamer_problem()
    if problem is not None:
        pytest.skip(f"GStreamer RTSP server unavailable: {problem}")
    clip = make_clip("bench_360p.mp4", seconds=2.0)
    started = time.monotonic()
    run_stream_bench(_settings(clip, tmp_path / "out", "rtsp"))
    report = _check_report(tmp_path / "out", "rtsp", stamped=True, wall_s=time.monotonic() - started)
    assert report["runs"][0]["cpu"]["sender_cores"] is not None


def test_short_run_from_a_paced_file_via_the_cli(make_clip: ClipFactory, tmp_path: Path) -> None:
    clip = make_clip("bench_360p.mp4", seconds=2.0)
    out = tmp_path / "out"
    started = time.monotonic()
    code = main(["bench", str(clip), "--via", "file", "--duration", "3", "--warmup", "1", "--ceiling-seconds", "0.5",
                 "--clip-seconds", "2", "--out", str(out)])
    assert code == 0
    _check_report(out, "file", stamped=False, wall_s=time.monotonic() - started)


def test_short_run_over_webrtc(make_clip: ClipFactory, tmp_path: Path) -> None:
    import aioice.ice

    if not [a for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) if not a.startswith("127.")]:
        pytest.skip("no non-loopback IPv4 address: aioice offers no 127.0.0.1 candidate")
    clip = make_clip("bench_360p.mp4", seconds=2.0)
    started = time.monotonic()
    run_stream_bench(_settings(clip, tmp_path / "out", "webrtc"))
    _check_report(tmp_path / "out", "webrtc", stamped=True, wall_s=time.monotonic() - started)


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


@pytest.mark.parametrize(
    ("received_ms", "score_ms", "stages", "expected"),
    [
        # received 20 ms after glass, 4 of them decoding; 60 ms in all, 36 of them in named stages
        (20.0, 60.0, {"decode": 4.0, "queue": 1.0, "detect": 10.0, "infer": 5.0},
         {"receive": 16.0, "decode": 4.0, "queue": 1.0, "detect": 10.0, "batch_wait": 0.0, "infer": 5.0, "smooth": 0.0,
          "other": 24.0}),
        # every monitor stage timed: `other` is only what none covers
        (10.0, 50.0, {"decode": 2.0, "queue": 3.0, "detect": 12.0, "batch_wait": 4.0, "infer": 15.0, "smooth": 1.0},
         {"receive": 8.0, "decode": 2.0, "queue": 3.0, "detect": 12.0, "batch_wait": 4.0, "infer": 15.0, "smooth": 1.0,
          "other": 5.0}),
        # a paced file decodes ahead of its due time: received at glass, so none of the decoding is latency
        (0.0, 30.0, {"decode": 6.0, "queue": 2.0, "detect": 8.0, "infer": 5.0},
         {"receive": 0.0, "decode": 0.0, "queue": 2.0, "detect": 8.0, "batch_wait": 0.0, "infer": 5.0, "smooth": 0.0,
          "other": 15.0}),
        # decoding that started before the glass time counts only from it
        (3.0, 30.0, {"decode": 6.0, "queue": 2.0, "detect": 8.0, "infer": 5.0},
         {"receive": 0.0, "decode": 3.0, "queue": 2.0, "detect": 8.0, "batch_wait": 0.0, "infer": 5.0, "smooth": 0.0,
          "other": 12.0}),
        # stage times that overshoot the total (timer granularity) leave no negative remainder
        (0.0, 10.0, {"queue": 4.0, "detect": 5.0, "infer": 3.0},
         {"receive": 0.0, "decode": 0.0, "queue": 4.0, "detect": 5.0, "batch_wait": 0.0, "infer": 3.0, "smooth": 0.0,
          "other": 0.0}),
    ],
)
def test_the_breakdown_splits_glass_to_score_into_its_parts(received_ms: float, score_ms: float,
                                                            stages: dict[str, float], expected: dict[str, float]) -> None:
    glass = 100.0
    record = FrameRecord(stream="a", seq=0, glass=glass, received=glass + received_ms / 1e3,
                         score_ready=glass + score_ms / 1e3, done=glass + score_ms / 1e3 + 0.001, stages=stages,
                         faces=1, scored_faces=1, alert_started=False)
    parts = record.breakdown()
    assert list(parts) == list(STAGE_ORDER)
    assert parts == pytest.approx(expected, abs=1e-6)
    assert record.glass_to_score_ms == pytest.approx(score_ms, abs=1e-6)


def test_alerts_get_glass_to_alert() -> None:
    records = [_rec(s, s / 30, alert=(s == 5)) for s in range(10)]
    run = run_summary(records, streams=["a"], copies=1, source_fps=30, unreadable=0, received=0, p95_ms=250, max_drop=0.01)
    assert run["alerts"] == 1
    assert run["glass_to_alert_ms"]["n"] == 1 and math.isclose(run["glass_to_alert_ms"]["p50"], 51.0, abs_tol=0.01)
