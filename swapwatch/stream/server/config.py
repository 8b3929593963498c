"""The `server:` section of the monitor config: where `swapwatch serve` listens and how it guards the API.

Pydantic only (no aiohttp import), so the monitor config can carry it without slowing `--help`.

Security defaults and their trade-offs:

- Authentication is on unless `auth: false` (`--no-auth`) says otherwise, and that is accepted only
  for a loopback host: a desk machine can run the dashboard without a token, a server on the network
  cannot. With auth on and no token at all, `serve` refuses to start rather than inventing one
  (a generated token printed to a terminal ends up in service logs).
- The token is a `SecretStr`: `--print-config`, `/api/config` and reprs show `**********`. Prefer the
  `SWAPWATCH_TOKEN` environment variable (or `${SWAPWATCH_TOKEN}` in the file) to writing it here, and
  to `--token`, which other users of the machine can read in the process list.
- API clients may add file, RTSP and HTTP(S) sources (`allowed_kinds`); webcams are off by default,
  since an API caller should not be able to switch on a camera of the machine running the server.
  Files only under `file_roots` (none by default), network sources only outside loopback, private
  and link-local networks (`denied_networks`, with `allowed_networks` / `allowed_hosts` as exceptions),
  and no raw FFmpeg options (`api_ffmpeg_options`): see source_access.py.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator

from swapwatch.config import StrictModel
from swapwatch.stream.server.network_policy import DEFAULT_DENIED_NETWORKS
from swapwatch.stream.sources.ffmpeg_options import API_FORBIDDEN_OPTIONS

if TYPE_CHECKING:
    from swapwatch.stream.server.whip_config import WhipConfig

ENV_TOKEN = "SWAPWATCH_TOKEN"
"""Environment variable holding the API/WHIP bearer token."""

LOOPBACK_NAMES: frozenset[str] = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

SourceKindName = Literal["file", "rtsp", "http", "webcam"]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual loopback names; False for 0.0.0.0, :: and any other address."""
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _default_allowed_kinds() -> list[SourceKindName]:
    return ["file", "rtsp", "http"]


class ServerConfig(StrictModel):
    """`swapwatch serve`: HTTP server, API security, live feed and dashboard."""

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to listen on. A non-loopback address (0.0.0.0, a LAN IP) requires a token.",
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one (printed at start).")
    auth: bool = Field(
        True,
        description="Require the bearer token on /api/, /whip, /offer and /metrics. false (--no-auth) is "
        "accepted only on a loopback host, for local use.",
    )
    token: SecretStr | None = Field(
        None,
        description=f"Bearer token clients send as 'Authorization: Bearer TOKEN'. Prefer the {ENV_TOKEN} "
        "environment variable (or ${" + ENV_TOKEN + "} here) or --token; never printed.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) other than the server's own that may call the API "
        "and WHIP; preflights from any other origin get 403. Empty: same-origin only.",
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest request body accepted (JSON, SDP offers); larger ones get 413.",
    )
    recent_events: int = Field(
        2000, ge=1, le=1_000_000, description="Events kept in memory for GET /api/events and feed backlogs."
    )
    feed_queue: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Messages queued per live-feed client (SSE or WebSocket); a client that falls further "
        "behind loses its oldest messages (counted), it never slows the pipeline.",
    )
    feed_max_clients: int = Field(
        64, ge=1, le=10_000, description="Live-feed connections (SSE + WebSocket) open at once; more get 503."
    )
    status_interval_s: float = Field(
        1.0,
        gt=0.0,
        le=60.0,
        description="Seconds between status snapshots (per-stream state, faces, fps, latency) pushed on the feed.",
    )
    heartbeat_s: float = Field(
        15.0, gt=0.0, le=300.0, description="Seconds between keep-alive comments/pings on idle feed connections."
    )
    ticket_ttl_s: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="Life of the signed tickets the dashboard gets from POST /api/ticket to open the feed "
        "(EventSource and WebSocket cannot send headers).",
    )
    public_metrics: bool = Field(
        False, description="Serve /metrics without the token (for a Prometheus that cannot send one)."
    )
    allowed_kinds: list[SourceKindName] = Field(
        default_factory=_default_allowed_kinds,
        description="Source kinds POST /api/streams may add (file, rtsp, http, webcam).",
    )
    file_roots: list[Path] = Field(
        default_factory=list,
        description="Folders whose files POST /api/streams may add (checked once symlinks and '..' are resolved). "
        "Empty: none, so API callers can add no file even with file in allowed_kinds. Every path outside "
        "gets the same refusal, whether it exists or not.",
    )
    denied_networks: list[IPvAnyNetwork] = Field(
        default_factory=lambda: list(DEFAULT_DENIED_NETWORKS),
        description="Addresses network sources added through the API may not connect to; every address the host "
        "resolves to is checked (IPv4-mapped IPv6 as IPv4). Default: unspecified, loopback, private, shared "
        "(CGNAT), link-local, unique-local and site-local IPv6, multicast and reserved networks. [] checks nothing.",
    )
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Exceptions to denied_networks, e.g. [10.1.2.0/24] for a camera network, [127.0.0.0/8, ::1/128] "
        "for local test servers.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (or '*.example.com') API callers may use whatever they resolve to: exceptions to "
        "denied_networks by name, e.g. [cam1.lan].",
    )
    api_ffmpeg_options: list[str] = Field(
        default_factory=list,
        description="FFmpeg option names API callers may set in a stream's ffmpeg_options; empty: none. Options "
        "that forge requests, listen or change protocols (headers, method, post_data, user_agent, rtsp_flags, "
        "listen, protocol_whitelist, ...) cannot be listed.",
    )
    max_streams: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Streams the API and WHIP may hold in all (running, starting, and removed ones whose reader "
        "is still closing); more get 429.",
    )
    max_source_timeout_s: float = Field(
        30.0,
        gt=0.0,
        le=600.0,
        description="Largest open_timeout_s / read_timeout_s an API caller may ask for: a removed stream's reader "
        "blocked in a network open or read exits within about these two, so this bounds how long it lingers.",
    )
    healthz_max_lag_ms: float = Field(
        1000.0, gt=0.0, description="/healthz answers 503 when the event loop lags more than this (ms)."
    )
    access_log: bool = Field(
        True, description="Log one line per request (method, path with secret query values masked, status, time)."
    )
    whip: dict[str, Any] = Field(
        default_factory=dict,
        description="WebRTC/WHIP ingest settings (max_sessions, ice_servers, bitrate hints, timeouts: see "
        "docs/webrtc.md); checked when `serve` starts, so the WebRTC stack loads only for the server.",
    )

    @field_validator("api_ffmpeg_options")
    @classmethod
    def _safe_options(cls, value: list[str]) -> list[str]:
        forbidden = sorted(set(value) & API_FORBIDDEN_OPTIONS)
        if forbidden:
            raise ValueError(f"{', '.join(forbidden)}: API callers may never set these FFmpeg options")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for i, origin in enumerate(value):
            parts = urlsplit(origin)
            if origin == "*" or parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
                    or parts.query or parts.fragment or "@" in parts.netloc:
                raise ValueError(f"item {i}: {origin!r} is not an origin; write scheme://host[:port], e.g. "
                                 "https://desk.example.com (no '*', path or credentials)")
            out.append(f"{parts.scheme}://{parts.netloc.lower()}")
        return out

    def whip_config(self) -> WhipConfig:
        """The `whip` section as a validated WhipConfig (imports the WebRTC stack); ConfigError names the field."""
        from swapwatch.config import parse_config
        from swapwatch.stream.server.whip_config import WhipConfig

        return parse_config(WhipConfig, dict(self.whip), source="server.whip")

    def resolved_token(self, cli_token: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
        """The token in force: --token, else SWAPWATCH_TOKEN, else the config's; None when none is set."""
        env = os.environ if env is None else env
        for candidate in (cli_token, env.get(ENV_TOKEN), self.token.get_secret_value() if self.token else None):
            if candidate:
                return candidate
        return None
