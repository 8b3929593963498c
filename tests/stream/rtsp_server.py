"""The RTSP server the source tests use lives in the package (swapwatch.stream.bench.rtsp_replay), where
`swapwatch bench` replays clips with it too; this module keeps the tests' imports working."""

from swapwatch.stream.bench.rtsp_replay import (
    RawClip,
    RtspServer,
    choose_backend,
    decode_to_raw,
    free_port,
    gstreamer_problem,
    install_hint,
    listen_problem,
    start_rtsp_server,
)

__all__ = [
    "RawClip",
    "RtspServer",
    "choose_backend",
    "decode_to_raw",
    "free_port",
    "gstreamer_problem",
    "install_hint",
    "listen_problem",
    "start_rtsp_server",
]
