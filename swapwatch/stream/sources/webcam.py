"""Local cameras through Video4Linux2, read by PyAV's bundled FFmpeg (input format `v4l2`).

Why PyAV rather than OpenCV's VideoCapture: one decoding path (and one set of error types) for every
source, frames with pts, and MJPEG cameras decoded by FFmpeg at full rate. The PyAV wheel's FFmpeg
lists the device as `video4linux2,v4l2`, so no system FFmpeg is needed.

A webcam is live: unplugging it is a loss, and the source reconnects (with backoff) once the device
comes back. `video_size`, `framerate` and `input_format` ask the driver for a mode; without them the
driver's default mode is used (often 640x480 YUYV at 30 fps, where MJPEG would allow 1280x720 at 30).
"""

from __future__ import annotations

import glob
import re

from swapwatch.stream.sources.config import SourceConfig, webcam_device
from swapwatch.stream.sources.pyav_source import PyAVSource

V4L2_FORMAT = "v4l2"
"""FFmpeg's input format name for Video4Linux2 devices."""


def list_webcams() -> list[str]:
    """The `/dev/videoN` device nodes present, in numeric order (a capture card may expose several)."""
    return sorted(glob.glob("/dev/video[0-9]*"), key=lambda p: int(re.sub(r"\D", "", p) or 0))


class WebcamSource(PyAVSource):
    """A V4L2 camera (`/dev/videoN`, `v4l2:///dev/videoN`, or an index like `0`)."""

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self.device = webcam_device(self._raw_url)

    def _target(self) -> str:
        return self.device

    def _format(self) -> str | None:
        return V4L2_FORMAT
