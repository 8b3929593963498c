"""A video track a WebRTC peer publishes (aiortc), as a `Source` the monitor reads like any other.

The other sources pull: a thread per connection decodes and reconnects. Here the peer pushes: aiortc
decodes RTP in its own decoder thread and hands `av.VideoFrame`s to the track's queue on the event
loop, so this source needs no thread and no supervisor. One task (`_pump`) awaits `track.recv()`,
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
- **Closing the source hangs up.** `aclose()` (the monitor removing the stream) calls `on_close`, so
  the WHIP session closes the peer connection too: a source the monitor gave up on must not keep a
  track alive that nobody reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from swapwatch.stream.sources.base import TERMINAL_STATES, Source
from swapwatch.stream.sources.config import SourceConfig
from swapwatch.stream.sources.frames import Frame, FrameQueue
from swapwatch.stream.sources.pyav_source import to_bgr

if TYPE_CHECKING:
    from swapwatch.stream.sources.reconnect import Session

log = logging.getLogger(__name__)

WEBRTC_URL_SCHEME = "webrtc"
"""Sources published over WebRTC are shown as `webrtc://<stream name>` (there is no URL to open)."""


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

    def start(self) -> None:
        """Start pumping frames (idempotent). Call it as soon as the track exists, so none piles up unread."""
        if self._task is not None:
            return
        if self._closed:
            raise RuntimeError(f"{self.name}: source is closed")
        loop = asyncio.get_running_loop()
        self._queue = FrameQueue(self.policy, self.config.resolved_queue_size, loop)
        self._emit_change(None, "connecting", "waiting for the peer's first video frame")
        self._task = loop.create_task(self._pump(), name=f"swapwatch-webrtc-{self.name}")

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
        # The peer pushes frames into `_pump` on the event loop; there is no connection thread to run.
        raise NotImplementedError("WebRTCSource has no session thread: frames come from the track")

    async def _pump(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            try:
                vframe = await self.track.recv()
            except MediaStreamError:
                self._set_state("ended", "the peer stopped sending video (track ended)")
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
