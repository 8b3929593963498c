"""`swapwatch scan` on real face images and a generated video, plus the files it must report and skip."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from swapwatch.samples import sample_face_images
from swapwatch.stream.cli import main
from swapwatch.stream.faces.pipeline import read_image
from swapwatch.stream.scan_command import EXIT_PARTIAL


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
    assert all(0.0 <= f["score"] <= 1.0 for f in group["detail"])
    assert rows["blank.png"]["score"] is None and rows["blank.png"]["reason"] == "no face found"
    assert rows["corrupt.jpg"]["score"] is None and "not a readable image" in rows["corrupt.jpg"]["error"]
    video = rows["astronaut.mp4"]
    assert video["kind"] == "video" and video["frames"] == 6 and video["frames_with_faces"] == 6
    assert video["score"] == pytest.approx(np.mean([f["score"] for f in video["detail"]]), abs=1e-5)


def test_scan_crops_mode_scores_each_image_once(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    tom = sample_face_images()["tom_hanks"]  # an aligned 112x112 face crop
    assert main(["scan", str(tom), "--crops", "--model", str(smoke_onnx["masm"]), "--out", str(out)]) == 0
    (row,) = read_lines(out).values()
    assert row["kind"] == "crop" and row["faces"] == 1 and 0.0 <= row["score"] <= 1.0


def test_scan_with_nothing_to_scan_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path)]) == 2
    assert "no images or videos" in capsys.readouterr().err
