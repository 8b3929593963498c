"""The face tracker on synthetic boxes: identities through motion, turns, occlusion, crossings and exits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.optimize import linear_sum_assignment

from swapwatch.stream.faces import Face
from swapwatch.stream.tracker import FaceTracker, TrackerConfig, iou_matrix

FPS = 30.0
# Landmarks as fractions of the box (left eye, right eye, nose, mouth corners), roughly a frontal face.
REL_LANDMARKS = np.array([[0.32, 0.4], [0.68, 0.4], [0.5, 0.58], [0.36, 0.76], [0.64, 0.76]])


def face_at(box: np.ndarray, score: float = 0.99) -> Face:
    box = np.asarray(box, dtype=np.float64)
    wh = box[2:] - box[:2]
    return Face(box=box, landmarks=box[:2] + REL_LANDMARKS * wh, score=score)


def box_from(cx: float, cy: float, w: float = 100.0, h: float = 120.0) -> np.ndarray:
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


@dataclass
class Frame:
    """Ground truth for one frame: where each object really is, which are hidden, whether detection runs."""

    objects: dict[str, np.ndarray]
    hidden: set[str] = field(default_factory=set)
    detect: bool = True


@dataclass
class Run:
    ids: dict[str, list[int]]  # object -> the track id it was given on each frame it was returned
    frames_seen: dict[str, list[int]]  # object -> frame indices where it was returned
    ended: list[int]
    outputs: list[list[Face]]


def run(frames: list[Frame], cfg: TrackerConfig | None = None) -> Run:
    """Feed the scenario to a tracker and attribute each returned face to the ground-truth box it overlaps most."""
    tracker = FaceTracker(cfg)
    ids: dict[str, list[int]] = {}
    seen: dict[str, list[int]] = {}
    outputs = []
    for i, frame in enumerate(frames):
        dets = [face_at(b) for k, b in frame.objects.items() if k not in frame.hidden] if frame.detect else None
        faces = tracker.update(i / FPS, dets)
        outputs.append(faces)
        keys = list(frame.objects)
        if faces:
            # pair returned faces with true boxes one-to-one by IoU, as MOT metrics do
            overlap = iou_matrix(np.array([f.box for f in faces]), np.array([frame.objects[k] for k in keys]))
            rows, cols = linear_sum_assignment(-overlap)
            assert len(rows) == len(faces), f"frame {i}: more faces returned than objects"
            for r, c in zip(rows, cols):
                assert overlap[r, c] > 0.3, f"frame {i}: returned box {faces[r].box} lies on no object"
                ids.setdefault(keys[c], []).append(int(faces[r].track_id))
                seen.setdefault(keys[c], []).append(i)
    return Run(ids, seen, tracker.ended_tracks(), outputs)


def linear(n: int, start: tuple[float, float], step: tuple[float, float], every: int = 1, **size: float) -> list[Frame]:
    return [
        Frame({"a": box_from(start[0] + i * step[0], start[1] + i * step[1], **size)}, detect=i % every == 0)
        for i in range(n)
    ]


def with_hidden(frames: list[Frame], key: str, frames_hidden: range) -> list[Frame]:
    for i in frames_hidden:
        frames[i].hidden.add(key)
    return frames


def crossing(n: int = 40, every: int = 3, offset: float = 0.3) -> list[Frame]:
    """a goes right, b goes left, rows `offset` face heights apart; b hides a while they overlap (8 frames).

    Without the motion model a's track would take b's detection when a reappears (checked by mutation).
    """
    frames = []
    for i in range(n):
        a = box_from(100 + 10 * i, 200)
        b = box_from(490 - 10 * i, 200 + offset * 120)
        hidden = {"a"} if iou_matrix(a, b)[0, 0] > 0.1 else set()
        frames.append(Frame({"a": a, "b": b}, hidden=hidden, detect=i % every == 0))
    return frames


def accelerating(n: int = 30, every: int = 3, acc: float = 1.5) -> list[Frame]:
    """Speeds up to 45 px/frame: only a motion model keeps the predicted box on the face between rounds."""
    return [Frame({"a": box_from(50 + 0.5 * acc * i * i, 200)}, detect=i % every == 0) for i in range(n)]


def turning(n: int = 30, every: int = 3) -> list[Frame]:
    """A head turning while it drifts: its box narrows from 100 to 55 pixels wide and widens again."""
    widths = 100 - 45 * np.sin(np.linspace(0, np.pi, n))
    return [Frame({"a": box_from(200 + 3 * i, 200, w=float(w))}, detect=i % every == 0) for i, w in enumerate(widths)]


def appearing(n: int = 30, at: int = 10) -> list[Frame]:
    frames = linear(n, (150, 200), (4, 0), every=3)
    for i in range(at, n):
        frames[i].objects["b"] = box_from(450, 150 + i, w=80, h=96)
    # the newcomer shows up between detection rounds: it is found on the next round
    return frames


def leaving(n: int = 60) -> list[Frame]:
    """Walks off the frame at frame 15: after that the detector no longer sees it (the box is kept as ground truth)."""
    frames = linear(n, (200, 200), (12, 0), every=3)
    return with_hidden(frames, "a", range(15, n))


FAST = TrackerConfig(max_missed_frames=10, max_missed_seconds=10.0)


@pytest.mark.parametrize(
    ("frames", "cfg", "ids_per_object", "ended"),
    [
        pytest.param(linear(40, (100, 200), (6, 2)), None, {"a": 1}, 0, id="linear-every-frame"),
        # 60 px between rounds: IoU 0.25, below iou_match; the centre distance carries the match
        pytest.param(linear(40, (100, 200), (20, 0), every=3), None, {"a": 1}, 0, id="fast-linear-every-3rd"),
        pytest.param(accelerating(), None, {"a": 1}, 0, id="accelerating"),
        pytest.param(linear(40, (300, 200), (0, 0), every=3), None, {"a": 1}, 0, id="stationary"),
        pytest.param(turning(), None, {"a": 1}, 0, id="turning-head"),
        pytest.param(
            with_hidden(linear(40, (100, 200), (5, 0)), "a", range(10, 18)), FAST, {"a": 1}, 0, id="occlusion-shorter"
        ),
        pytest.param(
            with_hidden(linear(40, (100, 200), (5, 0)), "a", range(10, 25)), FAST, {"a": 2}, 1, id="occlusion-longer"
        ),
        pytest.param(
            with_hidden(linear(40, (100, 200), (5, 0), every=3), "a", range(9, 16)),
            FAST,
            {"a": 1},
            0,
            id="occlusion-between-detection-rounds",
        ),
        pytest.param(crossing(), None, {"a": 1, "b": 1}, 0, id="crossing-every-3rd"),
        pytest.param(crossing(every=1), None, {"a": 1, "b": 1}, 0, id="crossing-every-frame"),
        pytest.param(crossing(offset=0.5), None, {"a": 1, "b": 1}, 0, id="crossing-wider-apart"),
        pytest.param(appearing(), None, {"a": 1, "b": 1}, 0, id="new-face-appears"),
        pytest.param(leaving(), FAST, {"a": 1}, 1, id="leaves-the-frame"),
    ],
)
def test_identities(frames: list[Frame], cfg: TrackerConfig | None, ids_per_object: dict[str, int], ended: int) -> None:
    result = run(frames, cfg)
    assert {k: len(set(v)) for k, v in result.ids.items()} == ids_per_object
    all_ids = [set(v) for v in result.ids.values()]
    assert all(a.isdisjoint(b) for i, a in enumerate(all_ids) for b in all_ids[i + 1 :]), "two objects shared an id"
    assert len(result.ended) == ended


@pytest.mark.parametrize("every", [1, 3])
def test_faces_are_returned_while_the_latest_detection_saw_them(every: int) -> None:
    """Returned on frame i exactly when confirmed (seen on rounds 0 and `every`) and the latest round saw it."""
    frames = crossing(every=every)
    result = run(frames, TrackerConfig(min_hits=2))
    for key in ("a", "b"):
        expected = []
        for i in range(every, len(frames)):
            latest_round = max(j for j in range(i + 1) if frames[j].detect)
            if key not in frames[latest_round].hidden:
                expected.append(i)
        assert result.frames_seen[key] == expected
    assert any("a" in f.hidden for f in frames)  # the scenario does hide a face


@pytest.mark.parametrize(
    ("speed", "every", "max_error_px"),
    [(0.0, 3, 0.01), (6.0, 3, 2.0), (15.0, 3, 4.0), (15.0, 5, 9.0)],
)
def test_predictions_follow_linear_motion(speed: float, every: int, max_error_px: float) -> None:
    frames = linear(45, (100, 200), (speed, speed / 3), every=every)
    result = run(frames)
    errors = []
    for i, (frame, faces) in enumerate(zip(frames, result.outputs)):
        if i >= 2 * every and not frame.detect:  # velocity known after two rounds
            (face,) = faces
            errors.append(np.abs(face.box - frame.objects["a"]).max())
    assert errors and max(errors) <= max_error_px


@pytest.mark.parametrize(
    ("mode", "moves"),
    [("box", True), ("hold", False)],
)
def test_landmarks_between_detections(mode: str, moves: bool) -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1, landmarks=mode))
    for i in range(3):  # 6 px/frame right, 2 down: velocity learnt exactly
        tracker.update(i / FPS, [face_at(box_from(100 + 6 * i, 200 + 2 * i))])
    detected = tracker.update(3 / FPS, [face_at(box_from(118, 206))])[0]
    predicted = tracker.update(5 / FPS, None)[0]
    assert tracker.detected_ids == frozenset()
    shift = (predicted.landmarks - detected.landmarks).mean(axis=0)
    # 2 frames at (180, 60) px/s, damped with the 0.5 s time constant: 93.6% of the undamped 12 x 4 px
    travel = 0.5 * (1 - np.exp(-(2 / FPS) / 0.5))
    expected_shift = np.array([180.0, 60.0]) * travel if moves else np.zeros(2)
    np.testing.assert_allclose(shift, expected_shift, atol=0.01)
    if mode == "box":
        np.testing.assert_allclose(predicted.landmarks - detected.landmarks, np.tile(shift, (5, 1)), atol=1e-3)


@pytest.mark.parametrize(
    ("min_hits", "rounds_seen", "returned_on_round"),
    [(1, 1, [True]), (2, 1, [False]), (2, 2, [False, True]), (3, 3, [False, False, True])],
)
def test_min_hits_confirms_tracks(min_hits: int, rounds_seen: int, returned_on_round: list[bool]) -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=min_hits))
    returned = [bool(tracker.update(i / FPS, [face_at(box_from(200, 200))])) for i in range(rounds_seen)]
    assert returned == returned_on_round
    tracker.update(rounds_seen / FPS, [])  # vanishes
    for i in range(rounds_seen + 1, rounds_seen + 60):
        tracker.update(i / FPS, [])
    # only confirmed tracks are reported as ended; tentative ones disappear silently
    assert tracker.ended_tracks() == ([1] if returned_on_round[-1] else [])


@pytest.mark.parametrize(
    ("detect_every", "max_missed_frames", "survives"),
    [
        (40, 5, True),  # skipped detections are not misses, however many
        (1, 5, False),  # ...but 40 detection rounds that find nothing are
    ],
)
def test_skipped_detections_are_not_misses(detect_every: int, max_missed_frames: int, survives: bool) -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1, max_missed_frames=max_missed_frames, max_missed_seconds=99.0))
    tracker.update(0.0, [face_at(box_from(200, 200))])
    for i in range(1, 40):
        tracker.update(i / FPS, None if i % detect_every else [])
    assert (tracker.has_tracks, tracker.ended_tracks() == []) == (survives, survives)


@pytest.mark.parametrize(
    ("gap_s", "max_missed_seconds", "same_id"),
    [(0.3, 0.5, True), (0.8, 0.5, False), (2.0, 3.0, True)],
)
def test_miss_budget_in_seconds(gap_s: float, max_missed_seconds: float, same_id: bool) -> None:
    """A live source at 5 fps: the seconds budget ends a track long before the frame budget would."""
    cfg = TrackerConfig(min_hits=1, max_missed_frames=1000, max_missed_seconds=max_missed_seconds)
    tracker = FaceTracker(cfg)
    box = box_from(200, 200)
    first = tracker.update(0.0, [face_at(box)])[0].track_id
    t = 0.2
    tracker.update(t, [])  # the first missing round
    while t < 0.2 + gap_s - 1e-9:
        t += 0.2
        tracker.update(t, [])
    again = tracker.update(t + 0.2, [face_at(box)])[0].track_id
    assert (again == first) == same_id
    assert tracker.ended_tracks() == ([] if same_id else [first])


def test_ended_tracks_are_reported_once_and_reset_ends_all() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1, max_missed_frames=2))
    tracker.update(0.0, [face_at(box_from(100, 100)), face_at(box_from(400, 100))])
    for i in range(1, 5):
        tracker.update(i / FPS, [face_at(box_from(400, 100))])
    assert tracker.ended_tracks() == [1]
    assert tracker.ended_tracks() == []
    tracker.reset()
    assert tracker.ended_tracks() == [2]
    assert tracker.update(1.0, [face_at(box_from(100, 100))])[0].track_id == 3  # ids are never reused


@pytest.mark.parametrize(
    ("times", "ok"),
    [([0.0, 0.1, 0.05, 0.2], True), ([0.0, float("nan")], False), ([0.0, float("inf")], False)],
)
def test_time_checks(times: list[float], ok: bool) -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1))
    if ok:
        ids = {tracker.update(t, [face_at(box_from(200, 200))])[0].track_id for t in times}
        assert ids == {1}  # a step back in time is "no time passed", not a new face
    else:
        tracker.update(times[0], None)
        with pytest.raises(ValueError, match="finite"):
            tracker.update(times[1], None)


def test_detections_are_not_mutated() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1))
    det = face_at(box_from(200, 200))
    (out,) = tracker.update(0.0, [det])
    assert det.track_id is None and out.track_id == 1
    np.testing.assert_allclose(out.box, det.box, atol=1e-3)
    np.testing.assert_allclose(out.landmarks, det.landmarks, atol=1e-3)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),
    ],
)
def test_iou_matrix(a: list[float], b: list[float], expected: float) -> None:
    assert iou_matrix(np.array(a), np.array(b))[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize(
    "bad",
    [
        {"iou_match": 1.5},
        {"min_hits": 0},
        {"max_missed_frames": -1},
        {"damping_seconds": 0.0},
        {"velocity_smoothing": 0.0},
        {"max_scale_change": 1.0},
        {"landmarks": "warp"},
        {"max_missed": 3},  # misspelt key
    ],
)
def test_config_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TrackerConfig(**bad)
