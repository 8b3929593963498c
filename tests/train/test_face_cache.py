"""The aligned-crop cache on a tiny plain-folder dataset of real faces (images and one short mp4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from swapwatch.errors import ConfigError, DatasetLayoutError, MediaError
from swapwatch.media.video import sample_indices
from swapwatch.stream.faces import DetectorConfig, FacePipeline, load_detector, template_landmarks
from swapwatch.train.data import DatasetConfig, MediaItem, read_dataset
from swapwatch.train.data.cache import (
    INDEX,
    ITEMS,
    MANIFEST,
    NO_FACE,
    CacheReport,
    FaceCacheConfig,
    build_face_cache,
    load_face_cache,
    read_crop,
)
from tests.train.conftest import write_clip

SIZE = 128
MARGIN = 0.15
FRAMES = 3
CLIP_FRAMES = 6

# file under the dataset root -> crops expected (max_faces_per_frame=1), or the skip reason expected
EXPECTED: dict[str, int | str] = {
    "real/t1.jpg": 1,  # six faces, the largest kept
    "real/hanks.png": 1,
    "real/astronaut.png": 1,
    "fake/clip.mp4": FRAMES,
    "fake/broken.jpg": "not a readable image",
    "fake/noise.png": NO_FACE,
}


def _build_dataset(root: Path, faces: dict[str, np.ndarray]) -> list[MediaItem]:
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    for name, key in (("t1.jpg", "t1"), ("hanks.png", "hanks"), ("astronaut.png", "astronaut")):
        ok, buf = cv2.imencode(Path(name).suffix, faces[key])
        assert ok
        (root / "real" / name).write_bytes(buf.tobytes())
    # a short H.264 clip: the Hanks face on a grey canvas, shifted 3 px per frame
    canvas = cv2.copyMakeBorder(faces["hanks"], 48, 48, 48, 48, cv2.BORDER_CONSTANT, value=(90, 90, 90))
    frames = [np.roll(canvas, 3 * i, axis=1) for i in range(CLIP_FRAMES)]
    write_clip(root / "fake" / "clip.mp4", frames=frames)
    (root / "fake" / "broken.jpg").write_bytes(np.random.default_rng(3).bytes(3000))
    noise = np.random.default_rng(4).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    (root / "fake" / "noise.png").write_bytes(cv2.imencode(".png", noise)[1].tobytes())
    return read_dataset(DatasetConfig(format="folder", root=root))


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(load_detector(DetectorConfig()), size=SIZE, margin=MARGIN, max_faces=1, keep="largest")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, face_images: dict[str, np.ndarray]) -> list[MediaItem]:
    return _build_dataset(tmp_path_factory.mktemp("faces"), face_images)


def _cfg(root: Path, **kw: object) -> FaceCacheConfig:
    return FaceCacheConfig(**{"root": root, "size": SIZE, "margin": MARGIN, "frames_per_video": FRAMES, **kw})


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, dataset: list[MediaItem], pipeline: FacePipeline
) -> tuple[Path, CacheReport]:
    root = tmp_path_factory.mktemp("cache") / "c"
    return root, build_face_cache(dataset, _cfg(root), pipeline=pipeline, progress=False)


def _rel(path: Path) -> str:
    return "/".join(Path(path).parts[-2:])


def test_report(built: tuple[Path, CacheReport]) -> None:
    _, report = built
    n_crops = sum(v for v in EXPECTED.values() if isinstance(v, int))
    assert report.crops_written == n_crops
    assert report.done == sum(isinstance(v, int) for v in EXPECTED.values())
    assert report.reused == 0
    skipped = {_rel(s.path): s.reason for s in report.skipped}
    assert set(skipped) == {k for k, v in EXPECTED.items() if isinstance(v, str)}
    assert not any(s.earlier for s in report.skipped)
    assert "broken.jpg" in report.summary() or "skipped" in report.summary()


@pytest.mark.parametrize("rel, expected", list(EXPECTED.items()))
def test_each_item(built: tuple[Path, CacheReport], rel: str, expected: int | str) -> None:
    root, report = built
    records = [r for r in load_face_cache(root) if _rel(r.source_path) == rel]
    if isinstance(expected, str):
        assert records == []
        reasons = {_rel(s.path): s.reason for s in report.skipped}
        assert expected in reasons[rel]
        return
    assert len(records) == expected
    if rel.endswith(".mp4"):
        assert [r.frame for r in records] == sample_indices(CLIP_FRAMES, FRAMES)
    template = template_landmarks(SIZE, MARGIN)
    for rec in records:
        assert rec.crop.is_absolute() and rec.crop.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        crop = read_crop(rec)
        assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8
        # a least-squares similarity fit puts the landmarks' centroid exactly on the template's;
        # each point stays within the residual a head pose leaves
        assert np.abs(rec.landmarks.mean(axis=0) - template.mean(axis=0)).max() < 0.5
        err = np.linalg.norm(rec.landmarks - template, axis=1)
        assert err.max() < 0.1 * SIZE, err
        assert rec.det_score > 0.6 and rec.box.shape == (4,) and rec.box[2] > rec.box[0]
        assert rec.face == 0 and rec.label == (1 if rel.startswith("fake/") else 0)
        assert rec.crop.relative_to(root).parts[:2] == ("crops", rec.dataset)


def test_manifest_and_index_format(built: tuple[Path, CacheReport]) -> None:
    root, _ = built
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["size"] == SIZE and manifest["margin"] == MARGIN and manifest["frames_per_video"] == FRAMES
    assert manifest["detector"]["name"] and manifest["alignment"]["name"] == "arcface5"
    row = json.loads((root / INDEX).read_text().splitlines()[0])
    assert set(row) >= {
        "crop",
        "source_path",
        "frame",
        "face",
        "label",
        "video_id",
        "split",
        "dataset",
        "source",
        "landmarks",
        "det_score",
        "box",
    }
    assert not row["crop"].startswith("/") and np.array(row["landmarks"]).shape == (5, 2)


def test_second_build_is_a_noop(
    built: tuple[Path, CacheReport], dataset: list[MediaItem], pipeline: FacePipeline
) -> None:
    root, first = built
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = build_face_cache(dataset, _cfg(root), pipeline=pipeline, progress=False)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert after == before
    assert (again.done, again.crops_written, again.reused) == (0, 0, len(dataset))
    assert sorted((_rel(s.path), s.reason) for s in again.skipped) == sorted(
        (_rel(s.path), s.reason) for s in first.skipped
    )
    assert all(s.earlier for s in again.skipped)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"size": SIZE * 2}, "size: cache has 128, requested 256"),
        ({"margin": 0.25}, "margin"),
        ({"frames_per_video": 8}, "frames_per_video"),
        ({"detector": DetectorConfig(score_threshold=0.9)}, "score_threshold"),
    ],
)
def test_changed_parameters_raise(
    built: tuple[Path, CacheReport], dataset: list[MediaItem], change: dict, fragment: str
) -> None:
    root, _ = built
    with pytest.raises(ConfigError, match=fragment) as info:
        build_face_cache(dataset, _cfg(root).model_copy(update=change), progress=False)
    assert "rebuild=True" in str(info.value) and "another cache root" in str(info.value)


def test_rebuild_replaces_the_cache(tmp_path: Path, dataset: list[MediaItem], pipeline: FacePipeline) -> None:
    hanks = [it for it in dataset if it.path.name == "hanks.png"]
    root = tmp_path / "c"
    build_face_cache(hanks, _cfg(root), pipeline=pipeline, progress=False)
    big = FacePipeline(pipeline.detector, size=SIZE * 2, margin=MARGIN, max_faces=1, keep="largest")
    report = build_face_cache(hanks, _cfg(root, size=SIZE * 2), pipeline=big, progress=False, rebuild=True)
    assert report.crops_written == 1
    [record] = load_face_cache(root)
    assert read_crop(record).shape == (SIZE * 2, SIZE * 2, 3)
    assert json.loads((root / MANIFEST).read_text())["size"] == SIZE * 2


def test_resume_after_interruption(tmp_path: Path, dataset: list[MediaItem], pipeline: FacePipeline) -> None:
    root = tmp_path / "c"
    images = [it for it in dataset if it.path.name in ("t1.jpg", "hanks.png", "astronaut.png")]
    first = build_face_cache(images[:1], _cfg(root), pipeline=pipeline, progress=False)
    assert first.crops_written == 1
    # simulate a crash in the middle of the next item: its record was appended, it was never marked finished,
    # and the journal ends in a half-written line
    orphan = json.loads((root / INDEX).read_text().splitlines()[0])
    orphan["source_path"] = str(images[1].path.absolute())
    with (root / INDEX).open("a") as fh:
        fh.write(json.dumps(orphan) + "\n")
    with (root / ITEMS).open("a") as fh:
        fh.write('{"path": "/half-writ')
    assert len(load_face_cache(root)) == 1, "records of unfinished items are not loaded"
    report = build_face_cache(images, _cfg(root), pipeline=pipeline, progress=False)
    assert (report.reused, report.done, report.crops_written) == (1, 2, 2)
    records = load_face_cache(root)
    assert sorted(r.source_path.name for r in records) == sorted(it.path.name for it in images)


def test_item_sharing_a_crop_folder_is_skipped(
    tmp_path: Path, dataset: list[MediaItem], pipeline: FacePipeline
) -> None:
    hanks = next(it for it in dataset if it.path.name == "hanks.png")
    astro = next(it for it in dataset if it.path.name == "astronaut.png")
    clash = MediaItem(astro.path, astro.label, hanks.video_id, astro.split, hanks.dataset, astro.source, astro.kind)
    report = build_face_cache([hanks, clash], _cfg(tmp_path / "c"), pipeline=pipeline, progress=False)
    assert report.crops_written == 1
    assert "already holds crops of" in report.skipped[0].reason


@pytest.mark.parametrize("max_faces, keep", [(3, "largest"), (6, "score")])
def test_faces_per_frame(
    tmp_path: Path, dataset: list[MediaItem], pipeline: FacePipeline, max_faces: int, keep: str
) -> None:
    t1 = [it for it in dataset if it.path.name == "t1.jpg"]
    pipe = FacePipeline(pipeline.detector, size=SIZE, margin=MARGIN, max_faces=max_faces, keep=keep)
    cfg = _cfg(tmp_path / "c", max_faces_per_frame=max_faces, keep=keep)
    report = build_face_cache(t1, cfg, pipeline=pipe, progress=False)
    records = load_face_cache(tmp_path / "c")
    assert report.crops_written == len(records) == max_faces
    assert [r.face for r in records] == list(range(max_faces))
    if keep == "largest":
        areas = [(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in records]
        assert areas == sorted(areas, reverse=True)


def test_pipeline_must_match_config(tmp_path: Path, pipeline: FacePipeline) -> None:
    with pytest.raises(ValueError, match="cache config asks for"):
        build_face_cache([], _cfg(tmp_path / "c", size=SIZE * 2), pipeline=pipeline, progress=False)


def test_loading_errors(tmp_path: Path, built: tuple[Path, CacheReport]) -> None:
    with pytest.raises(DatasetLayoutError, match="no manifest.json"):
        load_face_cache(tmp_path)
    root, _ = built
    record = load_face_cache(root)[0]
    gone = type(record)(**{**record.__dict__, "crop": tmp_path / "missing.png"})
    with pytest.raises(MediaError, match="file not found"):
        read_crop(gone)


def test_config_is_strict(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="frame_per_video"):
        FaceCacheConfig.model_validate({"root": str(tmp_path), "frame_per_video": 4})
    assert os.fspath(FaceCacheConfig(root=tmp_path).root) == os.fspath(tmp_path)
