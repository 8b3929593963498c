"""`SourceKind`: how a source is read. Its own module so that ffmpeg_options.py can key its tables on it
without importing the config that validates those options."""

from __future__ import annotations

from typing import Literal

SourceKind = Literal["file", "rtsp", "http", "webcam", "webrtc"]
"""How a source is read: a local file, RTSP/RTSPS, HTTP(S) (progressive files, HLS, MJPEG), a V4L2 device, or
a WebRTC track a peer published to the server (`webrtc`: created by the WHIP endpoint, never from a config)."""
