"""Fixtures for the stream tests: generated face clips (PyAV) and a real RTSP server.

Clips show a real face (scikit-image's public-domain astronaut) moving over a gradient, and carry the
frame index as a 10-bit black/white barcode along the top edge, so a test can read back which frame
it got after any encoding, streaming and dropping (`read_marker`). Everything is built under tmp
directories at test time; nothing is downloaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import av
import cv2
import numpy as np
import pytest
import skimage.data

from swapwatch.stream.sources import Frame, Source, SourceError
from tests.stream.rtsp_server import RtspServer, choose_backend, start_rtsp_server

T = TypeVar("T")

MARKER_BITS = 10
MARKER_CELL = 16
"""The barcode: MARKER_BITS cells of MARKER_CELL x MARKER_CELL pixels, white = 1, most significant first."""


def face_frames(n_frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """BGR frames: the astronaut's face sliding left and right over a gradient, index barcode on top."""
    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    face = astronaut[20:260, 140:340]  # head and shoulders of the 512x512 picture
    side = height // 2
    face = cv2.resize(face, (side * face.shape[1] // face.shape[0], side), interpolation=cv2.INTER_AREA)
    fh, fw = face.shape[:2]
    ramp = np.linspace(40, 200, width, dtype=np.float32)
    background = np.empty((height, width, 3), np.uint8)
    background[..., 0] = ramp.astype(np.uint8)
    background[..., 1] = 90
    background[..., 2] = ramp[::-1].astype(np.uint8)
    for i in range(n_frames):
        img = background.copy()
        x = int((width - fw) * (0.5 + 0.4 * np.sin(2 * np.pi * i / max(n_frames, 1))))
        y = (height - fh) // 2 + MARKER_CELL
        img[y : y + fh, x : x + fw] = face
        for bit in range(MARKER_BITS):
            on = (i >> (MARKER_BITS - 1 - bit)) & 1
            x0 = bit * MARKER_CELL
            img[0:MARKER_CELL, x0 : x0 + MARKER_CELL] = 255 if on else 0
        yield img


def read_marker(image: np.ndarray) -> int:
    """The frame index a clip frame carries (robust to compression and scaling to the same size)."""
    value = 0
    for bit in range(MARKER_BITS):
        x0 = bit * MARKER_CELL
        cell = image[4 : MARKER_CELL - 4, x0 + 4 : x0 + MARKER_CELL - 4]
        value = (value << 1) | int(cell.mean() > 127)
    return value


def write_face_clip(
    path: Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    seconds: float = 3.0,
    faststart: bool = False,
) -> Path:
    """Encode a face clip with PyAV: H.264 (no B-frames, an IDR every second, as a camera sends) in MP4 or MKV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = round(fps * seconds)
    options = {"movflags": "+faststart"} if faststart and path.suffix == ".mp4" else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "bframes": "0", "g": str(fps)}
        for img in face_frames(n_frames, width, height):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


ClipFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def make_clip(clip_dir: Path) -> ClipFactory:
    """`make_clip(name, **write_face_clip options)`: a clip under a session tmp dir, built once per name."""

    def make(name: str, **options: Any) -> Path:
        path = clip_dir / name
        if not path.exists():
            write_face_clip(path, **options)
        return path

    return make


@pytest.fixture(scope="session")
def clip_360p(make_clip: ClipFactory) -> Path:
    """640x360, 30 fps, 3 s (90 frames), MP4."""
    return make_clip("face_360p.mp4")


@pytest.fixture(scope="session")
def clip_720p(make_clip: ClipFactory) -> Path:
    """1280x720, 30 fps, 2 s (60 frames), MP4."""
    return make_clip("face_720p.mp4", width=1280, height=720, seconds=2.0)


@pytest.fixture(scope="session")
def reference_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The enrolled-identity reference model (test_pipeline.make_reference_model), built once per run."""
    from tests.stream.test_pipeline import make_reference_model

    return make_reference_model(tmp_path_factory)


@pytest.fixture(scope="session")
def swap_clip(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """8 s at 20 fps, the left face swapped at 2-5 s (the reference model raises it to alert)."""
    from tests.stream.test_pipeline import make_test_clip

    return make_test_clip(tmp_path_factory)


@pytest.fixture
def rtsp_server(tmp_path: Path, clip_360p: Path) -> Iterator[Callable[..., RtspServer]]:
    """`rtsp_server(**options)` starts a real RTSP server (see rtsp_server.py) for the 360p clip.

    Options: loop (default True), freeze_after, path, clip. Every server started is stopped at teardown.
    Skips with the reason (and the apt line) when neither GStreamer nor the listen-mode fallback works.
    """
    backend, why = choose_backend()
    if backend is None:
        pytest.skip(why)
    servers: list[RtspServer] = []

    def start(**options: Any) -> RtspServer:
        clip = options.pop("clip", clip_360p)
        server = start_rtsp_server(clip, tmp_path / f"rtsp{len(servers)}", backend=backend, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a test scenario on a fresh event loop, failing (not hanging) after a generous `timeout`."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def collect(source: Source, delay_s: float = 0.0) -> tuple[list[Frame], SourceError | None]:
    """All frames a source yields (sleeping `delay_s` after each, a slow consumer) and the error it ended with."""
    frames: list[Frame] = []
    try:
        async for frame in source.frames():
            frames.append(frame)
            if delay_s:
                await asyncio.sleep(delay_s)
    except SourceError as err:
        return frames, err
    finally:
        await source.aclose()
    return frames, None


def states(source: Source) -> list[str]:
    """The states a source went through, in order."""
    return [change.new for change in source.history]
