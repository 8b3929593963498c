"""`swapwatch scan` on real face images and a generated video, plus the files it must report and skip."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from swapwatch.cli.main import main
from swapwatch.cli.scan_command import EXIT_PARTIAL
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.media.image import read_image
from swapwatch.media.video import read_frames
from swapwatch.samples import sample_face_images
from swapwatch.stream.faces import DetectorConfig, load_detector
from swapwatch.stream.faces.chain import face_input, to_input

SCORE_TOL = 2e-5
"""The scan batches crops and writes 5 decimals; the direct scores below are one crop per inference."""


def write_face_clip(path: Path, image: np.ndarray, n: int = 6) -> Path:
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            frame = np.roll(image[:h, :w], 2 * i, axis=1)  # the face drifts a little per frame
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture()
def media(tmp_path: Path) -> dict[str, Path]:
    images = sample_face_images()
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder / "blank.png").write_bytes(Path(images["astronaut"]).read_bytes())  # replaced below
    import cv2

    cv2.imwrite(str(folder / "blank.png"), np.full((200, 300, 3), 90, np.uint8))
    write_face_clip(folder / "astronaut.mp4", cv2.resize(read_image(images["astronaut"]), (256, 256)))
    return {"group": Path(images["group_t1"]), "folder": folder}


def read_lines(path: Path) -> dict[str, dict]:
    return {Path(row["path"]).name: row for row in map(json.loads, path.read_text().splitlines())}


def direct_scores(model: Path, image: np.ndarray) -> dict[tuple[float, ...], float]:
    """Box (rounded as the scan writes it) -> score, by the detector, the alignment chain and the engine
    called one face at a time, without the scanner: what each face of `image` must score."""
    engine = OnnxEngine(model)
    meta = engine.meta
    out = {}
    for face in load_detector(DetectorConfig()).detect(image):
        crop = face_input(image, face.landmarks, engine.input_size, meta.alignment.margin, meta.alignment.size).crop
        out[tuple(round(float(v), 1) for v in face.box)] = float(engine.score_crops(crop[None])[0])
    engine.close()
    return out


def assert_scores_match(faces: list[dict], expected: dict[tuple[float, ...], float]) -> None:
    got = {tuple(f["box"]): f["score"] for f in faces}
    assert sorted(got) == sorted(expected)
    for box, score in expected.items():
        assert got[box] == pytest.approx(score, abs=SCORE_TOL), box


def test_scan_images_videos_and_bad_files(smoke_onnx: dict[str, Path], media: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.jsonl"
    args = ["scan", str(media["group"]), str(media["folder"]), "--model", str(smoke_onnx["masm"]), "--out", str(out)]
    assert main(args) == EXIT_PARTIAL  # corrupt.jpg could not be read; the others were scored
    err = capsys.readouterr().err
    assert err.count("cannot read") == 1 and "corrupt.jpg" in err
    rows = read_lines(out)
    assert set(rows) == {"t1.jpg", "corrupt.jpg", "blank.png", "astronaut.mp4"}
    group = rows["t1.jpg"]
    assert group["faces"] == 6 and len(group["detail"]) == 6
    assert group["score"] == pytest.approx(max(f["score"] for f in group["detail"]))
    # each face's score is the model's score of that face (not a constant, not another face's score)
    assert_scores_match(group["detail"], direct_scores(smoke_onnx["masm"], read_image(media["group"])))
    assert rows["blank.png"]["score"] is None and rows["blank.png"]["reason"] == "no face found"
    assert rows["corrupt.jpg"]["score"] is None and "not a readable image" in rows["corrupt.jpg"]["error"]
    video = rows["astronaut.mp4"]
    assert video["kind"] == "video" and video["frames"] == 6 and video["frames_with_faces"] == 6
    assert video["score"] == pytest.approx(np.mean([f["score"] for f in video["detail"]]), abs=1e-5)
    # frames where the detector ran (the others are tracked) score what the model gives their faces
    frames = dict(read_frames(media["folder"] / "astronaut.mp4", range(6)))
    detected = [d for d in video["detail"] if any(f["detected"] for f in d["faces"])]
    assert detected and detected[0]["frame"] == 0
    for d in detected:
        assert_scores_match(d["faces"], direct_scores(smoke_onnx["masm"], frames[d["frame"]]))


def test_scan_crops_mode_scores_each_image_once(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    tom = sample_face_images()["tom_hanks"]  # an aligned 112x112 face crop
    assert main(["scan", str(tom), "--crops", "--model", str(smoke_onnx["masm"]), "--out", str(out)]) == 0
    (row,) = read_lines(out).values()
    assert row["kind"] == "crop" and row["faces"] == 1
    # the crop goes to the model as it is (shrunk to the input size): no detection, no alignment
    engine = OnnxEngine(smoke_onnx["masm"])
    expected = float(engine.score_crops(to_input(read_image(tom), engine.input_size)[None])[0])
    assert row["score"] == pytest.approx(expected, abs=SCORE_TOL)


def test_scan_with_nothing_to_scan_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path)]) == 2
    assert "no images or videos" in capsys.readouterr().err
