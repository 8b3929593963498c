"""A WHIP (RFC 9725) publisher built on aiortc: play a video file into a WebRTC server as if from a camera.

`FileTrack` is an aiortc video track that plays a file at its native frame rate (optionally looping,
scaled, and passed through a `transform(image, t_send)` hook that can draw on each frame just before
it goes to the encoder; the latency benchmark stamps the send time into the picture with it).
`publish(url, track, token)` POSTs the SDP offer, applies the answer and returns a `WhipSession`
whose `close()` sends the DELETE. `swapwatch publish` (publish_command.py) wraps both.

Choices, and why:

- **Decoding happens in a thread, a few frames ahead.** aiortc calls `recv()` on the event loop for
  every frame; decoding and scaling a 720p frame there (1-3 ms) would delay the network work of every
  other connection on the loop, and aiortc's own guidance is to keep `recv()` light. A daemon thread
  decodes into at most `frames_ahead` slots (a semaphore bounds memory); `recv()` only waits until
  the frame is due, runs the transform and sets its timestamp.
- **Pacing by the file's own timestamps** (`frame.time`), not by a nominal 30 fps, so variable-rate
  files play at their real speed. A frame that comes more than `LATE_RESET_S` late (the loop was
  busy, or the encoder is slower than real time) restarts the clock from that frame instead of
  sending a burst to catch up: a live camera does not send the frames it missed either.
- **The RTP clock is the media time** (90 kHz, from 0, continuing across loops), so the receiver's
  `pts` is the position in the played clip (plus one clip length per loop).
- **`t_send` is `time.time()` taken right after the frame is due**, just before the transform, so a
  stamp drawn with it measures glass-to-X latency from the moment the frame leaves the "camera".
  The transform runs on the event loop: keep it to a few milliseconds.
- **No ICE servers by default**: like the server, the client uses host candidates only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from swapwatch.errors import MediaError, SwapwatchError
from swapwatch.media.video import open_video

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
LATE_RESET_S = 0.1
"""A frame due more than this long ago restarts the pacing clock (no catch-up bursts)."""

Transform = Callable[[np.ndarray, float], np.ndarray]
"""`transform(image_bgr, t_send) -> image_bgr`: called on the event loop for each frame as it is sent."""


class WhipClientError(SwapwatchError):
    """The WHIP server refused the offer or could not be reached; names the URL (and the HTTP status)."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class _Item:
    payload: av.VideoFrame | np.ndarray
    t: float


class FileTrack(VideoStreamTrack):
    """A video file played as a live camera track (see the module docstring).

    Raises MediaError at construction when the file is missing or has no video. `size=(w, h)` scales
    every frame; `loop=True` starts over at the end (forever), otherwise the track ends (`recv` raises
    MediaStreamError, aiortc stops sending) after the last frame. Counters: `frames_sent`, `loops`,
    `resets` (pacing restarts); `error` holds what stopped the decoder early, if anything.
    """

    kind = "video"

    def __init__(
        self,
        path: str | Path,
        *,
        loop: bool = False,
        size: tuple[int, int] | None = None,
        transform: Transform | None = None,
        frames_ahead: int = 3,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.loop = loop
        self.transform = transform
        self.frames_sent = 0
        self.loops = 0
        self.resets = 0
        self.error: MediaError | None = None
        if size is not None and (size[0] <= 0 or size[1] <= 0 or size[0] % 2 or size[1] % 2):
            raise ValueError(f"size: width and height must be positive and even (yuv420p), got {size[0]}x{size[1]}")
        with open_video(self.path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self.fps: float = float(rate) if rate else 30.0
            self.source_size: tuple[int, int] = (stream.codec_context.width, stream.codec_context.height)
        self.size: tuple[int, int] = size or self.source_size
        self._slots = threading.Semaphore(frames_ahead)
        self._halt = threading.Event()
        self._queue: asyncio.Queue[_Item | MediaError | None] | None = None
        self._thread: threading.Thread | None = None
        self._origin: float | None = None

    async def recv(self) -> av.VideoFrame:
        """The next frame, when it is due; MediaStreamError at the end (or once stopped)."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._queue is None:
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._decode, args=(loop, self._queue), name=f"swapwatch-filetrack-{self.path.name}", daemon=True
            )
            self._thread.start()
        item = await self._queue.get()
        self._slots.release()
        if not isinstance(item, _Item):
            if isinstance(item, MediaError):
                self.error = item
                log.error("%s", item)
            self.stop()
            raise MediaStreamError
        now = time.monotonic()
        if self._origin is None:
            self._origin = now - item.t
        due = self._origin + item.t
        if now - due > LATE_RESET_S:
            self._origin = now - item.t
            self.resets += 1
        elif due > now:
            await asyncio.sleep(due - now)
        payload = item.payload
        if self.transform is not None:
            assert isinstance(payload, np.ndarray)
            image = self.transform(payload, time.time())
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        else:
            assert isinstance(payload, av.VideoFrame)
            frame = payload
        frame.pts = round(item.t * VIDEO_CLOCK)
        frame.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        return frame

    def stop(self) -> None:
        """End the track and its decoding thread."""
        super().stop()
        self._halt.set()

    # -- the decoding thread ------------------------------------------------------------------------------

    def _decode(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        def hand_over(item: _Item | MediaError | None) -> bool:
            while not self._slots.acquire(timeout=0.1):
                if self._halt.is_set():
                    return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                return False
            return True

        offset = 0.0
        interval = 1.0 / self.fps
        try:
            while not self._halt.is_set():
                count, last = self._play_once(hand_over, offset, interval)
                if count == 0 or last is None:
                    if offset == 0.0 and not self._halt.is_set():
                        raise MediaError(self.path, "no frame could be decoded")
                    break
                if not self.loop or self._halt.is_set():
                    break
                offset = last + interval
                self.loops += 1
        except MediaError as err:
            hand_over(err)
            return
        except Exception as err:  # noqa: BLE001 - any decoder failure ends the track with a named error
            hand_over(MediaError(self.path, f"decoding failed ({getattr(err, 'strerror', None) or err})"))
            return
        hand_over(None)

    def _play_once(self, hand_over: Callable[[Any], bool], offset: float, interval: float) -> tuple[int, float | None]:
        """Decode the file once, handing frames over: how many, and the media time of the last one."""
        # None keeps the decoded size (PyAV's reformat default)
        width, height = self.size if self.size != self.source_size else (None, None)
        count = 0
        last: float | None = None
        first: float | None = None
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # a file ahead of its pacing: throughput matters, not decoder delay
            for index, frame in enumerate(container.decode(stream)):
                if self._halt.is_set():
                    break
                t = frame.time if frame.time is not None else index * interval
                first = t if first is None else first
                rel = offset + (t - first)
                if self.transform is not None:
                    payload: Any = frame.to_ndarray(format="bgr24", width=width, height=height)
                else:
                    payload = frame.reformat(format="yuv420p", width=width, height=height)
                if not hand_over(_Item(payload, rel)):
                    break
                count += 1
                last = rel
        return count, last


# --- publishing ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class WhipSession:
    """A published session: the peer connection and the server's session resource (`location`)."""

    url: str
    location: str
    pc: RTCPeerConnection
    track: Any
    token: str | None = field(default=None, repr=False)
    etag: str | None = None
    answer: str = field(default="", repr=False)
    closed: bool = False

    async def wait_connected(self, timeout: float = 15.0) -> None:
        """Wait until ICE and DTLS are up; WhipClientError when the connection fails or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState in ("failed", "closed"):
                raise WhipClientError(self.url, f"the WebRTC connection {self.pc.connectionState}")
            if time.monotonic() > deadline:
                raise WhipClientError(self.url, f"the WebRTC connection did not come up in {timeout:g} s "
                                                f"(state {self.pc.connectionState})")
            await asyncio.sleep(0.05)

    async def wait_ended(self) -> str:
        """Wait until the track ends (the file's end) or the connection fails or closes; returns which."""
        while True:
            if self.track.readyState != "live":
                return "track ended"
            if self.pc.connectionState in ("failed", "closed"):
                return f"connection {self.pc.connectionState}"
            await asyncio.sleep(0.1)

    async def close(self, timeout: float = 5.0) -> int | None:
        """DELETE the session resource and close the peer connection (idempotent).

        Returns the DELETE's HTTP status (200; 404 when the server had already ended the session), or
        None when the server could not be reached: the connection is closed locally either way.
        """
        if self.closed:
            return None
        self.closed = True
        status: int | None = None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http, \
                    http.delete(self.location, headers=_auth(self.token)) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("%s: DELETE failed (%s); closing the connection anyway", self.location, type(err).__name__)
        self.track.stop()
        await self.pc.close()
        return status


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refusal(status: int, body: str) -> str:
    detail = body.strip().splitlines()[0][:300] if body.strip() else ""
    hint = {
        401: "unauthorized: pass the server's token (--token or SWAPWATCH_TOKEN)",
        403: "forbidden: the token is not allowed to publish",
        404: "no WHIP endpoint at this URL (the server's is /whip or /whip/NAME)",
        409: "a stream of this name is already being published",
        413: "the offer is larger than the server accepts",
        503: "the server is full or shutting down; try again later",
    }.get(status, "the server refused the offer")
    return f"{hint} (HTTP {status}{': ' + detail if detail else ''})"


async def publish(
    url: str,
    track: MediaStreamTrack,
    token: str | None = None,
    *,
    codec: str | None = None,
    ice_servers: list[RTCIceServer] | None = None,
    timeout: float = 15.0,
) -> WhipSession:
    """Publish `track` to the WHIP endpoint at `url`: offer, answer, and the session's `Location`.

    `codec` ('vp8' or 'h264') restricts the offer to one codec; None offers aiortc's defaults (VP8
    first). Raises WhipClientError (HTTP refusal, unreachable server, no Location) after closing the
    half-built connection. The token goes in `Authorization: Bearer` and is never logged.
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
    try:
        transceiver = pc.addTransceiver(track, direction="sendonly")
        if codec is not None:
            wanted = f"video/{codec.lower()}"
            codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == wanted]
            if not codecs:
                raise ValueError(f"codec: {codec!r} is not one aiortc can send (vp8, h264)")
            transceiver.setCodecPreferences(codecs)
        await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate: no trickle
        offer = pc.localDescription
        assert offer is not None
        headers = {"Content-Type": "application/sdp", **_auth(token)}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http, \
                    http.post(url, data=offer.sdp.encode(), headers=headers) as response:
                body = await response.text()
                if response.status != 201:
                    raise WhipClientError(url, _refusal(response.status, body), response.status)
                location = response.headers.get("Location")
                if not location:
                    raise WhipClientError(url, "the server answered 201 without a Location header")
                etag = response.headers.get("ETag")
        except aiohttp.ClientConnectorError as err:
            raise WhipClientError(url, f"cannot connect ({err.os_error.strerror or err})") from None
        except (aiohttp.ClientError, TimeoutError) as err:
            raise WhipClientError(url, f"request failed ({type(err).__name__}: {err})") from None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    except BaseException:
        with contextlib.suppress(Exception):
            await pc.close()
        raise
    return WhipSession(url=url, location=urljoin(url, location), pc=pc, track=track, token=token, etag=etag,
                       answer=body)
