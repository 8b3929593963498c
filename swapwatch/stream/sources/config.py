"""Source settings: what to open, how it is read, and how it reconnects; URL kind detection and masking.

Every automatic choice (kind, live or recorded, frame policy, queue size, name) is a field that
defaults to `None`, meaning "derive it from the URL"; the `resolved_*` properties give the value a
source actually uses. Deriving at read time instead of filling the fields in a validator keeps
`validate_assignment` honest: changing `url` later changes everything that follows from it.

The URL is a closed contract: its scheme (or a plain path's shape) decides the kind, and only the
schemes in SCHEME_KINDS are read. An explicit `kind` may repeat that kind, never change it, and a plain
path that starts like an FFmpeg protocol (`concat:`, `subfile,`, `pipe:`, `data:`, ...) is refused, so
a URL can never reach FFmpeg protocols beyond the ones its kind reads (ffmpeg_options.py pins those
for FFmpeg too). Stream names follow swapwatch/stream/names.py; derived names always do.

Credentials never leave this module in clear: `mask_url` hides passwords, bare user tokens and
secret-looking query parameters, and every name, log line, error and `repr` uses the masked form.
The real URL is only handed to FFmpeg.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator, model_validator

from swapwatch.config import StrictModel
from swapwatch.stream.names import StreamName, to_stream_name
from swapwatch.stream.sources.ffmpeg_options import check_ffmpeg_options
from swapwatch.stream.sources.frames import FramePolicy
from swapwatch.stream.sources.kinds import SourceKind

SCHEME_KINDS: dict[str, SourceKind] = {
    "rtsp": "rtsp",
    "rtsps": "rtsp",
    "http": "http",
    "https": "http",
    "file": "file",
    "v4l2": "webcam",
}
"""URL schemes swapwatch opens, and the kind each one means."""

RECORDED_EXTS: frozenset[str] = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".flv"})
"""An HTTP(S) URL whose path ends in one of these is a recorded file, not a live stream."""

SECRET_QUERY_KEYS: frozenset[str] = frozenset(
    {"password", "passwd", "pass", "pwd", "token", "access_token", "auth", "key", "apikey", "api_key",
     "secret", "signature", "sig", "x-amz-signature", "x-amz-credential", "x-amz-security-token"}
)
"""Query parameters whose values are masked like passwords (case-insensitive)."""

MASK = "***"
_WEBCAM_PATH = re.compile(r"/dev/video[0-9]+")
_DEVICE_PATH = re.compile(r"/dev/[A-Za-z0-9._:/-]+")
_PROTOCOL_PREFIX = re.compile(r"[A-Za-z0-9+.-]+:|subfile,")
"""How FFmpeg recognises a protocol in front of a path (`concat:`, `pipe:`, `data:`, `subfile,,...:`)."""


def mask_url(url: str) -> str:
    """The URL with its credentials replaced by `***`, safe for logs, names, errors and events.

    `rtsp://admin:pw@cam/x` -> `rtsp://admin:***@cam/x`: the user name is kept when a password is
    present (it helps to know which account failed), but a user-only userinfo (`https://TOKEN@host/`)
    is masked whole, because services put API tokens there. Secret-looking query values
    (`?token=...`, `?password=...`, AWS signatures) are masked too. Plain paths come back unchanged.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if has_password and user else f"{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode([(k, MASK if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secret substrings of a URL (password, bare user token, secret query values), longest first."""
    if "://" not in url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, has_password, password = userinfo.partition(":")
        found.append(password if has_password else user)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in SECRET_QUERY_KEYS:
            found.append(value)
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """`text` with the raw URL and each of its secrets replaced by their masked forms.

    Used on any message that might quote the URL (FFmpeg exception strings quote the file name they
    were given, credentials included), so even an unexpected error cannot leak a password.
    """
    text = text.replace(url, mask_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text


def detect_kind(url: str) -> SourceKind:
    """The kind a URL or path names: scheme first, then `/dev/videoN` or a bare camera index, else a file.

    Raises ValueError for a URL scheme swapwatch does not read (rtmp://, srt://, udp://, tcp://, ...),
    for a path that starts like an FFmpeg protocol (`concat:`, `pipe:`, `data:`, `subfile,`), and for a
    `v4l2://` URL that names no device node, each message naming what is read.
    """
    text = url.strip()
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in SCHEME_KINDS:
            shown = scheme if len(scheme) <= 20 else scheme[:20] + "..."
            raise ValueError(
                f"unsupported URL scheme {shown!r}: use one of {', '.join(sorted(SCHEME_KINDS))}, or a file path"
            )
        kind = SCHEME_KINDS[scheme]
        if kind == "webcam" and not _is_device(webcam_device(text)):
            raise ValueError("a v4l2:// URL names a device node, e.g. v4l2:///dev/video0")
        return kind
    prefix = _PROTOCOL_PREFIX.match(text)
    if prefix:
        raise ValueError(
            f"{prefix.group()!r} is an FFmpeg protocol, not a file path: use one of "
            f"{', '.join(f'{s}://' for s in sorted(SCHEME_KINDS))}, or a file path (./name for a file whose "
            "name holds a colon)"
        )
    if _WEBCAM_PATH.fullmatch(text) or (text.isascii() and text.isdigit()):
        return "webcam"
    return "file"


def _is_device(path: str) -> bool:
    return _DEVICE_PATH.fullmatch(path) is not None and ".." not in path.split("/")


def network_url_problem(url: str) -> str | None:
    """What is wrong with a network URL (no host, a bad port or IPv6 literal), or None."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as err:
        return f"not a valid URL ({err})"
    if not parts.hostname:
        return f"no host in {mask_url(url)!r}"
    return None


def file_url_problem(url: str) -> str | None:
    """What is wrong with a file:// URL (a host other than localhost), or None; plain paths are fine."""
    text = url.strip()
    if text.lower().startswith("file://") and urlsplit(text).netloc.lower() not in ("", "localhost"):
        return "a file:// URL names a local path: write file:///path (three slashes)"
    return None


def webcam_device(url: str) -> str:
    """The device path for a webcam URL: `0` -> `/dev/video0`, `v4l2:///dev/video2` -> `/dev/video2`."""
    text = url.strip()
    if text.lower().startswith("v4l2://"):
        text = text[len("v4l2://"):]
    return f"/dev/video{text}" if text.isdigit() else text


def file_path(url: str) -> Path:
    """The local path for a file URL (`file:///a/b.mp4` or a plain path)."""
    text = url.strip()
    if text.lower().startswith("file://"):
        return Path(urlsplit(text).path)
    return Path(text)


def default_name(url: str, kind: SourceKind) -> str:
    """A short stream name derived from the URL, never holding credentials or the query string.

    Files: the file stem (`lobby.mp4` -> `lobby`); webcams: the device (`video0`); network URLs:
    `host[:port]_path` (`rtsp://u:p@10.0.0.5:554/live/cam1?x=1` -> `10.0.0.5:554_live_cam1`). Characters
    a stream name may not hold (`/`, spaces, ...) become `_` (swapwatch/stream/names.py), so the result
    is always a valid name.
    """
    if kind == "file":
        return to_stream_name(file_path(url).stem, fallback="file")
    if kind == "webcam":
        return to_stream_name(Path(webcam_device(url)).name, fallback="webcam")
    parts = urlsplit(url.strip())
    host = parts.netloc.rpartition("@")[2]
    if host.startswith("["):  # an IPv6 literal: "[::1]:554" would lose its leading colons
        host = "ip6-" + host[1:].replace("]", "", 1)
    return to_stream_name(f"{host}{parts.path.rstrip('/')}", fallback=kind)


class ReconnectConfig(StrictModel):
    """Capped exponential backoff with jitter between connection attempts of a live source.

    Delay before retry n (n = 1, 2, ...) is `min(max_s, initial_s * multiplier**(n-1) * U(1-jitter,
    1+jitter))`. Jitter spreads the retries of many cameras that dropped at once (a switch reboot) so
    they do not hammer the server in lockstep. The failure count resets once a connection has stayed
    live for `reset_after_s`, so a camera that drops once a day never creeps towards `max_attempts`,
    while one that connects, sends a few frames and dies again keeps backing off.
    """

    initial_s: float = Field(0.5, gt=0.0, le=3600.0, description="Delay before the first retry, in seconds.")
    max_s: float = Field(30.0, gt=0.0, le=3600.0, description="Upper bound on any delay, in seconds.")
    multiplier: float = Field(2.0, ge=1.0, le=10.0, description="Each further retry waits this many times longer.")
    jitter: float = Field(
        0.2, ge=0.0, lt=1.0, description="Random spread of each delay, as a fraction (0.2 = +-20%); 0 disables it."
    )
    reset_after_s: float = Field(
        10.0,
        ge=0.0,
        le=86400.0,
        description="A connection must stay live this long before the failure count (and the delay) resets; "
        "shorter ones count as failed attempts, so a flapping stream backs off and can reach max_attempts.",
    )
    max_attempts: int | None = Field(
        None,
        ge=0,
        description="Retries after a loss (or a failed first connection) before the source is 'failed'; "
        "null retries forever, 0 fails on the first loss.",
    )

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= initial_s ({self.initial_s})")
        return self


class SourceConfig(StrictModel):
    """One video source. Only `url` is required; everything else has a default that suits its kind.

    Live sources (RTSP, webcams, HTTP streams) default to the `latest` policy with a 1-frame queue:
    the monitor always scores the newest frame, and frames it cannot keep up with are dropped and
    counted. Recorded sources (files, HTTP URLs of video files) default to `all` (never drop, the
    reader waits for the consumer) and are paced at their native frame rate unless `realtime` is off.
    """

    url: str = Field(
        ...,
        min_length=1,
        validation_alias=AliasChoices("url", "path"),
        description="What to open: a file path, file://, rtsp://, rtsps://, http(s):// (files, HLS .m3u8, MJPEG), "
        "/dev/videoN, v4l2:///dev/videoN or a camera index ('0'). Also accepted as 'path'. "
        "Credentials in it are never logged.",
    )
    name: StreamName | None = Field(
        None,
        description="Stream name used in events, metrics and API paths: 1-128 ASCII letters, digits, '.', '_', "
        "'-', ':' or '@', starting with a letter or digit; null derives one from the URL.",
    )
    kind: SourceKind | None = Field(
        None,
        description="file, rtsp, http or webcam. The URL's scheme or path decides the kind; this may only repeat "
        "it (a mismatch is an error), null takes it from the URL.",
    )
    live: bool | None = Field(
        None,
        description="Whether end-of-stream is a loss to reconnect from (live) or the end (recorded); null: files "
        "and HTTP(S) URLs ending in a video file extension are recorded, everything else is live.",
    )
    policy: FramePolicy | None = Field(
        None,
        description="'latest' (newest frame replaces stale ones, drops counted) or 'all' (never drop, the reader "
        "waits); null: latest for live sources, all for recorded ones.",
    )
    queue_size: int | None = Field(
        None, ge=1, le=1024, description="Frames held between reader and consumer; null: 1 for latest, 8 for all."
    )
    realtime: bool = Field(
        True,
        description="Recorded sources only: pace frames at their native rate using their timestamps (true) or "
        "read as fast as the consumer takes them (false, for benchmarks and scans).",
    )
    open_timeout_s: float = Field(
        5.0, gt=0.0, le=600.0, description="Network sources: seconds to wait for a connection to open."
    )
    read_timeout_s: float = Field(
        2.0,
        gt=0.0,
        le=600.0,
        description="Network sources: seconds a blocked read may wait for data before FFmpeg gives up "
        "(errors come after about twice this).",
    )
    stall_timeout_s: float | None = Field(
        5.0,
        gt=0.0,
        le=3600.0,
        description="Watchdog: a connection that decodes no frame for this long is dropped and retried; the first "
        "frame of a connection gets open_timeout_s on top. null disables the watchdog.",
    )
    rtsp_transport: Literal["tcp", "udp", "udp_multicast", "http", "https"] = Field(
        "tcp", description="RTSP only: RTP transport. TCP survives lossy links and NAT without smeared frames."
    )
    low_latency: bool = Field(
        True,
        description="RTSP only: small probe (probesize 32768, analyzeduration 0) and the low_delay decoder flag, "
        "so the first frame comes in ~0.3 s and frames are not held back.",
    )
    decode_threading: Literal["slice", "frame", "auto"] = Field(
        "slice",
        description="Decoder threading. slice keeps latency at about one frame; frame/auto decode faster on many "
        "cores but hold frames back (measured 42 -> 109 ms), so use them only for recorded benchmarks.",
    )
    ffmpeg_options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra FFmpeg demuxer/protocol options, applied last (they override swapwatch's own), for "
        "trusted configs: the API refuses them unless server.api_ffmpeg_options lists the option names, and "
        "never allows options that forge requests or listen (headers, method, post_data, rtsp_flags, ...). "
        "protocol_whitelist/protocol_blacklist are pinned per kind and refused everywhere.",
    )
    video_size: str | None = Field(
        None,
        pattern=r"^\d+x\d+$",
        description="Webcam only: capture size, e.g. '1280x720'; null: the driver's default.",
    )
    framerate: float | None = Field(
        None, gt=0.0, le=1000.0, description="Webcam only: capture frame rate; null: the driver's default."
    )
    input_format: str | None = Field(
        None, min_length=1, description="Webcam only: pixel format from the device, e.g. 'mjpeg' or 'yuyv422'."
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Backoff between connection attempts of a live source."
    )

    @field_validator("url")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        # Python's URL parser drops tabs and newlines that FFmpeg would keep: the two must see one URL.
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("holds a control character (newline, tab, NUL, ...)")
        return value

    @field_validator("ffmpeg_options")
    @classmethod
    def _options_allowed(cls, value: dict[str, str]) -> dict[str, str]:
        check_ffmpeg_options(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        if self.kind == "webrtc":
            raise ValueError("kind: webrtc streams are published to the server (POST /whip), not opened from a URL")
        try:
            detected = detect_kind(self.url)
        except ValueError as err:
            raise ValueError(f"url: {err}") from None
        kind = detected
        if kind in ("rtsp", "http"):
            problem = network_url_problem(self.url)
        elif kind == "file":
            problem = file_url_problem(self.url)
        else:
            problem = None
        if problem:
            raise ValueError(f"url: {problem}")
        if self.kind is not None and self.kind != detected:
            raise ValueError(
                f"kind: {self.kind!r} does not match the URL, which names a {detected} source: the URL's scheme "
                "decides the kind (leave kind out)"
            )
        webcam_only = [f for f in ("video_size", "framerate", "input_format") if getattr(self, f) is not None]
        if webcam_only and kind != "webcam":
            raise ValueError(f"{', '.join(webcam_only)}: only for webcam sources (this one is {kind})")
        return self

    @property
    def resolved_kind(self) -> SourceKind:
        """The kind in use: the one `url` names (`kind`, when set, is validated to be the same)."""
        return self.kind or detect_kind(self.url)

    @property
    def is_live(self) -> bool:
        """True when end-of-stream means a loss to reconnect from, False when it means the end."""
        if self.live is not None:
            return self.live
        kind = self.resolved_kind
        if kind == "file":
            return False
        if kind == "http":
            return Path(urlsplit(self.url.strip()).path).suffix.lower() not in RECORDED_EXTS
        return True

    @property
    def resolved_policy(self) -> FramePolicy:
        """The frame policy in use: `policy`, or latest for live and all for recorded sources."""
        return self.policy or ("latest" if self.is_live else "all")

    @property
    def resolved_queue_size(self) -> int:
        """The queue size in use: `queue_size`, or 1 for latest and 8 for all."""
        return self.queue_size or (1 if self.resolved_policy == "latest" else 8)

    @property
    def resolved_name(self) -> str:
        """The stream name in use: `name`, or one derived from the masked URL."""
        return self.name or default_name(self.url, self.resolved_kind)

    @property
    def masked_url(self) -> str:
        """The URL with credentials masked: the only form that may be logged or shown."""
        return mask_url(self.url)

    def __repr_args__(self) -> Any:
        # pydantic's repr (and so str(), logging of the config, tracebacks) must not show credentials.
        for key, value in super().__repr_args__():
            yield key, (mask_url(value) if key == "url" and isinstance(value, str) else value)
