"""The Source interface every input implements, its states and statistics, and (from errors.py) its errors.

A source owns one decoding thread per connection attempt (a `Session`, see reconnect.py), a bounded
`FrameQueue` into the event loop, and a supervisor task that watches the session, decides what an
end means (recorded: the end; live: a loss) and reconnects with backoff. Subclasses implement only
`_run_session`: open, decode, hand frames over with `_emit`, return at end-of-stream, raise a
`SourceError` on failure. Each source is self-contained, so one source failing never touches another.

States::

    connecting --first frame--> live --end of file--> ended          (recorded)
         |                        |---loss-----------> reconnecting   (live: error, EOF, stall)
         +--failure----> reconnecting --first frame--> live
                               +--max_attempts exceeded--> failed
    any --aclose()--> ended

Listeners get a `StateChange` (with the reason) on the event-loop thread, in order with the frames,
so the pipeline can emit "stream" events and metrics from it directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Self

import numpy as np

from swapwatch.stream.redact import log_text
from swapwatch.stream.sources.config import SourceConfig
from swapwatch.stream.sources.errors import (
    SourceAuthError,
    SourceCorruptError,
    SourceEndedError,
    SourceError,
    SourceNotFoundError,
    SourceStalledError,
    SourceTimeoutError,
    SourceTruncatedError,
    SourceUnreachableError,
)
from swapwatch.stream.sources.frames import Frame, FramePolicy, FrameQueue
from swapwatch.stream.sources.kinds import SourceKind
from swapwatch.stream.sources.reconnect import Backoff, Session, supervise

# The errors are defined in errors.py, so that reconnect.py can raise them without importing this module,
# and re-exported here, where the sources and their callers import them from.
__all__ = [
    "SOURCE_STATE_LOG_FLAG",
    "TERMINAL_STATES",
    "Source",
    "SourceAuthError",
    "SourceCorruptError",
    "SourceEndedError",
    "SourceError",
    "SourceNotFoundError",
    "SourceStalledError",
    "SourceState",
    "SourceStats",
    "SourceTimeoutError",
    "SourceTruncatedError",
    "SourceUnreachableError",
    "StateChange",
    "StateListener",
]

log = logging.getLogger(__name__)

SOURCE_STATE_LOG_FLAG = "swapwatch_source_state"
"""Set (true) on the log record of every state change, so a front end that shows the changes itself (the
plain console of `watch`) can leave these records out."""

SourceState = Literal["connecting", "live", "reconnecting", "failed", "ended"]
"""Where a source is: opening, delivering frames, waiting to retry after a loss, given up, or finished."""

TERMINAL_STATES: frozenset[str] = frozenset({"failed", "ended"})
"""States a source never leaves."""


# --- states and statistics ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state transition of a source, with why it happened.

    `attempt` is the number of consecutive failed connection attempts so far (0 once live);
    `retry_in_s` is the backoff delay when the new state is `reconnecting`.
    """

    stream: str
    url: str
    old: SourceState | None
    new: SourceState
    reason: str
    error: SourceError | None = None
    attempt: int = 0
    retry_in_s: float | None = None
    wall: float = field(default_factory=time.time)
    monotonic: float = field(default_factory=time.monotonic)

    def to_event(self) -> dict[str, Any]:
        """A JSON-ready "stream" event: type, time (ISO 8601), stream, url (masked), state, previous, reason..."""
        return {
            "type": "stream",
            "time": datetime.fromtimestamp(self.wall, tz=UTC).isoformat(),
            "stream": self.stream,
            "url": self.url,
            "state": self.new,
            "previous": self.old,
            "reason": self.reason,
            "error": type(self.error).__name__ if self.error else None,
            "attempt": self.attempt,
            "retry_in_s": self.retry_in_s,
        }


@dataclass(frozen=True, slots=True)
class SourceStats:
    """A snapshot of a source's counters (for metrics and the API).

    frames = delivered + dropped + queued. `reconnects` counts successful reconnections (back to live
    after a loss), `losses` the connections lost after being live, `attempts` every connection attempt
    after the first one.
    """

    name: str
    url: str
    kind: SourceKind
    state: SourceState
    policy: FramePolicy
    frames: int
    delivered: int
    dropped: int
    queued: int
    reconnects: int
    losses: int
    attempts: int
    decode_errors: int
    fps: float
    last_error: str | None
    since_last_frame_s: float | None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict."""
        return asdict(self)


StateListener = Callable[[StateChange], None]


# --- the interface ----------------------------------------------------------------------------------------


class Source(ABC):
    """A video input that delivers `Frame`s to one asyncio consumer, reconnecting when it is live.

    Use::

        source = open_source(SourceConfig(url="rtsp://cam/live"))
        source.add_listener(lambda change: print(change.to_event()))
        async for frame in source.frames():   # starts the source; ends at "ended", raises at "failed"
            ...
        await source.aclose()

    `frames()` can be iterated by one consumer, once. When the source fails, the iteration first
    yields the frames already queued, then raises the `SourceError` that made it fail.
    """

    FPS_WINDOW_S = 2.0
    """Frames received in this many recent seconds make up `stats().fps`."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.name: str = config.resolved_name
        self.url: str = config.masked_url
        self.kind: SourceKind = config.resolved_kind
        self.live: bool = config.is_live
        self.policy: FramePolicy = config.resolved_policy
        self._state: SourceState = "connecting"
        self._listeners: list[StateListener] = []
        self.history: deque[StateChange] = deque(maxlen=256)
        self._queue: FrameQueue | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: Session | None = None
        self._closed = False
        self._consumed = False
        self._final_error: SourceError | None = None
        self._next_index = 0
        self._index_lock = threading.Lock()
        self._delivered = 0
        self._reconnects = 0
        self._losses = 0
        self._attempts = 0
        self._decode_errors = 0
        self._last_error: str | None = None
        self._recent: deque[float] = deque(maxlen=512)

    # -- public API -----------------------------------------------------------------------------------

    @property
    def state(self) -> SourceState:
        """The current state (see the module docstring)."""
        return self._state

    @property
    def started(self) -> bool:
        """True once `start` (or `frames`) ran."""
        return self._task is not None

    @property
    def reader_alive(self) -> bool:
        """True while the reader thread of the current connection runs (it may outlive `aclose` until a
        network open or read blocked in FFmpeg reaches its timeout)."""
        session = self._session
        return session is not None and session.alive

    def add_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(change)` on every state change (on the loop thread); returns a function that removes it.

        A listener that raises is logged and kept; it cannot break the source.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def start(self) -> None:
        """Start reading (idempotent). Needs a running event loop; `frames()` calls it for you."""
        if self._task is not None:
            return
        if self._closed:
            raise RuntimeError(f"{self.name}: source is closed")
        loop = asyncio.get_running_loop()
        self._queue = FrameQueue(self.policy, self.config.resolved_queue_size, loop)
        self._emit_change(None, "connecting", self._opening_reason())
        self._task = loop.create_task(self._supervise(), name=f"swapwatch-source-{self.name}")

    def _opening_reason(self) -> str:
        """The reason of the first `connecting` state change."""
        return f"opening {self.url}"

    async def frames(self) -> AsyncIterator[Frame]:
        """The frames, in order, until the source ends (or is closed); raises SourceError when it fails."""
        if self._consumed:
            raise RuntimeError(f"{self.name}: frames() can be iterated only once")
        self._consumed = True
        self.start()
        assert self._queue is not None
        while True:
            frame = await self._queue.get()
            if frame is None:
                break
            self._delivered += 1
            yield frame
        if self._state == "failed" and self._final_error is not None:
            raise self._final_error

    async def wait_for_state(self, *states: SourceState, timeout: float | None = None) -> SourceState:
        """Wait until the source is in one of `states` (returns at once if it is); TimeoutError after `timeout`."""
        if self._state in states:
            return self._state
        loop = asyncio.get_running_loop()
        reached: asyncio.Future[SourceState] = loop.create_future()

        def listener(change: StateChange) -> None:
            if change.new in states and not reached.done():
                reached.set_result(change.new)

        remove = self.add_listener(listener)
        try:
            return await asyncio.wait_for(reached, timeout)
        finally:
            remove()

    def stats(self) -> SourceStats:
        """A snapshot of the counters."""
        now = time.monotonic()
        queue = self._queue
        recent = [t for t in list(self._recent) if t >= now - self.FPS_WINDOW_S]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else 0.0
        last = self._recent[-1] if self._recent else None
        return SourceStats(
            name=self.name,
            url=self.url,
            kind=self.kind,
            state=self._state,
            policy=self.policy,
            frames=queue.accepted if queue else 0,
            delivered=self._delivered,
            dropped=queue.dropped if queue else 0,
            queued=queue.qsize() if queue else 0,
            reconnects=self._reconnects,
            losses=self._losses,
            attempts=self._attempts,
            decode_errors=self._decode_errors,
            fps=round(fps, 2),
            last_error=self._last_error,
            since_last_frame_s=None if last is None else round(now - last, 3),
        )

    async def aclose(self) -> None:
        """Stop reading and release the connection. Idempotent; the state becomes `ended` unless it failed."""
        if self._closed:
            return
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        session = self._session
        if session is not None:
            session.abandon()
        if self._queue is not None:
            self._queue.close()
        if self._state not in TERMINAL_STATES:
            self._set_state("ended", "closed")
        if session is not None:
            # Give the thread a moment to close its container; a read blocked in the network returns on its
            # own read timeout (the thread is a daemon, and ignored from here on).
            deadline = time.monotonic() + 1.0
            while session.alive and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.url} {self._state}>"

    # -- for subclasses -------------------------------------------------------------------------------

    @abstractmethod
    def _run_session(self, session: Session) -> None:
        """Open the source and decode until the end (return) or a failure (raise SourceError).

        Runs in the session's own thread. Must call `self._emit(session, image, pts)` for every frame,
        return promptly once `session.stopped` is set or `_emit` returns False, and close what it opened.
        """

    def _emit(self, session: Session, image: np.ndarray, pts: float | None, decode_ms: float | None = None) -> bool:
        """Hand one decoded BGR frame to the consumer (from the session thread); False means stop decoding.

        `decode_ms`: what decoding this frame cost, when the source measures it (becomes `Frame.decode_ms`).
        """
        if session.stopped:
            return False
        with self._index_lock:
            index = self._next_index
            self._next_index += 1
        now = time.monotonic()
        frame = Frame(stream=self.name, index=index, image=image, pts=pts, received=now, wall=time.time(),
                      decode_ms=decode_ms)
        self._recent.append(now)
        session.on_frame()  # before the put: the state turns live before the consumer sees this frame
        assert self._queue is not None
        return self._queue.put(frame, cancel=session.stop_event, on_wait=session.touch)

    def _count_decode_error(self) -> None:
        self._decode_errors += 1

    # -- internals ------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        def new_session(number: int, on_first_frame: Callable[[], None]) -> Session:
            if number > 1:
                self._attempts += 1
            session = Session(self.name, self.url, number, self._run_session, on_first_frame)
            self._session = session
            session.start()
            return session

        stall = self.config.stall_timeout_s
        await supervise(
            new_session,
            live=self.live,
            backoff=Backoff(self.config.reconnect),
            stall_timeout_s=stall,
            first_frame_timeout_s=None if stall is None else stall + self.config.open_timeout_s,
            set_state=self._set_state,
            url=self.url,
        )

    def _set_state(
        self,
        new: SourceState,
        reason: str,
        error: SourceError | None = None,
        attempt: int = 0,
        retry_in_s: float | None = None,
    ) -> None:
        old = self._state
        if old in TERMINAL_STATES:
            return
        if new == "reconnecting" and old == "live":
            self._losses += 1
        if new == "live" and old == "reconnecting":
            self._reconnects += 1
        if error is not None:
            self._last_error = str(error)
        if new == "failed":
            self._final_error = error
        self._state = new
        self._emit_change(old, new, reason, error, attempt, retry_in_s)
        if new in TERMINAL_STATES and self._queue is not None:
            self._queue.close()

    def _emit_change(
        self,
        old: SourceState | None,
        new: SourceState,
        reason: str,
        error: SourceError | None = None,
        attempt: int = 0,
        retry_in_s: float | None = None,
    ) -> None:
        change = StateChange(self.name, self.url, old, new, reason, error, attempt, retry_in_s)
        self.history.append(change)
        level = logging.WARNING if new in ("reconnecting", "failed") else logging.INFO
        log.log(level, "%s: %s -> %s: %s", log_text(self.name), old, new, log_text(reason, 1000),
                extra={SOURCE_STATE_LOG_FLAG: True})
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("%s: state listener %r raised; ignored", self.name, listener)
