"""A video track a WebRTC peer publishes (aiortc), as a `Source` the monitor reads like any other.

The other sources pull: a thread per connection decodes and reconnects. Here the peer pushes: aiortc
decodes RTP in its own decoder thread and hands `av.VideoFrame`s to the track's queue on the event
loop, so this source needs no thread and no reconnecting supervisor. Its one task (`_supervise`, the
pump, started by `Source.start`) awaits `track.recv()`,
converts each frame to BGR and puts it into the bounded `FrameQueue` with the `latest` policy.

Choices, and why:

- **The pump reads every frame as soon as it arrives, whatever the consumer does.** aiortc's track
  queue is unbounded (one pending frame per decoded frame), so a track read only as fast as the
  monitor scores would hold an ever-growing backlog of stale frames, and a track nobody reads leaks
  memory (FACTS.md). The pump empties it at once; the `latest` queue between pump and consumer keeps
  the newest frame and counts the ones it replaces as `dropped`.
- **The BGR conversion runs on the event loop.** Measured here: a 1280x720 yuv420p frame converts in
  ~0.45 ms (`VideoFrame.to_ndarray(format="bgr24")`, libswscale), ~1.4 % of one core at 30 fps, less
  than a hop to a worker thread and back would cost in latency. A 1080p60 peer would be ~4x that.
- **`received` is when the frame came out of aiortc's decoder into the pump**, before conversion: the
  start of glass-to-score latency on the server side. `pts` is `frame.pts * frame.time_base` (aiortc
  maps RTP timestamps to a 90 kHz clock starting near 0), so it is the sender's media time.
- **No reconnects, no stall watchdog.** The peer decides when the stream ends: when its track ends
  (RTCP BYE, or the peer connection closing) the source goes `ended`, never `failed` or
  `reconnecting`; a peer that comes back publishes a new session. A peer that vanishes without
  hanging up is noticed by the WHIP session (its media timeout, or ICE consent failing), which ends the
  source with that reason (`finish`).
- **A frame is decoded as soon as its last packet arrives** (`release_frames_on_marker`). aiortc's jitter
  buffer hands a video frame to the decoder only when the first packet of the *next* frame arrives, one
  frame interval late (33 ms at 30 fps, a fifth of a 150 ms glass-to-score budget). RTP marks the last
  packet of each video frame (the marker bit: RFC 7741 for VP8, RFC 6184 for H.264), so a buffer that
  also releases a complete run of packets ending in a marked one loses nothing and saves that interval.
  It replaces a private attribute of aiortc's receiver: when a future aiortc renames it, the swap is
  skipped (logged) and frames simply arrive one interval later.
- **Closing the source hangs up.** `aclose()` (the monitor removing the stream) calls `on_close`, so
  the WHIP session closes the peer connection too: a source the monitor gave up on must not keep a
  track alive that nobody reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from swapwatch.media.video import to_bgr
from swapwatch.stream.sources.base import TERMINAL_STATES, Source
from swapwatch.stream.sources.config import SourceConfig
from swapwatch.stream.sources.errors import SourceError
from swapwatch.stream.sources.frames import Frame

if TYPE_CHECKING:
    from swapwatch.stream.sources.reconnect import Session

log = logging.getLogger(__name__)

WEBRTC_URL_SCHEME = "webrtc"
"""Sources published over WebRTC are shown as `webrtc://<stream name>` (there is no URL to open)."""


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, which also releases a frame as soon as its marked last packet arrives.

    aiortc's `_remove_frame` completes a frame when a packet of the next timestamp follows it; this adds
    the other way a frame is known complete: a gap-free run of packets of one timestamp, from the
    buffer's origin up to a packet with the RTP marker bit. Missing packets still hold the frame back
    (NACK retransmissions fill them), exactly as before.
    """

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        frame = super()._remove_frame(sequence_number)
        if frame is not None or self._origin is None:
            return frame
        packets = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None or (timestamp is not None and packet.timestamp != timestamp):
                return None
            timestamp = packet.timestamp
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)  # type: ignore[attr-defined]
        return None


_RECEIVER_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


def release_frames_on_marker(receiver: object) -> bool:
    """Give an aiortc video receiver a `MarkerJitterBuffer` (before any packet arrives); False if it cannot.

    See the module docstring: it saves one frame interval of latency on every frame.
    """
    current = getattr(receiver, _RECEIVER_JITTER_BUFFER, None)
    if not isinstance(current, JitterBuffer) or getattr(current, "_is_video", False) is not True:
        log.warning("aiortc's receiver has no video jitter buffer where expected: frames keep one interval of delay")
        return False
    setattr(receiver, _RECEIVER_JITTER_BUFFER, MarkerJitterBuffer(capacity=current.capacity, is_video=True))
    return True


def webrtc_config(name: str, queue_size: int = 1) -> SourceConfig:
    """The SourceConfig of a published track: kind `webrtc`, live, `latest` policy, no watchdog.

    Built with `model_construct` because the `webrtc` kind is refused in user configs (a WebRTC stream
    is published to the server, not opened from a URL); every field here is fixed by this module.
    """
    return SourceConfig.model_construct(
        url=f"{WEBRTC_URL_SCHEME}://{name}",
        name=name,
        kind="webrtc",
        live=True,
        policy="latest",
        queue_size=queue_size,
        stall_timeout_s=None,
    )


class WebRTCSource(Source):
    """Frames of one remote video track (an aiortc `MediaStreamTrack` of kind video).

    States: `connecting` until the first frame, then `live`, then `ended` when the track ends, when
    `finish(reason)` is called (the WHIP session ended) or on `aclose()`. `on_close` (async, optional)
    runs once when the source is closed, so its owner can hang up the peer connection.
    """

    def __init__(
        self,
        track: MediaStreamTrack,
        name: str,
        *,
        queue_size: int = 1,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if track.kind != "video":
            raise ValueError(f"{name}: a WebRTCSource reads a video track, got a {track.kind} track")
        super().__init__(webrtc_config(name, queue_size))
        self.track = track
        self._on_close = on_close
        self.first_frame_at: float | None = None
        self.frame_size: tuple[int, int] | None = None
        """(width, height) of the last frame: the peer may change it mid-stream (bandwidth, CPU)."""

    def _opening_reason(self) -> str:
        return "waiting for the peer's first video frame"

    async def finish(self, reason: str) -> None:
        """End the source with `reason` (the peer left, the session was deleted, no media) and close it."""
        self._set_state("ended", reason)
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading, end the source, and let the owner hang up (`on_close`). Idempotent."""
        if self._closed:
            return
        await super().aclose()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            try:
                await callback()
            except Exception:
                log.exception("%s: closing the peer connection failed", self.name)

    def _run_session(self, session: Session) -> None:
        # The peer pushes frames into the pump (`_supervise`) on the event loop; there is no connection thread to run.
        raise NotImplementedError("WebRTCSource has no session thread: frames come from the track")

    async def _supervise(self) -> None:
        # Replaces the base class's connect/reconnect supervisor: this task is the pump.
        queue = self._queue
        assert queue is not None
        while True:
            try:
                vframe = await self.track.recv()
            except MediaStreamError:
                self._set_state("ended", "the peer stopped sending video (track ended)")
                return
            if not isinstance(vframe, VideoFrame):  # a video track's recv() yields decoded video frames
                why = f"the track yielded a {type(vframe).__name__}, not a video frame"
                self._set_state("failed", why, SourceError(self.url, why))
                return
            received, wall = time.monotonic(), time.time()
            if self._state == "connecting":
                self.first_frame_at = received
                self._set_state("live", "first frame received")
            elif self._state in TERMINAL_STATES:
                return
            image = to_bgr(vframe)
            self.frame_size = (vframe.width, vframe.height)
            pts = float(vframe.pts * vframe.time_base) if vframe.pts is not None and vframe.time_base else None
            with self._index_lock:
                index = self._next_index
                self._next_index += 1
            self._recent.append(received)
            queue.put(Frame(stream=self.name, index=index, image=image, pts=pts, received=received, wall=wall))
