"""Connection lifecycle: one thread per connection attempt, a stall watchdog, and capped backoff between attempts.

Why losses are detected in three ways (FACTS.md, "Video"):
- an exception from FFmpeg (connection refused, 404, reset, a read that timed out);
- end-of-stream on a live URL: when an RTSP server dies, PyAV's `decode()` just stops iterating, with
  NO exception, so a quiet EOF on a live source is a loss, not an end;
- the watchdog: the connection stays open but no frame is decoded for `stall_timeout_s` (a frozen
  encoder, a half-open TCP connection, packets that never decode). FFmpeg's own read timeout only
  covers reads that block, and only after about twice its value.

Why a fresh thread per attempt: a thread blocked inside FFmpeg cannot be interrupted from outside
(closing its container from another thread would free memory under it). When the watchdog gives up
on a connection, it sets the session's stop flag and walks away; the old thread notices at its next
packet or when its read times out, closes its own container, and exits. The next attempt never waits
for it. Frames from an abandoned session are refused by the queue, so they cannot interleave.

The supervisor itself is a coroutine: backoff sleeps are `asyncio.sleep` (cancelled at once by
`aclose`) and all state changes happen on the event-loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from swapwatch.stream.sources.config import ReconnectConfig
from swapwatch.stream.sources.errors import (
    SourceEndedError,
    SourceError,
    SourceStalledError,
)

log = logging.getLogger(__name__)

WATCH_TICK_S = 0.1
"""How often the watchdog re-checks a session (its precision); a wake-up costs microseconds."""


class Backoff:
    """Capped exponential backoff with multiplicative jitter (see `ReconnectConfig` for the formula).

    `rng` makes the jitter reproducible in tests; by default each Backoff has its own generator so
    sources started together still spread out.
    """

    def __init__(self, config: ReconnectConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()

    def delay(self, failures: int) -> float:
        """Seconds to wait before the retry that follows the `failures`-th consecutive failure (>= 1)."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        cfg = self.config
        # Cap the exponent's growth before multiplying so huge failure counts cannot overflow.
        base = cfg.initial_s * cfg.multiplier ** min(failures - 1, 64)
        if cfg.jitter:
            base *= self._rng.uniform(1.0 - cfg.jitter, 1.0 + cfg.jitter)
        return min(cfg.max_s, base)

    def gives_up(self, failures: int) -> bool:
        """True when `failures` consecutive failures exceed `max_attempts` retries."""
        return self.config.max_attempts is not None and failures > self.config.max_attempts


@dataclass(frozen=True, slots=True)
class SessionResult:
    """How a session ended: `eof` (the decoder ran out), `error` (it raised), `stalled` (the watchdog)."""

    kind: Literal["eof", "error", "stalled"]
    error: SourceError | None = None


class Session:
    """One connection attempt: a daemon thread running `work(session)`, plus what the watchdog reads.

    Created on the event-loop thread. `work` is a source's `_run_session`; it calls `on_frame` for each
    frame and checks `stopped`. `touch` tells the watchdog the session is healthy without a new frame
    (pacing a recorded file, or waiting for a slow consumer under the `all` policy).
    """

    def __init__(
        self,
        name: str,
        url: str,
        number: int,
        work: Callable[[Session], None],
        on_first_frame: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.number = number
        self.stop_event = threading.Event()
        self.frames = 0
        self.last_activity = time.monotonic()
        self._work = work
        self._on_first_frame = on_first_frame
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[SessionResult] = self._loop.create_future()
        self._thread = threading.Thread(target=self._main, name=f"swapwatch-source-{name}-{number}", daemon=True)

    @property
    def stopped(self) -> bool:
        """True once the session was abandoned (closed, or given up by the watchdog)."""
        return self.stop_event.is_set()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; the watchdog's clock starts now."""
        self.last_activity = time.monotonic()
        self._thread.start()

    def touch(self) -> None:
        """Record that the session is healthy now (called from the session thread)."""
        self.last_activity = time.monotonic()

    def on_frame(self) -> None:
        """Record a decoded frame; the first one schedules `on_first_frame` on the loop before the frame is queued.

        Scheduling it before the frame goes into the queue means the state is `live` by the time the
        consumer sees the frame (both callbacks run on the loop, in order).
        """
        self.frames += 1
        self.touch()
        if self.frames == 1 and self._on_first_frame is not None:
            self._call(self._first_frame)

    def abandon(self) -> None:
        """Ask the thread to stop; it returns at its next check and closes its own resources."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread (tests, shutdown)."""
        self._thread.join(timeout)

    def _first_frame(self) -> None:
        if not self.stopped and self._on_first_frame is not None:
            self._on_first_frame()

    def _main(self) -> None:
        try:
            self._work(self)
            result = SessionResult("eof")
        except SourceError as err:
            result = SessionResult("error", err)
        except Exception as err:  # noqa: BLE001 - a bug, not a stream problem; its message may quote the raw URL
            log.error("%s: session %d crashed with %s", self.name, self.number, type(err).__name__)
            result = SessionResult("error", SourceError(self.url, f"unexpected {type(err).__name__} while reading"))
        self._call(self._finish, result)

    def _finish(self, result: SessionResult) -> None:
        if not self.done.done():
            self.done.set_result(result)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: the source is gone and nobody is listening


SetState = Callable[..., None]
"""`set_state(new, reason, error=None, attempt=0, retry_in_s=None)`: the source's state setter."""


async def watch(
    session: Session,
    *,
    stall_timeout_s: float | None,
    first_frame_timeout_s: float | None,
) -> SessionResult:
    """Wait for the session to end, or abandon it when it goes `stall_timeout_s` without activity.

    Before its first frame a session gets `first_frame_timeout_s` (connecting and probing take time).
    """
    while True:
        if session.done.done():
            return session.done.result()
        limit = stall_timeout_s if session.frames else first_frame_timeout_s
        timeout = None
        if limit is not None:
            idle = time.monotonic() - session.last_activity
            timeout = limit - idle
            if timeout <= 0:
                session.abandon()
                what = f"no frame for {idle:.1f} s" if session.frames else f"no first frame {idle:.1f} s after opening"
                return SessionResult("stalled", SourceStalledError(session.url, f"{what} (stall watchdog)"))
        # Re-check at least every WATCH_TICK_S: the limit changes when the first frame arrives.
        await asyncio.wait([session.done], timeout=None if timeout is None else min(timeout, WATCH_TICK_S))


async def supervise(
    new_session: Callable[[int, Callable[[], None]], Session],
    *,
    live: bool,
    backoff: Backoff,
    stall_timeout_s: float | None,
    first_frame_timeout_s: float | None,
    set_state: SetState,
    url: str,
) -> None:
    """Run sessions until the source ends or fails, reconnecting a live source with backoff.

    Recorded sources: EOF -> `ended`, any error -> `failed` (a corrupt file stays corrupt, and a retry
    would replay frames). Live sources: every end is a loss -> `reconnecting` -> a new session after the
    backoff delay -> `live` at its first frame, or `failed` once `max_attempts` consecutive attempts
    failed. The failure count resets when a session stayed live for `reset_after_s`.
    """
    failures = 0
    number = 0
    session: Session | None = None
    live_since: float | None = None

    def went_live() -> None:
        nonlocal live_since
        live_since = time.monotonic()
        set_state("live", "first frame received" if number == 1 else f"reconnected (attempt {number})")

    try:
        while True:
            number += 1
            live_since = None
            session = new_session(number, went_live)
            result = await watch(session, stall_timeout_s=stall_timeout_s, first_frame_timeout_s=first_frame_timeout_s)
            if not live:
                if result.kind == "eof":
                    set_state("ended", "end of file")
                else:
                    assert result.error is not None
                    set_state("failed", result.error.reason, result.error)
                return
            error = result.error or SourceEndedError(
                url, "the stream ended (the server closed the connection or stopped sending)"
            )
            if live_since is not None and time.monotonic() - live_since >= backoff.config.reset_after_s:
                failures = 0
            failures += 1
            if backoff.gives_up(failures):
                set_state(
                    "failed",
                    f"{error.reason}; giving up after {failures} failed attempt(s)",
                    error,
                    attempt=failures,
                )
                return
            delay = backoff.delay(failures)
            set_state(
                "reconnecting",
                f"{error.reason}; retry {failures} in {delay:.2f} s",
                error,
                attempt=failures,
                retry_in_s=delay,
            )
            await asyncio.sleep(delay)
    finally:
        if session is not None:
            session.abandon()
