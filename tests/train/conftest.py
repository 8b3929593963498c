"""Fixtures for the training-data tests: generated clips, tiny dataset layouts, real-face images.

Every file is built under tmp_path at test time; nothing here reads ../shared/data or downloads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

ClipWriter = Callable[..., Path]


def write_clip(
    path: Path,
    n_frames: int = 6,
    size: int = 64,
    codec: str = "libx264",
    rate: int = 10,
    frames: list[np.ndarray] | None = None,
    noise: bool = False,
    container_options: dict[str, str] | None = None,
    rotation: int = 0,
) -> Path:
    """Encode a short clip with PyAV.

    Default frames are flat grey with level 20 * i (frame i) so decoded content identifies the index;
    `noise=True` fills them with random pixels (bytes spread over the file, for truncation tests);
    `frames` (BGR, all one size) overrides both. `rotation`: display rotation, degrees counter-clockwise.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames is None:
        rng = np.random.default_rng(0)
        frames = []
        for i in range(n_frames):
            if noise:
                frames.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            else:
                frames.append(np.full((size, size, 3), (20 * i) % 256, dtype=np.uint8))
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def clip_writer() -> ClipWriter:
    """The `write_clip` function, for tests that need clips of their own."""
    return write_clip


@pytest.fixture(scope="session")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One tiny valid H.264 mp4, copied into every dataset layout (readers only list files)."""
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", n_frames=4, size=48).read_bytes()


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    ok, buf = cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


def _put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----- FaceForensics++ ---------------------------------------------------------------------------------

FFPP_PAIRS = {"train": [["000", "003"]], "val": [["001", "002"]], "test": [["004", "005"]]}


@pytest.fixture
def ffpp_root(tmp_path: Path, clip_bytes: bytes) -> Path:
    """FF++ with six originals, two methods (Deepfakes, Face2Face) at c23, one c40 original, split JSONs."""
    root = tmp_path / "ffpp"
    for pairs in FFPP_PAIRS.values():
        for a, b in pairs:
            for vid in (a, b):
                _put(root, f"original_sequences/youtube/c23/videos/{vid}.mp4", clip_bytes)
            for method in ("Deepfakes", "Face2Face"):
                for t, s in ((a, b), (b, a)):
                    _put(root, f"manipulated_sequences/{method}/c23/videos/{t}_{s}.mp4", clip_bytes)
    _put(root, "original_sequences/youtube/c40/videos/000.mp4", clip_bytes)
    _put(root, "original_sequences/youtube/c23/videos/notes.txt", b"not media")
    for split, pairs in FFPP_PAIRS.items():
        _put(root, f"splits/{split}.json", json.dumps(pairs).encode())
    return root


# ----- Celeb-DF v2 -------------------------------------------------------------------------------------

CELEBDF_FILES = [
    "Celeb-real/id0_0000.mp4",
    "Celeb-real/id1_0000.mp4",
    "Celeb-real/id2_0000.mp4",
    "Celeb-synthesis/id0_id1_0000.mp4",
    "Celeb-synthesis/id1_id0_0000.mp4",
    "Celeb-synthesis/id2_id0_0000.mp4",
    "YouTube-real/00170.mp4",
    "YouTube-real/00171.mp4",
]
# The official list's convention: 1 = REAL, 0 = FAKE.
CELEBDF_TEST_LIST = "1 YouTube-real/00170.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n1 Celeb-real/id1_0000.mp4\n"


@pytest.fixture
def celebdf_root(tmp_path: Path, clip_bytes: bytes) -> Path:
    root = tmp_path / "celebdf"
    for rel in CELEBDF_FILES:
        _put(root, rel, clip_bytes)
    _put(root, "List_of_testing_videos.txt", CELEBDF_TEST_LIST.encode())
    return root


# ----- DFDC --------------------------------------------------------------------------------------------

DFDC_META = {
    "dfdc_train_part_0": {
        "aaa.mp4": {"label": "REAL", "split": "train", "original": None},
        "bbb.mp4": {"label": "FAKE", "split": "train", "original": "aaa.mp4"},
        "ccc.mp4": {"label": "FAKE", "split": "train", "original": "aaa.mp4"},
        "gone.mp4": {"label": "FAKE", "split": "train", "original": "aaa.mp4"},
    },
    "dfdc_train_part_1": {
        "ddd.mp4": {"label": "REAL", "split": "train", "original": None},
        "eee.mp4": {"label": "FAKE", "split": "train", "original": "ddd.mp4"},
    },
}
DFDC_TEST_CSV = "filename,label\nt1.mp4,1\nt2.mp4,0\n"


@pytest.fixture
def dfdc_root(tmp_path: Path, clip_bytes: bytes) -> Path:
    """Two training parts with metadata.json (gone.mp4 listed but absent) and a labels.csv test folder."""
    root = tmp_path / "dfdc"
    for part, meta in DFDC_META.items():
        _put(root, f"{part}/metadata.json", json.dumps(meta).encode())
        for name in meta:
            if name != "gone.mp4":
                _put(root, f"{part}/{name}", clip_bytes)
    _put(root, "test_videos/labels.csv", DFDC_TEST_CSV.encode())
    for name in ("t1.mp4", "t2.mp4"):
        _put(root, f"test_videos/{name}", clip_bytes)
    return root


# ----- plain folders -----------------------------------------------------------------------------------

FOLDER_FILES = [
    "real/a.jpg",
    "real/B.PNG",
    "real/person1/frames/0001.png",
    "real/person1/frames/0002.png",
    "real/clips/v1.mp4",
    "fake/Deepfakes/x.mp4",
    "fake/Deepfakes/y.MOV",
    "fake/z.webp",
]
FOLDER_IGNORED = ["real/.hidden.jpg", "real/.cache/c.jpg", "fake/readme.txt", "fake/Deepfakes/list.csv"]


@pytest.fixture
def folder_root(tmp_path: Path, clip_bytes: bytes, png_bytes: bytes) -> Path:
    root = tmp_path / "plain"
    for rel in FOLDER_FILES + FOLDER_IGNORED:
        is_clip = rel.lower().endswith((".mp4", ".mov"))
        _put(root, rel, clip_bytes if is_clip else png_bytes)
    return root


@pytest.fixture
def folder_split_root(tmp_path: Path, clip_bytes: bytes, png_bytes: bytes) -> Path:
    root = tmp_path / "plain_split"
    for rel in ["train/real/a.png", "train/fake/b.png", "val/real/c.png", "val/fake/d.mp4", "test/fake/e.png"]:
        _put(root, rel, clip_bytes if rel.endswith(".mp4") else png_bytes)
    return root


# ----- real faces from installed packages ---------------------------------------------------------------


def _insightface_image(name: str) -> np.ndarray:
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / name
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} missing: insightface's sample pictures are needed"
    return img


@pytest.fixture(scope="session")
def face_images() -> dict[str, np.ndarray]:
    """BGR pictures with real faces: t1 (6 faces), Tom Hanks (1), astronaut (1)."""
    from skimage import data

    return {
        "t1": _insightface_image("t1.jpg"),
        "hanks": _insightface_image("Tom_Hanks_54745.png"),
        "astronaut": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR),
    }
