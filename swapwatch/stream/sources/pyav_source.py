"""Files, RTSP/RTSPS and HTTP(S)/HLS read through PyAV (FFmpeg).

What FACTS.md ("Video") taught, and how it is used here:
- RTSP opens with `rtsp_transport=tcp`, `timeout` (socket I/O, in µs), `flags=low_delay`,
  `probesize=32768`, `analyzeduration=0`, and `av.open(..., timeout=(open, read))`: the first frame
  comes in 0.2-0.3 s (its pts is None) and steady latency is about one frame interval. Without
  timeouts a dead server hangs the reader forever, so network sources always get both.
- The decoder keeps FFmpeg's default SLICE threading: FRAME/AUTO threading holds frames back
  (live latency went from 42 ms to 109 ms). `decode_threading` can change it for recorded benchmarks.
- When the server dies, decoding just stops with no exception: this module reports a plain EOF and
  the supervisor (reconnect.py) decides that on a live URL it is a loss.
- Every source opens with FFmpeg's `protocol_whitelist` pinned to its kind's protocols
  (ffmpeg_options.py), and files are handed over as `file:PATH`, so neither a path that looks like a
  protocol (`concat:...`) nor a playlist or redirect can make FFmpeg open anything else.
- No server: ConnectionRefusedError; unknown path: HTTPNotFoundError. These, and every other FFmpeg
  error, become a specific `SourceError` naming the masked URL (FFmpeg's own messages quote the URL
  they were given, credentials included, so only their `strerror` is kept).

Files follow the decoding conventions of swapwatch/media/video.py (frames are upright BGR with the
display rotation applied; what decodes is delivered before a failure is reported) and add the checks
a monitor needs: a truncated file (it ends before its container says it should) is told apart from a
corrupt one (nothing readable at all).
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path
from typing import Any

import av
import av.error

from swapwatch.media.video import ffmpeg_reason, to_bgr
from swapwatch.stream.sources.base import (
    Source,
    SourceAuthError,
    SourceCorruptError,
    SourceEndedError,
    SourceError,
    SourceNotFoundError,
    SourceTimeoutError,
    SourceTruncatedError,
    SourceUnreachableError,
)
from swapwatch.stream.sources.config import SourceConfig, file_path, redact
from swapwatch.stream.sources.ffmpeg_options import KIND_PROTOCOLS
from swapwatch.stream.sources.kinds import SourceKind
from swapwatch.stream.sources.reconnect import Session

log = logging.getLogger(__name__)

LATE_REBASE_S = 0.1
"""A paced file running later than this (slow consumer under `all`) restarts its clock instead of bursting."""

RTSP_LOW_LATENCY: dict[str, str] = {"flags": "low_delay", "probesize": "32768", "analyzeduration": "0"}
"""FFmpeg options measured to give a first RTSP frame in 0.2-0.3 s and no held-back frames (FACTS.md)."""


def build_options(config: SourceConfig) -> dict[str, str]:
    """The FFmpeg options a source opens with: swapwatch's per-kind defaults, then `config.ffmpeg_options`,
    then the kind's `protocol_whitelist` (which no config may set)."""
    kind = config.resolved_kind
    options: dict[str, str] = {}
    timeout_us = str(int(config.open_timeout_s * 1_000_000))
    if kind == "rtsp":
        options["rtsp_transport"] = config.rtsp_transport
        options["timeout"] = timeout_us
        if config.low_latency:
            options.update(RTSP_LOW_LATENCY)
    elif kind == "http":
        # The http protocol's socket timeout (µs). FFmpeg's own http reconnect options stay off: the
        # supervisor reconnects, with backoff and visible state, for every kind alike.
        options["timeout"] = timeout_us
    elif kind == "webcam":
        if config.video_size:
            options["video_size"] = config.video_size
        if config.framerate:
            options["framerate"] = f"{config.framerate:g}"
        if config.input_format:
            options["input_format"] = config.input_format
    options.update(config.ffmpeg_options)
    if kind == "rtsp" and "listen" in options.get("rtsp_flags", "") and "listen_timeout" not in options:
        # Listen mode (the publisher connects to us): FFmpeg 8.1's default listen_timeout of -1 fails at
        # once with "Numerical result out of range" (OverflowError), so wait as long as an open may take.
        options["listen_timeout"] = str(max(1, round(config.open_timeout_s)))
    if kind in KIND_PROTOCOLS:
        options["protocol_whitelist"] = KIND_PROTOCOLS[kind]
    return options


def classify_error(err: BaseException, url: str, kind: SourceKind, raw_url: str | None = None) -> SourceError:
    """The specific SourceError for an exception from opening or reading `url` (the masked URL).

    `raw_url` lets the reason be scrubbed of the real URL and its secrets, in case a message quotes it.
    """
    if isinstance(err, SourceError):
        return err
    reason = ffmpeg_reason(err)
    if raw_url:
        reason = redact(reason, raw_url)
    what = {"file": "file", "webcam": "device"}.get(kind)
    if isinstance(err, ConnectionRefusedError):
        return SourceUnreachableError(url, "connection refused: nothing is listening at that host and port")
    if isinstance(err, av.error.HTTPNotFoundError):
        return SourceNotFoundError(url, "not found (404): the server has no stream at this path")
    if isinstance(err, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
        return SourceAuthError(url, f"access refused ({reason}): check the credentials in the URL")
    if isinstance(err, (TimeoutError, av.error.ExitError)):
        return SourceTimeoutError(url, f"timed out waiting for the server ({reason})")
    if isinstance(err, FileNotFoundError):
        return SourceNotFoundError(url, f"no such {what}" if what else f"not found ({reason})")
    if isinstance(err, PermissionError):
        return SourceAuthError(url, f"permission denied ({reason})")
    if isinstance(err, OSError) and err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return SourceUnreachableError(url, f"unreachable ({reason})")
    if isinstance(err, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return SourceEndedError(url, f"connection lost ({reason})")
    if isinstance(err, OSError) and err.errno == errno.EBUSY:
        return SourceError(url, f"{what or 'source'} busy: another program is using it")
    if isinstance(err, av.error.HTTPError):
        return SourceError(url, f"HTTP error: {reason}")
    if (
        kind == "http"
        and isinstance(err, OSError)
        and err.errno == errno.EIO
        and Path(url.split("?", 1)[0]).suffix.lower() in (".mp4", ".mov", ".m4v")
    ):
        # Seen with a server without range requests: an MP4 whose index (moov) is at the end cannot be read.
        return SourceError(
            url,
            f"{reason}: an MP4 with its index at the end needs a server that supports range requests "
            "(or re-mux it with '-movflags +faststart')",
        )
    return SourceError(url, reason)


_ISO_TOP_LEVEL_FIRST = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin"}


def isobmff_truncation(path: str | Path) -> str | None:
    """Why an MP4/MOV (ISO-BMFF) file is truncated, or None when it is complete or not ISO-BMFF at all.

    Walks the top-level boxes (a size and a type each): a box that claims more bytes than the file has
    left means the file was cut. A file with no `moov` box, the index most recorders write last, is one
    whose recording was never finalised. Reading the box headers is cheap (a few small reads), and it
    names truncation where FFmpeg only says 'Invalid data found when processing input'.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[4:8] not in _ISO_TOP_LEVEL_FIRST:
                return None
            offset = 0
            seen: set[bytes] = set()
            while offset + 8 <= size:
                f.seek(offset)
                header = f.read(16)
                box_size = int.from_bytes(header[0:4], "big")
                box_type = header[4:8]
                if not all(0x20 <= b < 0x7F for b in box_type):
                    return None  # not a box header: damaged, not cut; leave it to the corrupt-file path
                if box_size == 1:
                    if len(header) < 16:
                        return f"the file ends inside the header of its {box_type.decode()!r} box"
                    box_size = int.from_bytes(header[8:16], "big")
                elif box_size == 0:
                    box_size = size - offset
                if box_size < 8:
                    return None
                seen.add(box_type)
                if offset + box_size > size:
                    return (
                        f"the file ends inside its {box_type.decode()!r} box "
                        f"({size - offset} of {box_size} bytes present)"
                    )
                offset += box_size
    except OSError:
        return None
    if b"moov" not in seen:
        return (
            "it has no 'moov' box (the index recorders write last): "
            "the recording was cut off before it was finalised"
        )
    return None


class Pacer:
    """Holds a recorded file's frames back until they are due, so a file plays like a live feed.

    Due times come from the frames' pts (seconds) or, without pts, from the index and the nominal
    frame rate. Waits in slices of at most 0.25 s, touching the session so the stall watchdog knows
    the session is healthy, and returns False if the session is stopped meanwhile. When the consumer
    made the reader late by more than LATE_REBASE_S (the `all` policy waits for it), the clock is
    restarted from the current frame instead of bursting through the backlog.
    """

    def __init__(self, session: Session, interval_s: float | None) -> None:
        self.session = session
        self.interval_s = interval_s
        self._origin: float | None = None

    def wait(self, pts: float | None, index: int) -> bool:
        """Sleep until frame `index` (with `pts`) is due; False when the session was stopped."""
        t = pts if pts is not None else (index * self.interval_s if self.interval_s else None)
        if t is None:
            return not self.session.stopped
        now = time.monotonic()
        if self._origin is None:
            self._origin = now - t
        due = self._origin + t
        if now - due > LATE_REBASE_S:
            self._origin = now - t
            return not self.session.stopped
        while True:
            delay = due - time.monotonic()
            if delay <= 0:
                return not self.session.stopped
            if self.session.stop_event.wait(min(delay, 0.25)):
                return False
            self.session.touch()


class PyAVSource(Source):
    """A file, RTSP/RTSPS or HTTP(S)/HLS source decoded with PyAV in a session thread."""

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._raw_url = config.url.strip()
        self._path: Path | None = file_path(self._raw_url) if self.kind == "file" else None

    # -- hooks for subclasses (the webcam overrides them) ----------------------------------------------

    def _target(self) -> str:
        """What av.open is given: `file:` and the file path, or the real (unmasked) URL."""
        return f"file:{self._path}" if self._path is not None else self._raw_url

    def _format(self) -> str | None:
        """An explicit FFmpeg input format, or None to let FFmpeg probe."""
        return None

    def _open(self) -> Any:
        kwargs: dict[str, Any] = {"mode": "r", "options": build_options(self.config)}
        fmt = self._format()
        if fmt:
            kwargs["format"] = fmt
        if self.kind != "file":
            kwargs["timeout"] = (self.config.open_timeout_s, self.config.read_timeout_s)
        return av.open(self._target(), **kwargs)

    # -- the session ------------------------------------------------------------------------------------

    def _run_session(self, session: Session) -> None:
        try:
            self._read(session)
        except SourceError:
            raise
        except Exception as err:  # noqa: BLE001 - every failure must become a SourceError with the URL masked
            raise self._classify(err) from None

    def _classify(self, err: BaseException) -> SourceError:
        return classify_error(err, self.url, self.kind, self._raw_url)

    def _check_file(self) -> None:
        path = self._path
        assert path is not None
        if not path.exists():
            raise SourceNotFoundError(self.url, "file not found")
        if path.is_dir():
            raise SourceError(self.url, "is a directory, not a video file")
        if path.stat().st_size == 0:
            raise SourceCorruptError(self.url, "the file is empty")

    def _open_checked(self) -> Any:
        if self._path is not None:
            self._check_file()
        started = time.monotonic()
        try:
            return self._open()
        except av.error.InvalidDataError as err:
            if self._path is not None:
                cut = isobmff_truncation(self._path)
                if cut:
                    raise SourceTruncatedError(self.url, f"truncated: {cut}") from None
                raise SourceCorruptError(self.url, f"not a readable video ({ffmpeg_reason(err)})") from None
            waited = time.monotonic() - started
            if waited >= self.config.open_timeout_s:
                # FFmpeg's RTSP handshake reports a reply that never came as invalid data, not as a timeout.
                raise SourceTimeoutError(
                    self.url,
                    f"no answer in {waited:.1f} s (open_timeout_s {self.config.open_timeout_s:g}): the server "
                    "accepted the connection but did not answer",
                ) from None
            raise self._classify(err) from None

    def _read(self, session: Session) -> None:
        container = self._open_checked()
        try:
            if session.stopped:
                return
            if not container.streams.video:
                raise SourceCorruptError(self.url, "no video stream in it")
            stream = container.streams.video[0]
            stream.thread_type = self.config.decode_threading.upper()
            rate = stream.average_rate or stream.guessed_rate
            interval = 1.0 / float(rate) if rate else None
            pacer = Pacer(session, interval) if (not self.live and self.config.realtime) else None
            decoded = 0
            first_t: float | None = None
            last_t: float | None = None
            try:
                for packet in container.demux(stream):
                    if session.stopped:
                        return
                    started = time.perf_counter()
                    try:
                        frames = packet.decode()
                    except av.error.InvalidDataError:
                        # A damaged packet: skip it, as players do. Files are judged at the end by what decoded;
                        # a live stream that never recovers trips the stall watchdog.
                        self._count_decode_error()
                        continue
                    # decode_ms: this frame's share of the packet's decode plus its BGR conversion (no
                    # demuxing or network wait); one packet holds one frame in the streams we read.
                    share_ms = (time.perf_counter() - started) * 1e3 / max(1, len(frames))
                    for frame in frames:
                        t = frame.time
                        if t is not None:
                            first_t = t if first_t is None else first_t
                            last_t = t
                        converting = time.perf_counter()
                        image = to_bgr(frame)
                        decode_ms = share_ms + (time.perf_counter() - converting) * 1e3
                        if pacer is not None and not pacer.wait(t, decoded):
                            return
                        decoded += 1
                        if not self._emit(session, image, t, decode_ms):
                            return
            except (av.FFmpegError, OSError) as err:
                if session.stopped:
                    return
                if self._path is not None:
                    raise self._file_read_error(err, decoded) from None
                raise self._classify(err) from None
            if session.stopped:
                return
            if self._path is not None or not self.live:
                self._check_complete(container, stream, decoded, first_t, last_t, interval)
        finally:
            container.close()

    def _file_read_error(self, err: BaseException, decoded: int) -> SourceError:
        cut = isobmff_truncation(self._path) if self._path is not None else None
        reason = ffmpeg_reason(err)
        if cut:
            return SourceTruncatedError(self.url, f"truncated after {decoded} frames: {cut}")
        if decoded:
            return SourceCorruptError(self.url, f"unreadable after {decoded} frames ({reason})")
        return SourceCorruptError(self.url, f"no frame could be read ({reason})")

    def _check_complete(
        self,
        container: Any,
        stream: Any,
        decoded: int,
        first_t: float | None,
        last_t: float | None,
        interval: float | None,
    ) -> None:
        """Raise when a recorded source ended early (truncated) or decoded nothing (corrupt)."""
        cut = isobmff_truncation(self._path) if self._path is not None else None
        if decoded == 0:
            if cut:
                raise SourceTruncatedError(self.url, f"truncated: {cut}")
            raise SourceCorruptError(self.url, "no frame could be decoded")
        declared = int(stream.frames or 0)
        # Tolerance: edit lists, B-frame reordering and a damaged packet may cost a frame or two.
        if declared and decoded < declared - max(2, declared // 100):
            raise SourceTruncatedError(
                self.url, f"truncated: only {decoded} of the {declared} frames it declares could be read"
            )
        if cut:
            raise SourceTruncatedError(self.url, f"truncated after {decoded} frames: {cut}")
        if declared or first_t is None or last_t is None:
            return
        # No frame count (Matroska, WebM): compare the time span decoded with the declared duration. The
        # container's duration also covers audio, so it is only trusted when video is the only stream.
        duration: float | None = None
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration and len(container.streams) == 1:
            duration = container.duration / 1_000_000
        if duration:
            step = interval or 0.0
            span = last_t - first_t + step
            if span < duration - max(3 * step, 0.02 * duration, 0.1):
                raise SourceTruncatedError(
                    self.url, f"truncated: frames cover {span:.2f} s of the {duration:.2f} s it declares"
                )
