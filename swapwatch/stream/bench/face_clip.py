"""A face clip for tests and benchmarks: a real face (scikit-image's public-domain astronaut) sliding
over a gradient, the frame index as a 10-bit black/white barcode along the top edge (`read_marker`
reads it back after any encoding, streaming and dropping), H.264 with an IDR every second as a camera
sends. Built at run time; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import skimage.data

MARKER_BITS = 10
MARKER_CELL = 16
"""The barcode: MARKER_BITS cells of MARKER_CELL x MARKER_CELL pixels, white = 1, most significant first."""


def face_frames(n_frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """BGR frames: the astronaut's face sliding left and right over a gradient, index barcode on top."""
    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)  # type: ignore[no-untyped-call]
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
