"""How a source fails: `SourceError` and one subclass per kind of failure, each a `MediaError`.

`path` (and `url`) is the masked URL or the file, never a password: sources build these from
`SourceConfig.masked_url`.
"""

from __future__ import annotations

from swapwatch.errors import MediaError


class SourceError(MediaError):
    """A source could not be opened or read. `path` is the masked URL (or the file), never a password."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url


class SourceUnreachableError(SourceError):
    """Nothing answers at the URL's host and port (connection refused, host or network unreachable)."""


class SourceNotFoundError(SourceError):
    """The server answers but has no stream at that path (HTTP/RTSP 404), or the file or device is missing."""


class SourceAuthError(SourceError):
    """The server refused the credentials (401/403)."""


class SourceTimeoutError(SourceError):
    """The server accepted the connection but did not answer or send data in time."""


class SourceStalledError(SourceError):
    """The connection stayed open but no frame was decoded for `stall_timeout_s` (the watchdog fired)."""


class SourceEndedError(SourceError):
    """A live stream ended: the server closed it or stopped sending (FFmpeg reports this as a quiet EOF)."""


class SourceCorruptError(SourceError):
    """A file is not a readable video: wrong or damaged container, or no frame decodes."""


class SourceTruncatedError(SourceError):
    """A file ends before its container says it should (an interrupted copy or recording)."""
