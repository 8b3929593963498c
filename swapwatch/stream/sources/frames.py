"""The Frame every stage shares, and the bounded queue that hands frames from a decoding thread to asyncio.

Why a thread and this queue, rather than `asyncio.Queue` fed by `loop.call_soon_threadsafe(q.put_nowait, f)`:

- PyAV's decode blocks (network reads, demuxing, decoding all hold the calling thread), so it runs in
  a thread of its own and the event loop stays free for the other sources and the server.
- With `call_soon_threadsafe` per frame, each pending callback holds a frame. If the loop is busy
  (a slow stage that forgot to yield, a GC pause), callbacks pile up in the loop's ready queue with
  no bound at all: a `latest` queue of size 1 can still hold seconds of 720p frames. Here the frames
  live in a lock-protected deque that never exceeds `maxsize`; only a wake-up (at most one pending at
  a time) crosses into the loop.
- The `all` policy needs the *producer* to wait when the queue is full. A thread can block on a
  `threading.Condition`; it cannot await an asyncio.Queue without a round trip through the loop for
  every frame.

The cost is one lock per frame on each side, which is nothing next to decoding a frame.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

FramePolicy = Literal["latest", "all"]
"""`latest`: newest frame wins, replaced frames are dropped and counted (live). `all`: never drop (recorded)."""


@dataclass(eq=False, slots=True)
class Frame:
    """One decoded video frame, as every stage after the source sees it.

    `index` counts the frames the source decoded (over all its reconnections), so gaps in the indices a
    consumer sees are the frames the `latest` policy dropped. `pts` is the presentation time in seconds
    on the stream's own clock: it restarts after a reconnection, and is None when the stream does not
    give one (the first RTSP frame usually has none, FACTS.md). `received` (time.monotonic()) is when
    the frame was handed over (after pacing, for a paced file): the start of glass-to-score latency.
    `decode_ms` is the time the source spent decoding it (and converting it to BGR), when it measures
    that (PyAV sources do); the monitor reports it as the `decode` stage.
    """

    stream: str
    index: int
    image: np.ndarray
    pts: float | None
    received: float
    wall: float
    decode_ms: float | None = None

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])


class FrameQueue:
    """A bounded frame queue: any thread puts, one asyncio consumer gets.

    Created inside a running event loop (it binds to it). `put` is called from the decoding thread;
    `get` is awaited on the loop. `close` (from any thread) ends the queue: the consumer still gets the
    frames already in it, then None.
    """

    def __init__(self, policy: FramePolicy, maxsize: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if policy not in ("latest", "all"):
            raise ValueError(f"policy must be 'latest' or 'all', got {policy!r}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.policy: FramePolicy = policy
        self.maxsize = maxsize
        self._loop = loop or asyncio.get_running_loop()
        self._cond = threading.Condition()
        self._items: deque[Frame] = deque()
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._wake_pending = False
        self._dropped = 0
        self._put = 0

    @property
    def dropped(self) -> int:
        """Frames replaced by newer ones before the consumer took them (`latest` only; `all` never drops)."""
        return self._dropped

    @property
    def accepted(self) -> int:
        """Frames put into the queue (delivered + dropped + still queued)."""
        return self._put

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def qsize(self) -> int:
        """Frames waiting for the consumer now."""
        with self._cond:
            return len(self._items)

    def put(
        self,
        frame: Frame,
        cancel: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
        tick_s: float = 0.1,
    ) -> bool:
        """Hand a frame to the consumer; returns False (frame not queued) once closed or `cancel` is set.

        `latest`: never blocks; when full, the oldest queued frames are dropped (and counted) to make room.
        `all`: blocks while the queue is full, waking every `tick_s` to check `cancel` and to call
        `on_wait` (the source uses it to tell its stall watchdog that waiting for the consumer is not a
        stall). Call from a thread other than the loop's for `all`, or it would block the consumer.
        """
        with self._cond:
            if self._closed or (cancel is not None and cancel.is_set()):
                return False
            if self.policy == "latest":
                while len(self._items) >= self.maxsize:
                    self._items.popleft()
                    self._dropped += 1
            else:
                while len(self._items) >= self.maxsize:
                    self._cond.wait(tick_s)
                    if on_wait is not None:
                        on_wait()
                    if self._closed or (cancel is not None and cancel.is_set()):
                        return False
            self._items.append(frame)
            self._put += 1
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._schedule_wake()
        return True

    async def get(self) -> Frame | None:
        """The next frame, waiting for one; None once the queue is closed and drained."""
        while True:
            with self._cond:
                if self._items:
                    frame = self._items.popleft()
                    self._cond.notify_all()
                    return frame
                if self._closed:
                    return None
                waiter = self._loop.create_future()
                self._waiter = waiter
            try:
                await waiter
            finally:
                with self._cond:
                    if self._waiter is waiter:
                        self._waiter = None

    def close(self) -> None:
        """No more frames: wake a blocked producer (its put returns False) and the consumer."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            self._wake_pending = True
        self._schedule_wake()

    def _schedule_wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            # The loop is closed: nobody is left to consume, so there is nobody to wake.
            pass

    def _wake(self) -> None:
        with self._cond:
            self._wake_pending = False
            waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
