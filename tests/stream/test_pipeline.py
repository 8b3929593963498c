"""The monitor pipeline end to end on a generated clip with a known face-swapped segment.

Real parts throughout: the demo clip (H.264, two real faces from package photos, the left one swapped by
the project's compositing during a known span), the file source, the embedded RetinaFace detector and
tracker, ONNX Runtime, the micro-batcher, the smoother and the JSONL sink.

The detector model is a small ONNX graph built here, `identity_reference_model`: it scores how unlike the
enrolled faces (the two real people of the clip, taken from the original photos) a face crop is (1 - the
best cosine similarity of the grey, mean-removed inner face), through a steep sigmoid. That is identity
verification against known participants, a real deepfake defence for a call with known people, and it
separates this clip's swap deterministically (cosine ~0.9+ for the real faces, ~0.65 for the swap), so
the tests can demand that the segment raises states. The default model is exercised by test_demo.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swapwatch.engine.metadata import (
    AlignmentSpec,
    EngineMetadata,
    ScoreCalibration,
    file_sha256,
    write_metadata,
)
from swapwatch.errors import ConfigError
from swapwatch.stream.bench.demo_clip import DemoClip, build_demo_clip
from swapwatch.stream.config import (
    MonitorConfig,
    effective_config_yaml,
    load_monitor_config,
    monitor_config_from_dict,
    parse_set_option,
)
from swapwatch.stream.events import Event
from swapwatch.stream.pipeline import FrameReport, Monitor, StreamClock

REF_SIZE = 64
REF_MARGIN = 0.15
CONTRACT_FIELDS = ("time", "stream", "track", "state", "score", "raw_score", "box", "frame_pts", "latency_ms")

# Thresholds for the reference model, which carries no score calibration (the monitor would otherwise fall
# back to 0.5 / 0.8 with a warning): stated here so the test does not depend on that fallback.
REF_SMOOTHING = {"suspicious_enter": 0.5, "alert_enter": 0.8, "min_clear_s": 1.0}


def _inner_feature(crops_rgb01: np.ndarray) -> np.ndarray:
    """The feature the ONNX graph computes, in numpy: grey inner face, mean removed, unit norm."""
    q = REF_SIZE // 4
    grey = crops_rgb01.mean(axis=1)[:, q : 3 * q, q : 3 * q].reshape(len(crops_rgb01), -1)
    grey = grey - grey.mean(axis=1, keepdims=True)
    return grey / np.linalg.norm(grey, axis=1, keepdims=True)


def identity_reference_model(path: Path, centre: float = 0.8, steepness: float = 30.0) -> Path:
    """Write the enrolled-identity ONNX model (+ sidecar) to `path`; see the module docstring."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from swapwatch.stream.bench.demo_clip import _sample_faces
    from swapwatch.stream.faces import align_face, alignment_spec, load_detector

    astro, a_face, group, right, _ = _sample_faces(load_detector())
    crops = np.stack([align_face(astro, a_face.landmarks, REF_SIZE, REF_MARGIN).crop,
                      align_face(group, right.landmarks, REF_SIZE, REF_MARGIN).crop])
    refs = _inner_feature(crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0).astype(np.float32)
    q = REF_SIZE // 4
    consts = [
        numpy_helper.from_array(np.array([q, q], np.int64), "starts"),
        numpy_helper.from_array(np.array([3 * q, 3 * q], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(refs.T.copy(), "refs"),
        numpy_helper.from_array(np.array(centre, np.float32), "centre"),
        numpy_helper.from_array(np.array(steepness, np.float32), "steepness"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["grey"], axes=[1], keepdims=0),
        helper.make_node("Slice", ["grey", "starts", "ends", "axes"], ["inner"]),
        helper.make_node("Flatten", ["inner"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat"], ["mu"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["flat", "mu"], ["centred"]),
        helper.make_node("ReduceL2", ["centred"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["centred", "norm"], ["unit"]),
        helper.make_node("MatMul", ["unit", "refs"], ["cos"]),
        helper.make_node("ReduceMax", ["cos"], ["best"], axes=[1], keepdims=0),
        helper.make_node("Sub", ["centre", "best"], ["gap"]),
        helper.make_node("Mul", ["gap", "steepness"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "identity_reference",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, REF_SIZE, REF_SIZE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    write_metadata(path, EngineMetadata(
        method="identity-reference", input_size=REF_SIZE, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], color="RGB",
        alignment=AlignmentSpec(**alignment_spec(REF_SIZE, REF_MARGIN)), score_calibration=ScoreCalibration(),
        model_sha256=file_sha256(path), data={"note": "test model: enrolled identities of the demo clip"},
    ))
    return path


def make_reference_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The enrolled-identity model in a fresh temp folder (skips when the onnx package is missing)."""
    pytest.importorskip("onnx", reason="building the test model needs the onnx package ([train] extra)")
    return identity_reference_model(tmp_path_factory.mktemp("model") / "identity.onnx")


def make_test_clip(tmp_path_factory: pytest.TempPathFactory) -> DemoClip:
    """8 s at 20 fps, the left face swapped at 2-5 s."""
    return build_demo_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=8.0, fps=20, segment=(2.0, 5.0))


@pytest.fixture
def clip(swap_clip: DemoClip) -> DemoClip:
    return swap_clip  # the session's swap clip (tests/stream/conftest.py)


def monitor_config(sources: list[dict[str, Any]], model: Path, tmp: Path, **sections: Any) -> MonitorConfig:
    """A test config: given sources, the reference model, JSONL events, fixed batcher sizes (no profiling)."""
    data: dict[str, Any] = {
        "sources": sources,
        "engine": {"model": str(model), "backend": "onnxruntime"},
        "batcher": {"max_batch": 8, "max_wait_ms": 2.0},
        "smoothing": dict(REF_SMOOTHING),
        "sinks": {"jsonl": {"path": str(tmp / "events.jsonl")}},
        "summary_interval_s": 1.0,
    }
    data.update(sections)
    return monitor_config_from_dict(data, env={})


def read_events(path: Path) -> list[Event]:
    return [Event.from_json(line) for line in path.read_text().splitlines()]


def run_monitor_sync(cfg: MonitorConfig, duration_s: float | None = None, **kwargs: Any) -> Any:
    import asyncio

    async def main() -> Any:
        return await Monitor(cfg, **kwargs).run(duration_s)

    return asyncio.run(main())


# --- stream clock -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        # plain pts
        ([(0.0, 10.0), (0.04, 10.04), (0.08, 10.08)], [0.0, 0.04, 0.08]),
        # first frame without pts (RTSP), then pts
        ([(None, 10.0), (0.04, 10.04), (0.08, 10.08)], [0.0, 0.04, 0.08]),
        # pts missing in the middle: arrival-clock step
        ([(1.0, 5.0), (None, 5.5), (2.0, 6.0)], [1.0, 1.5, 2.0]),
        # reconnection restarts pts at 0: time keeps going by the arrival clock
        ([(5.0, 100.0), (5.1, 100.1), (0.0, 103.1), (0.1, 103.2)], [5.0, 5.1, 8.1, 8.2]),
    ],
)
def test_stream_clock_is_monotonic(frames: list[tuple[float | None, float]], expected: list[float]) -> None:
    clock = StreamClock()
    got = [clock(pts, rx) for pts, rx in frames]
    np.testing.assert_allclose(got, expected, atol=1e-9)


# --- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"sourcez": []}, "sourcez"),
        ({"faces": {"detect_evry": 2}}, "faces.detect_evry"),
        ({"faces": {"detect_every": 0}}, "faces.detect_every"),
        ({"smoothing": {"alert_enter": 1.5}}, "smoothing.alert_enter"),
        ({"sinks": {"jsonl": {"pat": "x"}}}, "sinks.jsonl.pat"),
        ({"engine": {"backend": "magic"}}, "engine.backend"),
        ({"sources": [{"url": "a.mp4"}, {"url": "b/a.mp4"}]}, "sources.1.name"),
        ({"summary_interval_s": 0}, "summary_interval_s"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        monitor_config_from_dict(data, env={}, source="monitor.yaml")
    assert field in str(err.value) and "monitor.yaml" in str(err.value)


def test_config_file_env_interpolation_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text(
        "sources:\n  - url: rtsp://admin:${CAM_PW}@cam.local/live\n    name: lobby\n"
        "sinks:\n  webhooks:\n    - url: https://hooks.example/${HOOK_PATH:-default}\n"
    )
    env = {"CAM_PW": "s3cret", "SWAPWATCH_WEBHOOK_SECRET": "hmac-key"}
    cfg = load_monitor_config(path, {"faces.detect_every": 5, "sinks.jsonl.path": "ev.jsonl"}, env=env)
    assert cfg.sources[0].url == "rtsp://admin:s3cret@cam.local/live"
    assert cfg.sinks.webhooks[0].url == "https://hooks.example/default"
    assert cfg.sinks.webhooks[0].secret_env == "SWAPWATCH_WEBHOOK_SECRET"  # the name, never the value
    assert cfg.faces.detect_every == 5 and cfg.sinks.jsonl is not None and cfg.sinks.jsonl.path == "ev.jsonl"
    assert cfg.sinks.console is None  # the file lists its sinks: exactly those
    printed = effective_config_yaml(cfg)
    assert "s3cret" not in printed and "hmac-key" not in printed and "admin:***@cam.local" in printed


def test_config_missing_env_variable_names_field_and_variable(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("sources:\n  - url: rtsp://u:${NOPE}@h/x\n")
    with pytest.raises(ConfigError, match=r"sources\.0\.url: environment variable NOPE is not set"):
        load_monitor_config(path, env={})


def test_webhook_url_from_environment_and_console_default() -> None:
    cfg = monitor_config_from_dict({}, {"sinks.jsonl.path": "e.jsonl"}, env={"SWAPWATCH_WEBHOOK_URL": "https://h/x"})
    assert [w.url for w in cfg.sinks.webhooks] == ["https://h/x"]
    assert cfg.sinks.console is not None  # no sinks section: the console stays on next to the overrides


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [("smoothing.alert_enter=0.9", "smoothing.alert_enter", 0.9), ("sinks.console=null", "sinks.console", None),
     ("faces.detector.type=embedded", "faces.detector.type", "embedded"), ("a.b=[1, 2]", "a.b", [1, 2])],
)
def test_set_option_parses_yaml_values(text: str, key: str, value: Any) -> None:
    assert parse_set_option(text) == (key, value)


def test_smoothing_thresholds_come_from_calibration_unless_set() -> None:
    cal = ScoreCalibration(method="identity", thresholds={"fpr_0.01": 0.6, "fpr_0.001": 0.9})
    cfg = monitor_config_from_dict({}, env={})
    assert cfg.smoothing.resolve(cal).suspicious_enter == pytest.approx(0.6)
    assert cfg.smoothing.resolve(cal).alert_enter == pytest.approx(0.9)
    cfg = monitor_config_from_dict({"smoothing": {"alert_enter": 0.95}}, env={})
    assert cfg.smoothing.resolve(cal).alert_enter == pytest.approx(0.95)
    with pytest.raises(ConfigError, match="smoothing"):
        monitor_config_from_dict({"smoothing": {"suspicious_enter": 0.97}}, env={}).smoothing.resolve(cal)


# --- the pipeline -----------------------------------------------------------------------------------------------


def _side(box: list[float] | tuple[float, ...], clip: DemoClip) -> str:
    return "left" if (box[0] + box[2]) / 2 < clip.width / 2 else "right"


def test_pipeline_flags_the_swapped_segment_and_writes_valid_events(
    clip: DemoClip, reference_model: Path, tmp_path: Path
) -> None:
    cfg = monitor_config([{"url": str(clip.path), "name": "clip", "realtime": False}], reference_model, tmp_path)
    frames: list[FrameReport] = []
    report = run_monitor_sync(cfg, observers=[frames.append])

    s = report.streams["clip"]
    assert report.stopped_by == "sources ended" and s.source_state == "ended" and s.error is None
    assert s.frames == clip.frames == len(frames)  # recorded source, policy all: no frame dropped
    assert s.crops_dropped == 0 and s.crops_failed == 0
    assert {"detect", "infer", "smooth", "emit", "queue"} <= set(report.timings["stages_ms"])
    assert report.timings["latency_ms"]["n"] == clip.frames

    raw_lines = (tmp_path / "events.jsonl").read_text().splitlines()
    for line in raw_lines:
        row = json.loads(line)
        assert all(k in row for k in CONTRACT_FIELDS), row
    events = read_events(tmp_path / "events.jsonl")
    stream_states = [e.source_state for e in events if e.type == "stream"]
    assert stream_states[:2] == ["connecting", "live"] and stream_states[-1] == "ended"
    assert events[-1].type == "stream"  # the end of the stream is the last thing said about it
    assert any(e.type == "summary" for e in events)

    changes = [e for e in events if e.type == "state" and not e.ended]
    assert changes, "no state change at all"
    start, end = clip.segment
    for e in changes:
        assert e.box is not None and e.frame_pts is not None and e.latency_ms is not None and e.raw_score is not None
        assert _side(e.box, clip) == "left", f"a real face changed state: {e.to_json()}"
        if e.state != "clear":
            assert start <= e.frame_pts < end + 0.5, f"rise outside the swap: {e.frame_pts}"
    rises = [(e.previous_state, e.state) for e in changes]
    assert ("clear", "suspicious") in rises and ("suspicious", "alert") in rises
    falls = [e for e in changes if e.state == "clear"]
    assert falls and all(e.frame_pts >= end for e in falls)

    # The frame observer saw every frame with both faces scored, and states agree with the events.
    assert sum(len(f.faces) == 2 for f in frames[10:]) >= 0.95 * (len(frames) - 10)
    left_states = {f.t: fc.state for f in frames for fc in f.faces if _side(fc.box, clip) == "left"}
    assert all(state == "clear" for t, state in left_states.items() if t < start)


@pytest.mark.parametrize("bad", ["missing", "corrupt", "empty"])
def test_a_failing_source_does_not_stop_the_other(clip: DemoClip, reference_model: Path, tmp_path: Path, bad: str) -> None:
    bad_path = tmp_path / f"{bad}.mp4"
    if bad == "corrupt":
        bad_path.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 64)
    elif bad == "empty":
        bad_path.write_bytes(b"")
    sources = [{"url": str(clip.path), "name": "good", "realtime": False}, {"url": str(bad_path), "name": "bad"}]
    cfg = monitor_config(sources, reference_model, tmp_path)
    report = run_monitor_sync(cfg)

    assert report.failed == ["bad"]
    assert report.streams["good"].frames == clip.frames and report.streams["good"].source_state == "ended"
    assert report.streams["bad"].frames == 0 and report.streams["bad"].source_state == "failed"
    events = read_events(tmp_path / "events.jsonl")
    bad_end = [e for e in events if e.stream == "bad" and e.type == "stream"][-1]
    assert bad_end.source_state == "failed" and bad_end.reason and bad_path.name in bad_end.reason
    assert [e for e in events if e.stream == "good" and e.type == "stream"][-1].source_state == "ended"
    assert any(e.stream == "good" and e.type == "state" for e in events)


def test_duration_stops_a_paced_source_and_flushes(clip: DemoClip, reference_model: Path, tmp_path: Path) -> None:
    cfg = monitor_config([{"url": str(clip.path), "name": "clip", "realtime": True}], reference_model, tmp_path)
    report = run_monitor_sync(cfg, duration_s=1.0)
    assert report.stopped_by.startswith("duration")
    assert 0 < report.streams["clip"].frames < clip.frames  # paced at 20 fps: 1 s is a fraction of 8 s
    events = read_events(tmp_path / "events.jsonl")
    assert events[-1].type == "stream" and events[-1].source_state == "ended"


def test_two_streams_share_one_batcher(clip: DemoClip, reference_model: Path, tmp_path: Path) -> None:
    sources = [{"url": str(clip.path), "name": n, "realtime": False} for n in ("a", "b")]
    cfg = monitor_config(sources, reference_model, tmp_path)
    report = run_monitor_sync(cfg)
    assert {n: s.frames for n, s in report.streams.items()} == {"a": clip.frames, "b": clip.frames}
    # Both streams' crops went through the one batcher: its count is the sum of both.
    assert report.batcher["completed"] == sum(s.faces_scored for s in report.streams.values())
    events = read_events(tmp_path / "events.jsonl")
    for name in ("a", "b"):
        assert any(e.stream == name and e.type == "state" and e.state == "alert" for e in events)


def test_frame_drops_are_counted_by_reason(clip: DemoClip, reference_model: Path, tmp_path: Path) -> None:
    """A file read as fast as it decodes under the `latest` policy: every frame the monitor did not get to is a
    `source_queue_full` drop in /metrics, and every reason is a series from the start."""
    import asyncio

    from prometheus_client import generate_latest

    from swapwatch.stream.sinks.metrics import FRAME_DROP_REASONS

    source = {"url": str(clip.path), "name": "fast", "realtime": False, "policy": "latest"}
    cfg = monitor_config([source], reference_model, tmp_path,
                         sinks={"jsonl": {"path": str(tmp_path / "events.jsonl")}, "metrics": {}})  # fmt: skip
    monitor = Monitor(cfg)
    report = asyncio.run(monitor.run())
    scored = report.streams["fast"].frames
    assert 0 < scored < clip.frames  # the decoder outran the detector: the queue of 1 dropped the rest
    text = generate_latest(monitor.metrics.registry).decode()
    for reason in FRAME_DROP_REASONS:
        assert f'swapwatch_dropped_frames_total{{reason="{reason}",stream="fast"}}' in text
    drops = {r: monitor.metrics.value("swapwatch_dropped_frames_total", {"stream": "fast", "reason": r})
             for r in FRAME_DROP_REASONS}  # fmt: skip
    assert drops == {"source_queue_full": clip.frames - scored, "decode_error": 0, "batcher_full": 0, "engine_error": 0}


def test_crop_size_must_match_the_model(clip: DemoClip, reference_model: Path, tmp_path: Path) -> None:
    cfg = monitor_config([{"url": str(clip.path)}], reference_model, tmp_path, faces={"size": 128})
    with pytest.raises(ConfigError, match=r"faces\.size: 128 differs from the model's input size 64"):
        run_monitor_sync(cfg)


def test_no_sources_is_a_config_error(reference_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sources"):
        run_monitor_sync(monitor_config([], reference_model, tmp_path))
