"""Fixtures for the stream tests: generated face clips (PyAV) and a real RTSP server.

Clips show a real face (scikit-image's public-domain astronaut) moving over a gradient, and carry the
frame index as a 10-bit black/white barcode along the top edge, so a test can read back which frame
it got after any encoding, streaming and dropping (`read_marker`); the clip writer lives in
swapwatch/stream/bench/face_clip.py, which the benchmarks share. Everything is built under tmp
directories at test time; nothing is downloaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from swapwatch.stream.bench.face_clip import face_frames, read_marker, write_face_clip
from swapwatch.stream.sources import Frame, Source, SourceError
from tests.stream.rtsp_server import RtspServer, choose_backend, start_rtsp_server

T = TypeVar("T")

__all__ = ["face_frames", "read_marker", "write_face_clip"]  # the clip helpers live in the package

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
