"""The WHIP ingest's settings (`server.whip` in the monitor config): ICE servers, codecs, bitrates, limits
and timeouts, and the aiortc configuration they make."""

from __future__ import annotations

from typing import Literal

from aiortc import RTCConfiguration, RTCIceServer
from pydantic import Field, model_validator

from swapwatch.config import StrictModel


class IceServerConfig(StrictModel):
    """A STUN or TURN server for the server's peer connections (and advertised to publishers)."""

    urls: list[str] = Field(
        ..., min_length=1, description="stun:/turn:/turns: URLs of one server, e.g. ['turn:turn.example.org:3478']."
    )
    username: str | None = Field(None, description="TURN user name; null for STUN.")
    credential: str | None = Field(None, description="TURN password; null for STUN. Never logged.", repr=False)

    @model_validator(mode="after")
    def _schemes(self) -> IceServerConfig:
        for url in self.urls:
            if url.split(":", 1)[0].lower() not in ("stun", "stuns", "turn", "turns"):
                raise ValueError(f"urls: {url!r} is not a stun:, stuns:, turn: or turns: URL")
        return self


VideoCodec = Literal["H264", "VP8"]


def _default_video_codecs() -> list[VideoCodec]:
    return ["H264", "VP8"]


class WhipConfig(StrictModel):
    """WHIP ingest settings: limits, ICE servers, bitrate hints and the media timeouts."""

    max_sessions: int = Field(
        8, ge=1, le=1024, description="Publishing sessions at once; one more gets 503 with Retry-After."
    )
    max_offer_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest SDP offer (or /offer JSON body) accepted; larger gets 413. Browser offers are 3-10 KiB.",
    )
    ice_servers: list[IceServerConfig] = Field(
        default_factory=list,
        description="STUN/TURN servers for the server's side of each connection; empty (default): host candidates "
        "only, nothing contacts the outside network.",
    )
    advertise_ice_servers: bool = Field(
        True, description="Send the ice_servers to publishers as RFC 9725 Link headers (TURN credentials included)."
    )
    start_bitrate_kbps: int | None = Field(
        2500, ge=30, le=100_000,
        description="x-google-start-bitrate in the answer: Chrome's first video bitrate; null leaves it out.",
    )
    min_bitrate_kbps: int | None = Field(
        1000, ge=30, le=100_000,
        description="x-google-min-bitrate: Chrome never drops below it (keeps 720p from falling to 360p); null "
        "leaves it out.",
    )
    max_bitrate_kbps: int | None = Field(
        6000, ge=30, le=100_000, description="x-google-max-bitrate: Chrome's ceiling; null leaves it out."
    )
    accept_audio: bool = Field(
        False,
        description="Accept audio (received and discarded). false answers audio as inactive, so the peer sends none.",
    )
    video_codecs: list[VideoCodec] = Field(
        default_factory=_default_video_codecs,
        min_length=1,
        description="Video codecs accepted, in order of preference: the answer lists them so, and the publisher "
        "sends the first it supports. H.264 first: aiortc decodes a 720p H.264 frame in ~0.5 ms of CPU, a VP8 "
        "one in ~1.25 ms (measured here).",
    )
    release_on_marker: bool = Field(
        True,
        description="Decode each video frame as soon as its last RTP packet (marker bit) arrives, instead of when "
        "the next frame starts (aiortc's default): one frame interval (33 ms at 30 fps) less latency.",
    )
    queue_size: int = Field(
        1, ge=1, le=16, description="Frames held per stream for the monitor (latest policy: newer frames replace them)."
    )
    negotiate_timeout_s: float = Field(
        10.0, gt=0.0, le=120.0, description="Seconds to build the answer (ICE gathering included) before a 504."
    )
    connect_timeout_s: float = Field(
        20.0, gt=0.0, le=600.0,
        description="A session whose first video frame has not arrived this long after the answer is ended.",
    )
    media_timeout_s: float | None = Field(
        10.0, gt=0.0, le=3600.0,
        description="A session that receives no video frame for this long is ended (a peer that vanished without "
        "hanging up); null waits for ICE consent to fail (~30 s).",
    )
    name_prefix: str = Field(
        "webrtc", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$",
        description="Streams published to plain /whip are named <prefix>-1, <prefix>-2, ...",
    )

    @model_validator(mode="after")
    def _bitrates_ordered(self) -> WhipConfig:
        lo, start, hi = self.min_bitrate_kbps, self.start_bitrate_kbps, self.max_bitrate_kbps
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_bitrate_kbps ({lo}) must be <= max_bitrate_kbps ({hi})")
        if start is not None and ((lo is not None and start < lo) or (hi is not None and start > hi)):
            raise ValueError(f"start_bitrate_kbps ({start}) must lie between min and max bitrate")
        return self

    def rtc_configuration(self) -> RTCConfiguration:
        """aiortc's configuration for one peer connection."""
        return RTCConfiguration(
            iceServers=[RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                        for s in self.ice_servers]
        )
