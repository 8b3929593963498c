"""What FFmpeg may do for a source: the protocols each kind may open, and the option names callers may set.

FFmpeg's URL layer knows far more than the schemes swapwatch reads: `concat:`, `subfile:`, `pipe:`,
`data:`, `crypto:`, `tcp://`, `udp://`, and HLS playlists or redirects that point at any of them. The
config refuses such URLs (sources/config.py), and as a second wall every source opens with FFmpeg's
`protocol_whitelist` set to its kind's protocols (`KIND_PROTOCOLS`), which also binds what FFmpeg opens
on its own: an HLS segment or a redirect to `file:` from an HTTP source, a `.m3u8` file naming
`http://` URLs. No config can change that whitelist (`PINNED_OPTIONS`).

`ffmpeg_options` itself is for trusted configs (the YAML of `swapwatch watch` / `serve`): RTSP listen
mode, HTTP headers for an authenticated HLS, and so on. API callers get none of it unless the server
lists option names in `server.api_ffmpeg_options`, and `API_FORBIDDEN_OPTIONS` can never be listed
there: they forge requests (method, body, headers; header values are written into the request, so
one CR LF in a user agent adds headers), open listening sockets, pick proxies, local addresses or
file descriptors, or widen what the demuxers read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from swapwatch.stream.sources.kinds import SourceKind

KIND_PROTOCOLS: dict[SourceKind, str] = {
    "file": "file",
    "http": "http,https,tls,tcp,crypto",
    "rtsp": "rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https",
}
"""FFmpeg's `protocol_whitelist` for each kind read through a URL (webcams use no protocol: a device
format opens the device node itself). `crypto` is AES-128 HLS (it wraps an http(s) URL); RTSP needs
rtp/udp for UDP transport and http(s) for RTSP-over-HTTP tunnelling."""

PINNED_OPTIONS: frozenset[str] = frozenset({"protocol_whitelist", "protocol_blacklist"})
"""Options swapwatch sets itself and no config may set."""

API_FORBIDDEN_OPTIONS: frozenset[str] = PINNED_OPTIONS | frozenset({
    # requests forged to the target: method, body, headers and header-valued options
    "method", "post_data", "headers", "user_agent", "user-agent", "referer", "cookies", "content_type",
    "auth_type", "chunked_post", "send_expect_100", "icy", "multiple_requests", "location",
    # listening sockets instead of connecting out
    "listen", "listen_timeout", "rtsp_flags", "timeout", "stimeout", "rw_timeout",
    # where and how to connect: proxies, local addresses and ports, descriptors
    "http_proxy", "localaddr", "localport", "local_addr", "local_port", "reuse", "fd", "follow",
    "min_port", "max_port", "connect", "sources", "block",
    # what the demuxers may read beyond the URL
    "allowed_extensions", "allowed_segment_extensions", "extension_picky", "safe", "key", "iv",
    "decryption_key", "format_whitelist", "codec_whitelist", "cryptokey", "cenc_decryption_key",
})
"""Option names `server.api_ffmpeg_options` may never list (socket timeouts are the typed
`open_timeout_s` / `read_timeout_s`, capped for API callers)."""


def check_ffmpeg_options(options: Mapping[str, str]) -> None:
    """ValueError naming the first option no config may set, or one whose name or value is malformed."""
    for key, value in options.items():
        if not key or not key.replace("_", "").replace("-", "").isalnum() or not key.isascii():
            raise ValueError(f"ffmpeg_options: {key!r} is not an FFmpeg option name")
        if key in PINNED_OPTIONS:
            raise ValueError(
                f"ffmpeg_options: {key!r} is set by swapwatch for each kind (the protocols it may open) and cannot "
                "be changed"
            )
        if "\x00" in value:
            raise ValueError(f"ffmpeg_options: the value of {key!r} holds a NUL character")


def api_option_refusal(options: Mapping[str, str], allowed: Collection[str]) -> str | None:
    """Why an API caller may not set `options` (None when it may): every name must be in `allowed` and
    outside API_FORBIDDEN_OPTIONS, and no value may hold a control character."""
    for key, value in options.items():
        if key in API_FORBIDDEN_OPTIONS or key not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            return f"{key!r} cannot be set through the API (server.api_ffmpeg_options allows: {listed})"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            return f"the value of {key!r} holds a control character"
    return None
