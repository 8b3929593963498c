"""What an API caller may add as a stream: kinds, FFmpeg options, hosts and files (`check_api_source`).

Sources in the config file are trusted: the operator wrote them. A caller of POST /api/streams only
holds a token, so on top of the source config's own validation its stream must pass these checks
(the server config field in brackets):

- its network timeouts are at most [`max_source_timeout_s`], so a removed stream's reader, blocked in
  FFmpeg until a timeout, exits in bounded time;
- its kind is allowed [`allowed_kinds`];
- it sets no FFmpeg option, unless the option name is listed [`api_ffmpeg_options`], and never one
  that forges requests, listens or changes protocols (sources/ffmpeg_options.py);
- a network source's host is not in a denied network, or is an exception [`denied_networks`,
  `allowed_networks`, `allowed_hosts`] (network_policy.py);
- a file, once symlinks and `..` are resolved, lies under a file root [`file_roots`]. Outside the
  roots every path gets one and the same answer, whether it is missing, a directory, unreadable, not a
  video or a video: the reply tells nothing about what exists on the disk. Inside them, the source
  reports its own errors (no such file, a directory, not a video) in the stream's status.

A file that passes is opened by its resolved path (the config returned carries it), so a symlink
switched after the check cannot point the reader elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from swapwatch.stream.server.config import ServerConfig
from swapwatch.stream.server.network_policy import address_allowed, host_listed, ip_literal, resolve
from swapwatch.stream.sources.config import SourceConfig, file_path
from swapwatch.stream.sources.ffmpeg_options import api_option_refusal

OUTSIDE_FILE_ROOTS = "not a file API callers may add: files must lie under server.file_roots"
"""The one refusal for every path outside the roots (missing, a directory, unreadable, a video or not)."""


class SourceRefused(Exception):  # noqa: N818 - a refusal, not a failure
    """An API caller may not add this source; `field` names the config field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


async def check_api_source(config: SourceConfig, server: ServerConfig) -> SourceConfig:
    """The config to open for a source an API caller asked for; SourceRefused when it may not be added."""
    for key in ("open_timeout_s", "read_timeout_s"):
        if getattr(config, key) > server.max_source_timeout_s:
            raise SourceRefused(key, f"at most {server.max_source_timeout_s:g} s through the API (server.max_source_timeout_s)")
    kind = config.resolved_kind
    if kind not in server.allowed_kinds:
        raise SourceRefused(
            "kind",
            f"{kind} sources cannot be added through the API (server.allowed_kinds: {', '.join(server.allowed_kinds)})",
        )
    refusal = api_option_refusal(config.ffmpeg_options, server.api_ffmpeg_options)
    if refusal:
        raise SourceRefused("ffmpeg_options", refusal)
    if kind == "file":
        return file_under_roots(config, server.file_roots)
    if kind in ("rtsp", "http"):
        await check_host(config, server)
    return config


def file_under_roots(config: SourceConfig, roots: list[Path]) -> SourceConfig:
    """`config` with its file's resolved path as URL (the name kept), or SourceRefused on `url`."""
    if not roots:
        raise SourceRefused("url", "no files can be added through the API (server.file_roots is empty)")
    try:
        resolved = file_path(config.url).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        raise SourceRefused("url", OUTSIDE_FILE_ROOTS) from None
    for root in roots:
        try:
            inside = resolved.is_relative_to(root.resolve())
        except (OSError, RuntimeError):
            continue
        if inside:
            return config.model_copy(update={"url": str(resolved), "name": config.resolved_name})
    raise SourceRefused("url", OUTSIDE_FILE_ROOTS)


async def check_host(config: SourceConfig, server: ServerConfig) -> None:
    """SourceRefused on `url` when the host, or any address it resolves to, is denied."""
    parts = urlsplit(config.url.strip())
    host = parts.hostname or ""
    if host_listed(host, server.allowed_hosts) or not server.denied_networks:
        return
    literal = ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await resolve(host, parts.port)
        except (OSError, TimeoutError, UnicodeError):
            raise SourceRefused("url", f"host {host!r} does not resolve") from None
    if not addresses or not all(
        address_allowed(a, server.denied_networks, server.allowed_networks) for a in addresses
    ):
        raise SourceRefused(
            "url",
            f"host {host!r} is in a network API callers may not reach (server.denied_networks; the server's "
            "config can make exceptions with server.allowed_networks or server.allowed_hosts)",
        )
