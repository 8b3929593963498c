"""Frame sampling and decoding: indices, frame counts across containers, and damaged files."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from swapwatch.errors import MediaError
from swapwatch.media.files import is_image, is_video
from swapwatch.media.image import read_image
from swapwatch.media.video import count_frames, open_video, read_frames, sample_indices, sample_video
from tests.train.conftest import ClipWriter


@pytest.mark.parametrize(
    "n_frames, n, expected",
    [
        (10, 5, [1, 3, 5, 7, 9]),
        (7, 3, [1, 3, 5]),
        (100, 1, [50]),
        (300, 4, [37, 112, 187, 262]),
        (10, 10, list(range(10))),
        (3, 16, [0, 1, 2]),
        (0, 4, []),
        (1, 1, [0]),
    ],
)
def test_sample_indices(n_frames: int, n: int, expected: list[int]) -> None:
    got = sample_indices(n_frames, n)
    assert got == expected
    assert got == sorted(set(got)) and all(0 <= i < n_frames for i in got)


def test_sample_indices_rejects_zero() -> None:
    with pytest.raises(ValueError):
        sample_indices(10, 0)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.mp4", True),
        ("a.MKV", True),
        ("x/y.webm", True),
        ("a.avi", True),
        ("a.mov", True),
        ("a.png", False),
        ("a.mp4.txt", False),
    ],
)
def test_is_video(name: str, expected: bool) -> None:
    assert is_video(name) is expected
    assert is_image(name) is (not expected and not name.endswith(".txt"))


@pytest.mark.parametrize(
    "name, codec, header_has_count",
    [
        ("clip.mp4", "libx264", True),
        ("clip.mkv", "libx264", False),  # Matroska has no frame count: counted by demuxing
        ("clip.webm", "libvpx", False),
        ("clip.avi", "mpeg4", True),
    ],
)
def test_count_frames(tmp_path: Path, clip_writer: ClipWriter, name: str, codec: str, header_has_count: bool) -> None:
    path = clip_writer(tmp_path / name, n_frames=9, size=48, codec=codec)
    with av.open(str(path)) as container:
        assert (container.streams.video[0].frames > 0) is header_has_count
    assert count_frames(path) == 9


@pytest.mark.parametrize(
    "name, codec, indices",
    [
        ("clip.mp4", "libx264", [0, 3, 5]),
        ("clip.mkv", "libx264", [5, 1, 1, 7]),
        ("clip.webm", "libvpx", [2]),
        ("clip.avi", "mpeg4", range(8)),
    ],
)
def test_read_frames_yields_the_wanted_frames(
    tmp_path: Path, clip_writer: ClipWriter, name: str, codec: str, indices: list[int]
) -> None:
    path = clip_writer(tmp_path / name, n_frames=8, size=64, codec=codec)
    got = list(read_frames(path, indices))
    assert [i for i, _ in got] == sorted(set(indices))
    for index, frame in got:
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        # frame i was encoded flat grey at level 20 * i
        assert abs(float(frame.mean()) - 20 * index) < 4, (index, frame.mean())


@pytest.mark.parametrize(
    "rotation, shape, band",
    [
        # the encoded 32x64 frame has a white band over its left 16 columns
        (0, (32, 64), "left"),
        (90, (64, 32), "bottom"),  # turned a quarter counter-clockwise for display
        (-90, (64, 32), "top"),
        (180, (32, 64), "right"),
    ],
)
def test_display_rotation_is_applied(
    tmp_path: Path, clip_writer: ClipWriter, rotation: int, shape: tuple[int, int], band: str
) -> None:
    img = np.zeros((32, 64, 3), np.uint8)
    img[:, :16] = 255
    path = clip_writer(tmp_path / "rot.mp4", frames=[img, img], rotation=rotation)
    [(_, frame)] = list(read_frames(path, [1]))
    assert frame.shape[:2] == shape
    white = frame[..., 1] > 128
    h, w = shape
    region = {
        "left": white[:, : w // 4],
        "right": white[:, -w // 4 :],
        "top": white[: h // 4],
        "bottom": white[-h // 4 :],
    }
    assert region[band].mean() > 0.9 and white.mean() < 0.3


def test_sample_video(tmp_path: Path, clip_writer: ClipWriter) -> None:
    path = clip_writer(tmp_path / "clip.mkv", n_frames=10, size=48)
    assert [i for i, _ in sample_video(path, 5)] == [1, 3, 5, 7, 9]


def test_indices_past_the_end_log_a_shortfall(
    tmp_path: Path, clip_writer: ClipWriter, caplog: pytest.LogCaptureFixture
) -> None:
    path = clip_writer(tmp_path / "clip.mp4", n_frames=4, size=48)
    with caplog.at_level(logging.WARNING):
        got = [i for i, _ in read_frames(path, [2, 10])]
    assert got == [2]
    assert "only 4 frames decoded" in caplog.text


@pytest.mark.parametrize(
    "content, fragment",
    [
        (np.random.default_rng(1).bytes(4096), "not a readable video: Invalid data"),
        (b"", "the file is empty"),
        (None, "file not found"),
    ],
)
def test_unreadable_video(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    for call in (lambda: count_frames(path), lambda: list(read_frames(path, [0]))):
        with pytest.raises(MediaError, match=fragment) as info:
            call()
        assert info.value.path == str(path)


@pytest.mark.parametrize(
    "name, options, decodes_some",
    [
        # mp4 with its index (moov) at the end: half the file has no index, nothing can be read
        ("moov_last.mp4", None, False),
        # index first (faststart) or Matroska: the first frames still decode
        ("faststart.mp4", {"movflags": "faststart"}, True),
        ("clip.mkv", None, True),
    ],
)
def test_truncated_video(
    tmp_path: Path,
    clip_writer: ClipWriter,
    caplog: pytest.LogCaptureFixture,
    name: str,
    options: dict | None,
    decodes_some: bool,
) -> None:
    path = clip_writer(tmp_path / name, n_frames=30, size=96, noise=True, container_options=options)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if not decodes_some:
        with pytest.raises(MediaError, match="Invalid data"):
            list(read_frames(path, range(30)))
        return
    with caplog.at_level(logging.WARNING):
        got = [i for i, _ in read_frames(path, range(30))]
    assert 0 < len(got) < 30
    assert got == list(range(len(got)))
    assert f"only {len(got)} frames decoded" in caplog.text and name in caplog.text


@pytest.mark.parametrize(
    "ext, img",
    [
        (".png", np.arange(40 * 30 * 3, dtype=np.uint32).reshape(40, 30, 3).astype(np.uint8)),
        (".png", np.full((20, 10), 77, np.uint8)),  # greyscale -> 3 channels
        (".png", np.full((20, 10, 4), 200, np.uint8)),  # alpha dropped
        (".png", np.full((12, 12, 3), 65535, np.uint16)),  # 16-bit scaled to 8
        (".bmp", np.full((8, 9, 3), 5, np.uint8)),
        (".jpg", np.full((16, 16, 3), 128, np.uint8)),
    ],
)
def test_read_image(tmp_path: Path, ext: str, img: np.ndarray) -> None:
    path = tmp_path / f"img{ext}"
    ok, buf = cv2.imencode(ext, img)
    assert ok
    path.write_bytes(buf.tobytes())
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (img.shape[0], img.shape[1], 3)
    if ext in (".png", ".bmp") and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        assert np.array_equal(out, img)
    if img.dtype == np.uint16:
        assert out.min() == 255


@pytest.mark.parametrize(
    "content, fragment",
    [
        (np.random.default_rng(2).bytes(2048), "not a readable image"),
        (b"", "the file is empty"),
        (None, "file not found"),
    ],
)
def test_unreadable_image(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=fragment):
        read_image(path)


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_read_image_scales_16_bit_with_rounding(tmp_path: Path, ext: str) -> None:
    # OpenCV's own 8-bit decode keeps a 16-bit PNG's high byte (257 -> 1 but 255 -> 0, 65280 -> 255)
    img = np.array([[[0, 255, 257], [32896, 65280, 65535]]], np.uint16)
    path = tmp_path / f"deep{ext}"
    ok, buf = cv2.imencode(ext, img)
    assert ok
    path.write_bytes(buf.tobytes())
    assert read_image(path).tolist() == [[[0, 1, 1], [128, 254, 255]]]


def test_a_folder_is_not_a_media_file(tmp_path: Path) -> None:
    for read in (read_image, open_video):
        with pytest.raises(MediaError) as info:
            read(tmp_path)
        assert info.value.path == str(tmp_path) and info.value.reason == "not a file"
