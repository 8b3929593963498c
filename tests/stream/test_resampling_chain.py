"""The one resampling chain (swapwatch/stream/faces/chain.py) on a real photo.

Training reads canonical 256 px crops from the aligned-crop cache and shrinks them with `to_input`; the
monitor, `scan` and scoring pipelines align the live frame through `face_input`. Both must hand the
model the same pixels (within one grey level), or the high frequencies a detector learned in training
are not the ones it sees in use. The old direct warp to the input size is shown to differ.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from swapwatch.media.image import read_image
from swapwatch.stream.face_tracking import FaceTracking
from swapwatch.stream.faces import (
    CANONICAL_SIZE,
    DetectorConfig,
    Face,
    FaceDetector,
    FacePipeline,
    align_face,
    face_input,
    load_detector,
    template_landmarks,
    to_input,
)
from swapwatch.stream.faces.align import ARCFACE_112
from swapwatch.stream.scan.faces_stage import FaceStage
from swapwatch.stream.scan.items import FaceFrame, FrameJob
from swapwatch.train.data.cache import FaceCacheConfig, build_face_cache, load_face_cache, read_crop
from swapwatch.train.data.items import MediaItem

MARGIN = 0.15
SIZES = [160, 224, 256]
PATHS = ["face_input", "tracker", "scan", "pipeline"]


def _t1_path() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        pytest.skip("insightface is not installed (its t1.jpg is the test photo)")
    path = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the installed insightface")
    return path


@pytest.fixture(scope="module")
def photo() -> Path:
    return _t1_path()


@pytest.fixture(scope="module")
def frame(photo: Path) -> np.ndarray:
    return read_image(photo)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return load_detector(DetectorConfig())  # the cache's default: the embedded RetinaFace


@pytest.fixture(scope="module")
def faces(frame: np.ndarray, detector: FaceDetector) -> list[Face]:
    found = detector.detect(frame)
    assert len(found) >= 2, "t1.jpg shows six faces"
    return found


@pytest.fixture(scope="module")
def training_crops(tmp_path_factory: pytest.TempPathFactory, photo: Path, faces: list[Face]) -> list[np.ndarray]:
    """The training path's canonical crops: a face cache built from the one photo, one crop per detected
    face (in the order of `faces`), read back from its PNGs."""
    root = tmp_path_factory.mktemp("chain") / "cache"
    item = MediaItem(path=photo, label=0, video_id="t1", split="train", dataset="t1", source="insightface",
                     kind="image")
    cfg = FaceCacheConfig(root=root, size=CANONICAL_SIZE, margin=MARGIN, max_faces_per_frame=16, keep="score")
    report = build_face_cache([item], cfg, progress=False)
    assert report.crops_written == len(faces)
    records = load_face_cache(root)
    crops = []
    for face in faces:
        record = min(records, key=lambda r: float(np.abs(r.box - face.box).max()))
        assert np.abs(record.box - face.box).max() < 0.02  # the cache rounds boxes to 0.01 px
        crop = read_crop(record)
        assert crop.shape == (CANONICAL_SIZE, CANONICAL_SIZE, 3)
        crops.append(crop)
    return crops


def _grey_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _nearest(boxes: list[np.ndarray], face: Face) -> int:
    return int(np.argmin([float(np.abs(np.asarray(b, np.float32) - face.box).max()) for b in boxes]))


def _live_crops(path: str, size: int, frame: np.ndarray, faces: list[Face], detector: FaceDetector) -> list[np.ndarray]:
    """Model inputs at `size` for `faces`, in their order, as each inference code path makes them."""
    if path == "face_input":
        return [face_input(frame, f.landmarks, size, MARGIN, CANONICAL_SIZE).crop for f in faces]
    if path == "tracker":  # the monitor's per-stream face tracking
        tracking = FaceTracking(detector, size=size, margin=MARGIN, crop_size=CANONICAL_SIZE)
        tracking.process(frame, 0.0)  # tracks are confirmed by their second detection
        tracked = tracking.process(frame, 1 / 30)
        assert len(tracked) == len(faces) and all(t.detected for t in tracked)
        return [tracked[_nearest([t.box for t in tracked], f)].crop.crop for f in faces]
    if path == "scan":  # scan's face stage, with an engine whose preprocess hands the crops back
        alignment = SimpleNamespace(margin=MARGIN, size=CANONICAL_SIZE)
        engine = SimpleNamespace(input_size=size, meta=SimpleNamespace(alignment=alignment), preprocess=np.asarray)
        out = FaceStage(detector, engine).finish(FrameJob(seq=0, file=0, index=0, t=0.0, image=frame, kind="image"))
        assert isinstance(out, FaceFrame) and out.error is None and out.crops is not None
        boxes = [np.asarray(info.box) for info in out.faces]
        return [out.crops[_nearest(boxes, f)] for f in faces]
    if path == "pipeline":  # a FacePipeline used for scoring (samples, calibration crops)
        aligned = FacePipeline(detector, size=size, margin=MARGIN, crop_size=CANONICAL_SIZE).process(frame)
        assert len(aligned) == len(faces)
        return [aligned[_nearest([a.face.box for a in aligned], f)].crop for f in faces]
    raise AssertionError(path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", SIZES)
def test_training_and_inference_paths_agree_within_one_grey_level(
    path: str, size: int, frame: np.ndarray, faces: list[Face], detector: FaceDetector,
    training_crops: list[np.ndarray],
) -> None:
    live = _live_crops(path, size, frame, faces, detector)
    diffs = [_grey_diff(to_input(train, size), crop) for train, crop in zip(training_crops, live, strict=True)]
    assert max(diffs) <= 1, f"{path} at {size} px: max grey-level difference per face {diffs}"


@pytest.mark.parametrize("size", [160, 224])
def test_the_old_direct_warp_differs_from_the_chain(
    size: int, frame: np.ndarray, faces: list[Face], training_crops: list[np.ndarray]
) -> None:
    """What the monitor used to do (warp straight to the input size) is not what training sees."""
    diffs = [
        _grey_diff(to_input(train, size), align_face(frame, f.landmarks, size, MARGIN).crop)
        for train, f in zip(training_crops, faces, strict=True)
    ]
    assert min(diffs) > 1, f"direct warp to {size} px: max grey-level difference per face {diffs}"


def test_a_model_whose_canonical_size_is_its_input_size_gets_the_direct_warp(
    frame: np.ndarray, faces: list[Face]
) -> None:
    """Old sidecars (alignment.size == input_size, e.g. the embedded default model) keep their geometry."""
    for f in faces:
        chained = face_input(frame, f.landmarks, 160, MARGIN, 160)
        direct = align_face(frame, f.landmarks, 160, MARGIN)
        np.testing.assert_array_equal(chained.crop, direct.crop)
        np.testing.assert_allclose(chained.landmarks, direct.landmarks, atol=1e-4)


# --- landmarks and matrix of face_input -----------------------------------------------------------


def _blob_image(points: np.ndarray, shape: tuple[int, int] = (520, 640), sigma: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    grey = np.zeros(shape, np.float64)
    for x, y in points:
        grey += 255.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat(np.clip(grey, 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroids(crop: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    grey = crop[..., 1].astype(np.float64)
    out = []
    for x, y in points:
        x0, x1 = round(x - radius), round(x + radius) + 1
        y0, y1 = round(y - radius), round(y + radius) + 1
        w = grey[y0:y1, x0:x1]
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.asarray(out)


@pytest.mark.parametrize(
    ("size", "crop_size"),
    [(160, 256), (224, 256), (256, 256), (299, 256), (160, 160)],
)
def test_face_input_landmarks_are_the_template_at_input_size(size: int, crop_size: int) -> None:
    """Landmarks that are an exact similarity of the template come out on the template at input size.

    "The template at input size" is the canonical template carried through `to_input`'s resize, whose
    pixel-centre map x_in = (x_crop + 0.5) * s - 0.5 places it a uniform 0.5 * s - 0.5 px from
    `template_landmarks(size)` (0 when crop_size == size, -0.1875 px for 256 -> 160). The returned
    landmarks are checked against that template and against where the landmarks actually land in the
    pixels (centroids of blobs drawn at the source landmarks), and the matrix against the landmarks.
    """
    angle, scale = 0.3, 1.7
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = ARCFACE_112 @ rotation.T + [300.3, 200.7]
    out = face_input(_blob_image(source), source, size, MARGIN, crop_size)

    s = size / crop_size
    template = template_landmarks(crop_size, MARGIN).astype(np.float64) * s + (0.5 * s - 0.5)
    assert out.crop.shape == (size, size, 3)
    np.testing.assert_allclose(out.landmarks, template, atol=0.05)
    np.testing.assert_allclose(out.landmarks - template_landmarks(size, MARGIN), 0.5 * s - 0.5, atol=0.05)
    np.testing.assert_allclose(_centroids(out.crop, out.landmarks, 8 * s + 2), out.landmarks, atol=0.05)
    mapped = source @ out.matrix[:, :2].T.astype(np.float64) + out.matrix[:, 2]
    np.testing.assert_allclose(mapped, out.landmarks, atol=0.01)
