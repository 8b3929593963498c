"""Video sources for the live monitor: files, RTSP/RTSPS, HTTP(S)/HLS and webcams, with reconnection.

Typical use::

    from swapwatch.stream.sources import SourceConfig, open_source

    source = open_source(SourceConfig(url="rtsp://user:pw@cam.local/live", name="lobby"))
    source.add_listener(lambda change: events.write(change.to_event()))
    try:
        async for frame in source.frames():      # Frame(stream, index, image BGR, pts, received, wall)
            ...
    finally:
        await source.aclose()

See docs/sources.md for the kinds, the frame policies, the states and the reconnect behaviour.
"""

from __future__ import annotations

from typing import Any

from swapwatch.config import parse_config
from swapwatch.stream.sources.base import (
    TERMINAL_STATES,
    Source,
    SourceAuthError,
    SourceCorruptError,
    SourceEndedError,
    SourceError,
    SourceNotFoundError,
    SourceStalledError,
    SourceState,
    SourceStats,
    SourceTimeoutError,
    SourceTruncatedError,
    SourceUnreachableError,
    StateChange,
    StateListener,
)
from swapwatch.stream.sources.config import (
    ReconnectConfig,
    SourceConfig,
    default_name,
    detect_kind,
    mask_url,
    redact,
)
from swapwatch.stream.sources.frames import Frame, FramePolicy, FrameQueue
from swapwatch.stream.sources.kinds import SourceKind
from swapwatch.stream.sources.pyav_source import (
    PyAVSource,
    build_options,
    classify_error,
    isobmff_truncation,
)
from swapwatch.stream.sources.reconnect import Backoff
from swapwatch.stream.sources.webcam import WebcamSource, list_webcams


def open_source(config: SourceConfig | str, **overrides: Any) -> Source:
    """A source for a config, or for a URL/path plus field overrides (validated; ConfigError names a bad field).

    Nothing is opened yet: reading starts with `source.start()` or the first `source.frames()`.
    """
    if isinstance(config, str):
        config = parse_config(SourceConfig, {"url": config, **overrides}, source=mask_url(config))
    elif overrides:
        config = parse_config(
            SourceConfig, {**config.model_dump(exclude_unset=True), **overrides}, source=config.masked_url
        )
    if config.resolved_kind == "webcam":
        return WebcamSource(config)
    return PyAVSource(config)


__all__ = [
    "TERMINAL_STATES",
    "Backoff",
    "Frame",
    "FramePolicy",
    "FrameQueue",
    "PyAVSource",
    "ReconnectConfig",
    "Source",
    "SourceAuthError",
    "SourceConfig",
    "SourceCorruptError",
    "SourceEndedError",
    "SourceError",
    "SourceKind",
    "SourceNotFoundError",
    "SourceStalledError",
    "SourceState",
    "SourceStats",
    "SourceTimeoutError",
    "SourceTruncatedError",
    "SourceUnreachableError",
    "StateChange",
    "StateListener",
    "WebcamSource",
    "build_options",
    "classify_error",
    "default_name",
    "detect_kind",
    "isobmff_truncation",
    "list_webcams",
    "mask_url",
    "open_source",
    "redact",
]
