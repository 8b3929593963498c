"""Detect every N frames + track + align, on synthetic videos made of the real faces in insightface's t1.jpg.

Each video pastes face patches cut from t1.jpg (6 faces) onto a noisy grey 640x360 canvas and moves
them; the real embedded RetinaFace runs on the frames. Ground truth is where each patch's face box was
pasted, so every returned face can be attributed to the person it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from swapwatch.media.image import read_image
from swapwatch.stream.face_tracking import FaceTracking, TrackedFace
from swapwatch.stream.faces import DetectorConfig, Face, FaceDetector, load_detector
from swapwatch.stream.tracker import TrackerConfig, iou_matrix

T1 = Path(__import__("insightface").__file__).parent / "data" / "images" / "t1.jpg"
W, H = 640, 360
FPS = 30.0


@dataclass
class Patch:
    """A face cut from t1.jpg with context around it, and where the detector put the face inside it."""

    pixels: np.ndarray
    face_box: np.ndarray  # x1y1x2y2 inside `pixels`


@dataclass
class Sprite:
    """A patch moving along `path(i) -> top-left (x, y)`, squeezed horizontally by `squeeze(i)` (a turning head)."""

    patch: Patch
    path: Callable[[int], tuple[float, float]]
    squeeze: Callable[[int], float] = lambda i: 1.0


@dataclass
class Video:
    frames: list[np.ndarray]
    truth: list[dict[str, np.ndarray]]  # per frame: person -> face box, for faces at least half inside the frame


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return load_detector(DetectorConfig())


@pytest.fixture(scope="module")
def patches(detector: FaceDetector) -> list[Patch]:
    """The six faces of t1.jpg, left to right, each with 0.25 face sizes of context on every side."""
    image = read_image(T1)
    faces = sorted(detector.detect(image), key=lambda f: float(f.box[0]))
    assert len(faces) == 6
    out = []
    for face in faces:
        x1, y1, x2, y2 = face.box
        cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, 0.75 * (x2 - x1), 0.75 * (y2 - y1)
        px1, py1 = int(max(cx - hw, 0)), int(max(cy - hh, 0))
        px2, py2 = int(min(cx + hw, image.shape[1])), int(min(cy + hh, image.shape[0]))
        out.append(Patch(image[py1:py2, px1:px2].copy(), face.box - np.array([px1, py1, px1, py1], dtype=np.float32)))
    return out


def background() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(118 + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)


def paste(canvas: np.ndarray, pixels: np.ndarray, x: int, y: int) -> None:
    """Copy `pixels` with its top-left at (x, y), clipped to the canvas."""
    h, w = pixels.shape[:2]
    cx1, cy1, cx2, cy2 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if cx1 < cx2 and cy1 < cy2:
        canvas[cy1:cy2, cx1:cx2] = pixels[cy1 - y : cy2 - y, cx1 - x : cx2 - x]


def render(
    sprites: dict[str, Sprite], n: int, occluders: Callable[[int], dict[str, tuple[int, int, int, int]]] | None = None
) -> Video:
    """Draw the sprites in dict order (later ones in front) and grey rectangles over occluded people."""
    base = background()
    video = Video([], [])
    for i in range(n):
        canvas = base.copy()
        truth = {}
        for key, sprite in sprites.items():
            squeeze = sprite.squeeze(i)
            pixels, box = sprite.patch.pixels, sprite.patch.face_box.astype(np.float64)
            if squeeze != 1.0:
                pixels = cv2.resize(pixels, (round(pixels.shape[1] * squeeze), pixels.shape[0]), cv2.INTER_AREA)
                box = box * np.array([squeeze, 1, squeeze, 1])
            x, y = (round(v) for v in sprite.path(i))
            paste(canvas, pixels, x, y)
            box = box + np.array([x, y, x, y])
            inside = (min(box[2], W) - max(box[0], 0)) / (box[2] - box[0])
            if inside >= 0.5:
                truth[key] = box
        for x1, y1, x2, y2 in (occluders(i) if occluders else {}).values():
            canvas[y1:y2, x1:x2] = 128
        video.frames.append(canvas)
        video.truth.append(truth)
    return video


class CountingDetector:
    """Wraps a detector and records on which frames it ran."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        self.calls += 1
        return self.inner.detect(image_bgr)


@dataclass
class Result:
    ids: dict[str, set[int]]  # person -> track ids it was returned with
    seen: dict[str, list[int]]  # person -> frames it was returned on
    ended: list[int]
    outputs: list[list[TrackedFace]]
    detected_frames: list[int]  # frames the detector ran on
    tracking: FaceTracking


def attribute(faces: list[TrackedFace], truth: dict[str, np.ndarray], frame: int) -> list[tuple[TrackedFace, str]]:
    """Pair returned faces with true faces one-to-one by IoU (as MOT metrics do); every face must pair above 0.3."""
    keys = list(truth)
    if not faces:
        return []
    assert keys, f"frame {frame}: {len(faces)} faces returned on a frame with none"
    overlap = iou_matrix(np.array([f.box for f in faces]), np.array([truth[k] for k in keys]))
    rows, cols = linear_sum_assignment(-overlap)
    assert len(rows) == len(faces), f"frame {frame}: more faces returned than there are people"
    for r, c in zip(rows, cols):
        assert overlap[r, c] > 0.3, f"frame {frame}: track {faces[r].track_id} at {faces[r].box} shows no face"
    return [(faces[r], keys[c]) for r, c in zip(rows, cols)]


def track(video: Video, detector: FaceDetector, detect_every: int = 3, cfg: TrackerConfig | None = None) -> Result:
    counting = CountingDetector(detector)
    tracking = FaceTracking(counting, cfg, detect_every=detect_every, size=112, margin=0.15)
    ids: dict[str, set[int]] = {}
    seen: dict[str, list[int]] = {}
    ended: list[int] = []
    outputs = []
    detected_frames = []
    for i, frame in enumerate(video.frames):
        before = counting.calls
        faces = tracking.process(frame, i / FPS)
        if counting.calls > before:
            detected_frames.append(i)
        ended += tracking.ended_tracks()
        outputs.append(faces)
        for face in faces:
            assert face.crop.crop.shape == (112, 112, 3)
            assert not face.detected or i in detected_frames
        for face, key in attribute(faces, video.truth[i], i):
            ids.setdefault(key, set()).add(face.track_id)
            seen.setdefault(key, []).append(i)
    return Result(ids, seen, ended, outputs, detected_frames, tracking)


# --- the scenes ---------------------------------------------------------------------------------


def moving(p: list[Patch]) -> Video:
    """Three people drifting in different directions (their patches never touch); the middle one turns its
    head (its box narrows to 65% and back)."""
    sprites = {
        "left": Sprite(p[0], lambda i: (10 + 1 * i, 10 + 3 * i)),
        "middle": Sprite(p[2], lambda i: (230, 140 - 3 * i), lambda i: 1 - 0.35 * np.sin(np.pi * i / 36)),
        "right": Sprite(p[5], lambda i: (470 - 1.5 * i, 20 + 3 * i)),
    }
    return render(sprites, 36)


def occluded(p: list[Patch]) -> Video:
    """Two people walking; a grey board hides the left one's whole patch for frames 10-14."""
    sprites = {"a": Sprite(p[1], lambda i: (40 + 4 * i, 60)), "b": Sprite(p[4], lambda i: (430, 100 - i))}

    def board(i: int) -> dict[str, tuple[int, int, int, int]]:
        if 10 <= i < 15:
            x = 40 + 4 * i
            return {"a": (x - 10, 50, x + p[1].pixels.shape[1] + 10, 70 + p[1].pixels.shape[0])}
        return {}

    return render(sprites, 30, board)


def leaving(p: list[Patch]) -> Video:
    """One person walks off the right edge (gone by frame ~21); the other stays."""
    sprites = {"a": Sprite(p[3], lambda i: (330 + 15 * i, 80)), "b": Sprite(p[0], lambda i: (40, 60))}
    return render(sprites, 60)


def crossing(p: list[Patch]) -> Video:
    """Two people swap sides at 10 px/frame, passing each other; b walks in front, 25 px lower, and hides a
    for ~4 frames. Without the motion model a's track takes b's detection as they part (checked by mutation)."""
    sprites = {
        "a": Sprite(p[2], lambda i: (20 + 10 * i, 40)),
        "b": Sprite(p[5], lambda i: (460 - 10 * i, 65)),
    }
    return render(sprites, 45)


@pytest.mark.parametrize(
    ("scene", "people", "ends", "gaps"),
    [
        pytest.param(moving, {"left", "middle", "right"}, set(), set(), id="moving-and-turning"),
        pytest.param(occluded, {"a", "b"}, set(), {"a"}, id="occluded-5-frames"),
        pytest.param(leaving, {"a", "b"}, {"a"}, set(), id="leaving-the-frame"),
        pytest.param(crossing, {"a", "b"}, set(), {"a"}, id="crossing"),
    ],
)
def test_each_person_keeps_one_id(
    detector: FaceDetector,
    patches: list[Patch],
    scene: Callable[[list[Patch]], Video],
    people: set[str],
    ends: set[str],
    gaps: set[str],
) -> None:
    """`gaps`: people the scene really hides for a while (they drop out of the output, then come back)."""
    video = scene(patches)
    result = track(video, detector, detect_every=3)
    has_gap = {k for k, frames in result.seen.items() if frames != list(range(frames[0], frames[-1] + 1))}
    assert has_gap == gaps
    assert set(result.ids) == people
    assert all(len(ids) == 1 for ids in result.ids.values()), result.ids
    id_of = {key: next(iter(ids)) for key, ids in result.ids.items()}
    assert len(set(id_of.values())) == len(people), "two people shared an id"
    assert set(result.ended) == {id_of[k] for k in ends}


def test_faces_are_tracked_on_every_frame_between_detections(detector: FaceDetector, patches: list[Patch]) -> None:
    """Once confirmed (frame 1: a new track triggers the next detection), every person is returned on every
    frame, the detector runs on about one frame in three, and the propagated landmarks stay on the face."""
    video = moving(patches)
    result = track(video, detector, detect_every=3)
    n = len(video.frames)
    for key in ("left", "middle", "right"):
        assert result.seen[key] == list(range(1, n)), key
    assert len(result.detected_frames) <= n // 3 + 2
    assert result.detected_frames[:2] == [0, 1]

    errors = []
    for i, faces in enumerate(result.outputs):
        if i in result.detected_frames:
            continue
        truth = {tuple(np.round(f.box)): f for f in detector.detect(video.frames[i])}
        for face in faces:
            assert not face.detected
            ref = max(truth.values(), key=lambda f: iou_matrix(f.box, face.box)[0, 0])
            size = np.sqrt(ref.width * ref.height)
            errors.append(np.linalg.norm(face.landmarks - ref.landmarks, axis=1).max() / size)
    # The detector itself jitters by a few % of the face size from frame to frame. Measured here: worst 0.067,
    # mean 0.026 with landmarks moved with the box; holding the last detected ones gives 0.109 and 0.056.
    assert errors and max(errors) < 0.09 and np.mean(errors) < 0.04, (max(errors), np.mean(errors))


@pytest.mark.parametrize(("detect_every", "max_runs"), [(1, 36), (3, 14), (6, 8)])
def test_detection_cadence(detector: FaceDetector, patches: list[Patch], detect_every: int, max_runs: int) -> None:
    result = track(moving(patches), detector, detect_every=detect_every)
    assert len(result.detected_frames) <= max_runs
    assert all(len(ids) == 1 for ids in result.ids.values())


def test_empty_scene_detects_every_frame_and_picks_up_a_newcomer(detector: FaceDetector, patches: list[Patch]) -> None:
    sprites = {"a": Sprite(patches[4], lambda i: (200, 60) if i >= 7 else (-1000, 60))}
    video = render(sprites, 15)
    result = track(video, detector, detect_every=5)
    assert result.detected_frames[:9] == list(range(9))  # nothing to track: look on every frame
    assert result.seen["a"][0] == 8  # appears at 7, confirmed by the detection on the very next frame
    assert len(result.ids["a"]) == 1


def test_streams_keep_their_own_tracks(detector: FaceDetector, patches: list[Patch]) -> None:
    video = moving(patches)
    first, second = FaceTracking(detector), FaceTracking(detector)
    for i in range(4):
        a = first.process(video.frames[i], i / FPS)
        b = second.process(video.frames[i][:, ::-1].copy(), i / FPS)
    assert sorted(f.track_id for f in a) == sorted(f.track_id for f in b) == [1, 2, 3]
    first.reset()
    assert sorted(first.ended_tracks()) == [1, 2, 3] and second.ended_tracks() == []


@pytest.mark.parametrize("detect_every", [0, -1])
def test_rejects_bad_cadence(detector: FaceDetector, detect_every: int) -> None:
    with pytest.raises(ValueError, match="detect_every"):
        FaceTracking(detector, detect_every=detect_every)
