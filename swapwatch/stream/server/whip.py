"""WebRTC ingest over WHIP (RFC 9725) and the common JSON `/offer` form, for the aiohttp server.

A publisher (a browser, OBS, GStreamer's whipsink, `swapwatch publish`) POSTs an SDP offer; the server
answers with `201 Created`, the SDP answer and a `Location`; a DELETE on that location hangs up. The
published video track (one per session; further video sections are answered inactive) becomes a
`WebRTCSource` handed to the server through `on_source`, and when the
session ends, for whatever reason, the peer connection is closed and `on_end(name)` is called.

Routes (`add_whip_routes`):

| method | path | what |
| --- | --- | --- |
| POST | `/whip`, `/whip/{stream}` | `application/sdp` offer -> 201, answer, `Location`, `ETag` (and `Link` per ICE server) |
| OPTIONS | same | 204 with `Accept-Post: application/sdp` (a CORS preflight is the server middleware's) |
| DELETE | `/whip/resource/{session}` | ends the session: 200; 404 when unknown |
| PATCH | `/whip/resource/{session}` | 405 with `Allow`: no trickle ICE or ICE restart (RFC 9725 lets a server say so) |
| POST | `/offer` | JSON `{sdp, type: "offer", stream?}` -> `{sdp, type: "answer", session, location}` |

Errors: 415 wrong content type, 413 body over `max_offer_bytes`, 400 not an SDP offer / no video in it /
no video codec in common (each with the reason in the body), 409 a stream of that name is already
published, 503 `max_sessions` reached (with `Retry-After`), 504 negotiation did not finish in time.

Choices, and why:

- **Non-trickle.** aiortc gathers all its ICE candidates inside `setLocalDescription`, so the answer
  already carries them; PATCH (trickle, ICE restart) is refused with 405, which RFC 9725 allows.
  A publisher that wants to reconnect publishes a new session.
- **No ICE servers by default.** The server answers with its host candidates only, so nothing reaches
  outside the network unless a STUN/TURN server is configured (and then it is also advertised to
  publishers in `Link` headers, as RFC 9725 section 4.6 describes).
- **Bitrate hints for Chrome.** Chrome starts a video sender at a low bitrate and, with aiortc's modest
  bandwidth feedback, stays at 360p for a 720p camera (FACTS.md). `x-google-start-bitrate` /
  `x-google-min-bitrate` / `x-google-max-bitrate` on the answer's video fmtp lines make it send full
  resolution from the start; other senders ignore these parameters.
- **Audio is refused by default.** The monitor only watches video: the answer marks audio `inactive`
  so the peer sends none (no bandwidth, no Opus decoding). Any remote track nobody reads (audio when
  accepted) is drained by aiortc's `MediaBlackhole`, since unread tracks keep every frame (FACTS.md).
- **A session ends once, whatever ends it:** DELETE, the peer connection closing or failing (ICE
  consent, DTLS close), every video track ending (RTCP BYE), no video for `media_timeout_s` (a peer that
  vanished without hanging up: ICE consent alone takes ~30 s to notice), the monitor closing the
  source, or server shutdown. Teardown ends the sources with the reason, closes the peer connection,
  stops the drains and calls `on_end` for each stream; nothing of the session is left behind.
- **Sources start at once.** Each `WebRTCSource` starts pumping frames before `on_source` is called,
  so frames never pile up in aiortc's unbounded queues, whoever consumes them and however late.

Authentication (the bearer token), CORS and the request limits of other routes belong to the server's
middleware; this module never sees or logs the token, and never logs SDP (it carries ICE passwords).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiortc import (
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole
from aiortc.exceptions import OperationError
from aiortc.mediastreams import MediaStreamTrack

from swapwatch.stream.names import STREAM_NAME_RULE, is_stream_name
from swapwatch.stream.server.sdp import OfferError, add_bitrate_hints, answer_video_codec, check_offer
from swapwatch.stream.server.whip_config import WhipConfig
from swapwatch.stream.sources.base import TERMINAL_STATES, Source, StateChange
from swapwatch.stream.sources.webrtc import WebRTCSource, release_frames_on_marker
from swapwatch.strict_json import JsonBodyError, loads_request_json

log = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"

WATCH_TICK_S = 0.5
"""How often a session's media watchdog looks at its sources."""

OnSource = Callable[[Source], Awaitable[str]]
"""Called with each new (started) source; returns the stream name the server registered it under."""
OnEnd = Callable[[str], Awaitable[None]]
"""Called with that name once the stream's WHIP session has ended and its peer connection is closed."""


# --- sessions -----------------------------------------------------------------------------------------------


class WhipError(Exception):
    """A request the endpoint refuses: the HTTP status, the reason (sent as the body) and extra headers."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class StreamRejected(Exception):
    """`on_source` raises this to refuse a stream (e.g. the name is taken by another kind of stream): the
    publisher gets `status` (409 by default) with the reason, and the session is torn down."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


SessionState = Literal["negotiating", "active", "ending", "ended"]


@dataclass(eq=False)
class WhipSession:
    """One publisher's peer connection and the streams (video tracks) it publishes."""

    id: str
    pc: RTCPeerConnection
    remote: str | None
    requested_name: str | None
    created: float = field(default_factory=time.time)
    created_mono: float = field(default_factory=time.monotonic)
    state: SessionState = "negotiating"
    video_tracks: list[MediaStreamTrack] = field(default_factory=list)
    sources: list[WebRTCSource] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    """Names `on_source` returned, in track order: the streams `on_end` will be called for."""
    blackhole: MediaBlackhole = field(default_factory=MediaBlackhole)
    end_reason: str | None = None
    codec: str | None = None
    """The video codec the publisher sends (the first one in the answer), e.g. 'H264'."""
    watchdog: asyncio.Task[None] | None = None
    ending: asyncio.Future[None] | None = None

    @property
    def etag(self) -> str:
        """The session's entity tag (it never changes: no ICE restarts)."""
        return f'"{self.id}"'

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state for the API: id, streams, remote address, state, connection state, times."""
        return {
            "session": self.id,
            "streams": list(self.streams),
            "remote": self.remote,
            "state": self.state,
            "connection": self.pc.connectionState,
            "codec": self.codec,
            "created": self.created,
            "age_s": round(time.monotonic() - self.created_mono, 3),
            "end_reason": self.end_reason,
        }


class WhipIngest:
    """The WHIP sessions of one server: negotiation, bookkeeping, watchdogs and teardown."""

    def __init__(self, config: WhipConfig, on_source: OnSource, on_end: OnEnd) -> None:
        self.config = config
        self.on_source = on_source
        self.on_end = on_end
        self.sessions: dict[str, WhipSession] = {}
        self._counter = 0
        self._closing = False
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- public --------------------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Every live session, for the API."""
        return [s.snapshot() for s in self.sessions.values()]

    def names_in_use(self) -> set[str]:
        """Stream names published (or being negotiated) by the current sessions."""
        names: set[str] = set()
        for s in self.sessions.values():
            names.update(s.streams)
            names.update(src.name for src in s.sources)
            if s.requested_name:
                names.add(s.requested_name)
        return names

    async def publish(self, offer: str, stream: str | None, remote: str | None) -> tuple[WhipSession, str]:
        """Negotiate a session for an SDP offer; returns it and the SDP answer. Raises WhipError."""
        if self._closing:
            raise WhipError(503, "the server is shutting down")
        if stream is not None and not is_stream_name(stream):  # the same rule as every stream name (names.py)
            raise WhipError(400, f"stream name {stream[:40]!r}: use {STREAM_NAME_RULE}")
        try:
            check_offer(offer)
        except OfferError as err:
            raise WhipError(400, str(err)) from None
        if len(self.sessions) >= self.config.max_sessions:  # negotiating sessions are in it too
            raise WhipError(
                503, f"too many sessions: {self.config.max_sessions} are publishing already", {"Retry-After": "5"}
            )
        if stream is not None and stream in self.names_in_use():
            raise WhipError(409, f"stream {stream!r} is already being published")
        session = WhipSession(
            id=secrets.token_urlsafe(12), pc=RTCPeerConnection(self.config.rtc_configuration()), remote=remote,
            requested_name=stream,
        )
        self.sessions[session.id] = session
        try:
            try:
                answer = await asyncio.wait_for(self._negotiate(session, offer), self.config.negotiate_timeout_s)
            except TimeoutError:
                raise WhipError(504, f"negotiation did not finish in {self.config.negotiate_timeout_s:g} s") from None
            await self._start_streams(session, stream)
        except BaseException as err:
            await self._teardown(session, f"refused: {err}" if isinstance(err, WhipError) else "negotiation failed",
                                 notify=False)
            raise
        session.state = "active"
        session.watchdog = asyncio.get_running_loop().create_task(
            self._watch(session), name=f"swapwatch-whip-watchdog-{session.id}"
        )
        log.info("WHIP session %s from %s publishes %s (%s)", session.id, remote or "?", ", ".join(session.streams),
                 session.codec or "?")
        return session, answer

    async def end(self, session_id: str, reason: str) -> bool:
        """End a session (idempotent, waits for the teardown); False when no such session exists."""
        session = self.sessions.get(session_id)
        if session is None:
            return False
        await self._end(session, reason)
        return True

    async def close_all(self, reason: str = "the server is shutting down") -> None:
        """End every session (the app's on_shutdown)."""
        self._closing = True
        await asyncio.gather(*(self._end(s, reason) for s in list(self.sessions.values())), return_exceptions=True)
        for task in list(self._tasks):
            if not task.done():
                await asyncio.gather(task, return_exceptions=True)

    # -- negotiation ---------------------------------------------------------------------------------------

    async def _negotiate(self, session: WhipSession, offer: str) -> str:
        pc = session.pc
        # A video transceiver made before the offer is applied takes the offer's first video section, with
        # our codec order (aiortc would otherwise keep the offer's order, usually VP8 first).
        pc.addTransceiver("video", direction="recvonly").setCodecPreferences(self._codec_preferences())
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except OperationError as err:
            accepted = " and ".join(self.config.video_codecs)
            raise WhipError(400, f"no codec in common: {err} (this server receives {accepted} video)") from None
        except Exception as err:  # noqa: BLE001 - aiortc's SDP parser raises many kinds of errors on bad input
            raise WhipError(400, f"malformed SDP offer: {type(err).__name__}: {err}") from None
        videos: list[MediaStreamTrack] = []
        for transceiver in pc.getTransceivers():
            track = transceiver.receiver.track
            if transceiver.kind == "video" and track is not None and videos:
                # One stream per session: further video sections are refused (inactive), so an offer with
                # many of them cannot make many streams past the server's limit.
                transceiver.direction = "inactive"
                continue
            if transceiver.kind == "video" and track is not None:
                videos.append(track)
                if self.config.release_on_marker:
                    release_frames_on_marker(transceiver.receiver)
            elif transceiver.kind == "audio" and not self.config.accept_audio:
                transceiver.direction = "inactive"
            if track is not None and transceiver.kind != "video":
                session.blackhole.addTrack(track)
        if not videos:
            raise WhipError(400, "no video in the offer: its video sections do not send (direction recvonly/inactive)")
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)  # aiortc gathers every ICE candidate here (non-trickle)
        except (AttributeError, KeyError, IndexError, ValueError, TypeError) as err:
            # What aiortc raises answering an offer it accepted but cannot serve: the offer's fault, not ours.
            raise WhipError(400, f"malformed SDP offer: cannot answer it ({type(err).__name__})") from None
        local = pc.localDescription
        assert local is not None
        pc.on("connectionstatechange", lambda: self._on_connection_state(session))
        session.video_tracks = videos
        session.codec = answer_video_codec(local.sdp)
        return add_bitrate_hints(
            local.sdp,
            start_kbps=self.config.start_bitrate_kbps,
            min_kbps=self.config.min_bitrate_kbps,
            max_kbps=self.config.max_bitrate_kbps,
        )

    def _codec_preferences(self) -> list[RTCRtpCodecCapability]:
        video = RTCRtpReceiver.getCapabilities("video")
        assert video is not None  # None only for a kind other than audio and video
        capabilities = video.codecs
        preferred = [c for name in self.config.video_codecs for c in capabilities
                     if c.mimeType.lower() == f"video/{name.lower()}"]
        return preferred + [c for c in capabilities if c.mimeType.lower() == "video/rtx"]

    def _auto_name(self) -> str:
        used = self.names_in_use()
        while True:
            self._counter += 1
            name = f"{self.config.name_prefix}-{self._counter}"
            if name not in used:
                return name

    async def _start_streams(self, session: WhipSession, requested: str | None) -> None:
        name = requested or self._auto_name()
        for track in session.video_tracks:  # one: _negotiate keeps the first video section only
            source = WebRTCSource(
                track, name, queue_size=self.config.queue_size,
                on_close=functools.partial(self._closed_by_consumer, session),
            )
            source.add_listener(functools.partial(self._on_source_state, session))
            session.sources.append(source)
            source.start()
        await session.blackhole.start()
        for source in session.sources:
            try:
                registered = await self.on_source(source)
            except StreamRejected as err:
                raise WhipError(err.status, err.reason) from None
            except Exception as err:
                log.exception("WHIP session %s: the server could not take stream %s", session.id, source.name)
                raise WhipError(500, f"the server could not start stream {source.name!r}: {type(err).__name__}") from None
            session.streams.append(registered or source.name)

    # -- ending ----------------------------------------------------------------------------------------------

    def _spawn(self, session: WhipSession, reason: str) -> None:
        if session.ending is not None or session.state == "negotiating":
            return
        task = asyncio.ensure_future(self._end(session, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_connection_state(self, session: WhipSession) -> None:
        state = session.pc.connectionState
        if state == "failed":
            self._spawn(session, "the connection failed (ICE or DTLS)")
        elif state == "closed":
            self._spawn(session, "the peer closed the connection")

    def _on_source_state(self, session: WhipSession, change: StateChange) -> None:
        if change.new in TERMINAL_STATES and all(s.state in TERMINAL_STATES for s in session.sources):
            self._spawn(session, change.reason)

    async def _closed_by_consumer(self, session: WhipSession) -> None:
        # The monitor closed a source (stream removed through the API, or the monitor stopping): hang up.
        # When the session is already ending, this is its own teardown closing the source: nothing to do.
        if session.ending is None and session.state != "negotiating":
            self._spawn(session, "the monitor closed the stream")

    async def _watch(self, session: WhipSession) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(WATCH_TICK_S)
            now = time.monotonic()
            if not any(s.first_frame_at is not None for s in session.sources):
                waited = now - session.created_mono
                if waited > cfg.connect_timeout_s:
                    self._spawn(session, f"no video {waited:.0f} s after the answer (connect timeout)")
                    return
                continue
            if cfg.media_timeout_s is None:
                continue
            quiet = [s.stats().since_last_frame_s for s in session.sources]
            idle = min((q for q in quiet if q is not None), default=None)
            if idle is not None and idle > cfg.media_timeout_s:
                self._spawn(session, f"no video for {idle:.1f} s (media timeout): the peer is gone")
                return

    async def _end(self, session: WhipSession, reason: str) -> None:
        if session.ending is None:
            session.ending = asyncio.ensure_future(self._teardown(session, reason))
        await asyncio.shield(session.ending)

    async def _teardown(self, session: WhipSession, reason: str, notify: bool = True) -> None:
        if session.ending is None:
            session.ending = asyncio.get_running_loop().create_future()
            session.ending.set_result(None)  # marks it as ending for the callbacks below
        session.state = "ending"
        session.end_reason = reason
        watchdog = session.watchdog
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        for source in session.sources:
            with contextlib.suppress(Exception):
                await source.finish(reason)
        try:
            await session.pc.close()
        except Exception:
            log.exception("WHIP session %s: closing the peer connection failed", session.id)
        await session.blackhole.stop()
        self.sessions.pop(session.id, None)
        session.state = "ended"
        if notify:
            log.info("WHIP session %s ended: %s", session.id, reason)
            for name in session.streams:
                try:
                    await self.on_end(name)
                except Exception:
                    log.exception("WHIP session %s: on_end(%r) failed", session.id, name)


# --- routes -------------------------------------------------------------------------------------------------

WHIP_INGEST: web.AppKey[WhipIngest] = web.AppKey("swapwatch_whip_ingest", WhipIngest)
"""Where `add_whip_routes` leaves the WhipIngest in the app (the API lists `app[WHIP_INGEST].snapshot()`)."""

RESOURCE_ROUTE = "whip-resource"


def _error(err: WhipError) -> web.Response:
    return web.Response(status=err.status, text=err.reason + "\n", headers=err.headers)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without reading past it."""
    too_big = WhipError(413, f"body too large: the limit is {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > limit:
            raise too_big
    return bytes(data)


def _link_headers(config: WhipConfig) -> list[tuple[str, str]]:
    if not config.advertise_ice_servers:
        return []
    links = []
    for server in config.ice_servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                username = server.username.replace('"', "")
                credential = server.credential.replace('"', "")
                link += f'; username="{username}"; credential="{credential}"; credential-type="password"'
            links.append(("Link", link))
    return links


def add_whip_routes(app: web.Application, *, on_source: OnSource, on_end: OnEnd, config: WhipConfig) -> WhipIngest:
    """Add the WHIP and /offer routes to `app`; the WhipIngest is returned and kept in `app[WHIP_INGEST]`.

    `on_source(source)` gets each published video track as a started `WebRTCSource` and returns the
    stream name it registered (it may raise `StreamRejected`); `on_end(name)` is called when that
    stream's session has ended. `app.on_shutdown` ends every session.
    """
    ingest = WhipIngest(config, on_source, on_end)
    app[WHIP_INGEST] = ingest

    def location(request: web.Request, session: WhipSession) -> str:
        return str(request.app.router[RESOURCE_ROUTE].url_for(session=session.id))

    async def post_whip(request: web.Request) -> web.Response:
        if request.content_type != SDP_TYPE:
            return _error(WhipError(415, f"Content-Type must be {SDP_TYPE}, got {request.content_type or 'none'}",
                                    {"Accept-Post": SDP_TYPE}))
        try:
            body = await _read_limited(request, config.max_offer_bytes)
            try:
                offer = body.decode("utf-8")
            except UnicodeDecodeError:
                raise WhipError(400, "malformed SDP offer: not UTF-8 text") from None
            session, answer = await ingest.publish(offer, request.match_info.get("stream"), request.remote)
        except WhipError as err:
            return _error(err)
        headers = [("Location", location(request, session)), ("ETag", session.etag), *_link_headers(config)]
        response = web.Response(status=201, body=answer.encode(), content_type=SDP_TYPE)
        for key, value in headers:
            response.headers.add(key, value)
        return response

    async def options_whip(request: web.Request) -> web.Response:
        response = web.Response(status=204, headers={"Allow": "OPTIONS, POST", "Accept-Post": SDP_TYPE})
        for key, value in _link_headers(config):
            response.headers.add(key, value)
        return response

    async def delete_session(request: web.Request) -> web.Response:
        if await ingest.end(request.match_info["session"], "the publisher deleted the session (DELETE)"):
            return web.Response(status=200, text="session ended\n")
        return _error(WhipError(404, "no such WHIP session (it ended, or never existed)"))

    async def patch_session(request: web.Request) -> web.Response:
        if request.match_info["session"] not in ingest.sessions:
            return _error(WhipError(404, "no such WHIP session (it ended, or never existed)"))
        return _error(WhipError(405, "trickle ICE and ICE restarts are not supported: publish a new session",
                                {"Allow": "DELETE"}))

    async def post_offer(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _error(WhipError(415, f"Content-Type must be application/json, got {request.content_type or 'none'}"))
        try:
            body = await _read_limited(request, config.max_offer_bytes)
            try:
                data = loads_request_json(body)
            except JsonBodyError as err:
                reason = f"body is not JSON: {err.parse_error}" if err.parse_error else f"body: {err}"
                raise WhipError(400, reason) from None
            if not isinstance(data, dict) or not isinstance(data.get("sdp"), str):
                raise WhipError(400, 'body must be a JSON object {"sdp": "...", "type": "offer", "stream": "name"}')
            if data.get("type", "offer") != "offer":
                raise WhipError(400, f"type must be 'offer', got {data.get('type')!r}")
            unknown = sorted(set(data) - {"sdp", "type", "stream"})
            if unknown:
                raise WhipError(400, f"unknown field(s) {', '.join(unknown)}: expected sdp, type, stream")
            stream = data.get("stream")
            if stream is not None and not isinstance(stream, str):
                raise WhipError(400, "stream must be a string")
            session, answer = await ingest.publish(data["sdp"], stream, request.remote)
        except WhipError as err:
            return _error(err)
        where = location(request, session)
        return web.json_response(
            {"sdp": answer, "type": "answer", "session": session.id, "location": where, "streams": session.streams},
            headers={"Location": where},
        )

    app.router.add_route("POST", "/whip", post_whip, name="whip")
    app.router.add_route("OPTIONS", "/whip", options_whip)
    app.router.add_route("DELETE", "/whip/resource/{session}", delete_session, name=RESOURCE_ROUTE)
    app.router.add_route("PATCH", "/whip/resource/{session}", patch_session)
    app.router.add_route("POST", "/whip/{stream}", post_whip, name="whip-stream")
    app.router.add_route("OPTIONS", "/whip/{stream}", options_whip)
    app.router.add_route("POST", "/offer", post_offer, name="offer")

    async def shutdown(_: web.Application) -> None:
        await ingest.close_all()

    app.on_shutdown.append(shutdown)
    return ingest
