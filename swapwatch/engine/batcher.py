"""An asyncio micro-batcher in front of an engine: crops from every track and stream -> one batch.

Callers `await batcher.submit(crop)` (or `try_submit` to drop when full) and get back that crop's
score. A single collector task takes the oldest request, then keeps adding requests until the batch
holds `max_batch` crops or the oldest one has waited `max_wait_ms`, and hands the batch to a worker
thread, so the event loop keeps serving sources, the API and the sinks while the engine runs.

Design choices and their trade-offs (docs/batching.md has the long version):
- The batcher takes *preprocessed* crops: float32 CHW at the engine's input size, i.e. one row of
  `engine.preprocess(crops)`. Callers preprocess all the faces of a frame in one vectorised call, and
  the batcher's critical path is only `np.stack` + `engine.infer`. The cost: a caller holding raw BGR
  crops must call `engine.preprocess` first.
- A worker slot is taken *before* the collector reads the queue. While every worker is busy, new
  requests pile up in the queue and the next batch is formed from all of them at once (dynamic
  batching under load), and back-pressure reaches `submit` as soon as the queue is full. The cost:
  none in latency (an eager collector would only hold the same requests in a half-formed batch), but
  the batch that runs next is fixed only when a worker frees, so nothing can be prepared ahead.
- The queue is bounded (`max_queue`). `submit` waits for room (recorded and benchmark sources, where
  every frame counts); `try_submit` returns None instead (live sources, where a stale face is worth
  less than a dropped one).
- `max_batch` and `max_wait_ms` default to values derived from the engine's measured profile
  (swapwatch.engine.profile): on two CPU cores batching barely pays and the profile picks small
  batches with short waits; on a GPU it picks large ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np

from swapwatch.engine.batcher_config import BatcherConfig, SupportsInfer
from swapwatch.engine.profile import EngineProfile, batcher_config_from_profile, profile_engine
from swapwatch.errors import SwapwatchError

log = logging.getLogger(__name__)

# Percentiles are computed over this many recent samples: stats stay O(1) in memory on a monitor
# that runs for weeks, at the price of describing the recent past rather than all time.
STATS_WINDOW = 4096


class BatcherClosed(SwapwatchError):
    """The batcher was closed (or never started) before this crop was scored."""


class EngineBatchError(SwapwatchError):
    """The engine failed on the batch that held this crop; other batches are unaffected."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The score of one submitted crop, with where its time went."""

    score: float
    key: Any
    batch_size: int
    queue_ms: float  # from submit() to the start of its batch's inference (includes back-pressure waits)
    infer_ms: float  # its batch's engine.infer time
    batch_id: int


@dataclass(frozen=True)
class BatcherStats:
    """Counters since start and latency percentiles over the last STATS_WINDOW samples."""

    submitted: int
    completed: int
    failed: int
    cancelled: int
    dropped: int
    batches: int
    failed_batches: int
    mean_batch: float
    batch_sizes: dict[int, int]
    queue_ms_p50: float
    queue_ms_p95: float
    infer_ms_p50: float
    infer_ms_p95: float
    queue_depth: int
    in_flight: int
    max_batch: int
    max_wait_ms: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch_sizes"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        return d


@dataclass(slots=True)
class _Request:
    crop: np.ndarray
    key: Any
    future: asyncio.Future[BatchResult]
    t_submit: float


@dataclass
class _Counters:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    dropped: int = 0
    batches: int = 0
    failed_batches: int = 0
    crops_in_batches: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    queue_ms: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    infer_ms: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))


def _percentile(values: deque[float], q: float) -> float:
    return float(np.percentile(np.fromiter(values, float), q)) if values else math.nan


class MicroBatcher:
    """Coalesces concurrent `submit(crop)` calls into engine batches of at most `max_batch` crops.

    Use as `async with MicroBatcher(engine, cfg) as b: result = await b.submit(x)`. The batcher does
    not own the engine: closing the batcher waits for the running batches and leaves the engine open.
    """

    def __init__(
        self, engine: SupportsInfer, config: BatcherConfig | None = None, profile: EngineProfile | None = None
    ) -> None:
        self.engine = engine
        self.config = config or BatcherConfig()
        self.profile = profile
        self._max_batch: int | None = None
        self._max_wait_ms: float | None = None
        size = getattr(engine, "input_size", None)
        self._shape: tuple[int, ...] | None = (3, size, size) if isinstance(size, int) else None
        self._queue: asyncio.Queue[_Request] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()  # batch tasks
        self._pending: set[asyncio.Future[BatchResult]] = set()  # every unsettled request
        self._inflight: set[asyncio.Future[BatchResult]] = set()  # requests inside a running batch
        self._forming: list[_Request] = []  # the batch the collector is filling
        self._blocked_puts = 0
        self._closed = False
        self._batch_ids = 0
        self._c = _Counters()

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def max_batch(self) -> int | None:
        """Resolved batch cap (None until start())."""
        return self._max_batch

    @property
    def max_wait_ms(self) -> float | None:
        """Resolved wait for the oldest crop (None until start())."""
        return self._max_wait_ms

    @property
    def running(self) -> bool:
        return self._collector is not None and not self._closed

    async def start(self) -> Self:
        """Resolve the sizes (measuring a short profile if needed) and start the collector task.

        Without explicit sizes and without a profile, this measures one on real face crops in a worker
        thread (about a second per engine); pass `profile=` to reuse a stored one.
        """
        if self._closed:
            raise BatcherClosed("a closed batcher cannot be restarted; make a new one")
        if self._collector is not None:
            return self
        await self._resolve_sizes()
        self._queue = asyncio.Queue(maxsize=self.config.max_queue)
        self._slots = asyncio.Semaphore(self.config.workers)
        self._executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="swapwatch-batcher")
        self._collector = asyncio.create_task(self._collect(), name="swapwatch-batcher-collector")
        log.debug("batcher started: max_batch=%d max_wait=%.2f ms", self._max_batch, self._max_wait_ms)
        return self

    async def _resolve_sizes(self) -> None:
        cfg = self.config
        max_batch, max_wait = cfg.max_batch, cfg.max_wait_ms
        if max_batch is None or max_wait is None:
            if self.profile is None:
                self.profile = await asyncio.to_thread(profile_engine, self.engine, seconds=0.15)
            derived = batcher_config_from_profile(self.profile, budget_ms=cfg.budget_ms)
            max_batch = derived.max_batch if max_batch is None else max_batch
            max_wait = derived.max_wait_ms if max_wait is None else max_wait
        assert max_batch is not None and max_wait is not None
        engine_cap = getattr(self.engine, "max_batch", None)
        if engine_cap is not None and max_batch > engine_cap:
            log.info("batcher: max_batch %d capped to the engine's max_batch %d", max_batch, engine_cap)
            max_batch = int(engine_cap)
        self._max_batch, self._max_wait_ms = int(max_batch), float(max_wait)

    async def aclose(self) -> None:
        """Stop accepting crops, fail every crop not yet in a running batch with BatcherClosed, and wait
        for the running batches to finish (their callers get their scores). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
        self._fail_waiting()
        # Submitters parked on a full queue resume one by one as items leave it; keep draining until
        # none is left, so nobody stays blocked on a queue that no collector will read again.
        while self._blocked_puts or (self._queue is not None and not self._queue.empty()):
            await asyncio.sleep(0)
            self._fail_waiting()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _fail_waiting(self) -> None:
        self._forming = []
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait()  # its future is in _pending, failed below
        for fut in list(self._pending):
            if fut not in self._inflight and not fut.done():
                fut.set_exception(BatcherClosed("the batcher was closed before this crop was scored"))
                self._c.failed += 1

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- submitting ------------------------------------------------------------------------------
    def _new_request(self, crop: np.ndarray, key: Any) -> _Request:
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        if self._collector is None:
            raise BatcherClosed("the batcher is not started: use `async with MicroBatcher(...)` or await start()")
        x = np.asarray(crop, dtype=np.float32)
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"batcher: expected a preprocessed float32 CHW crop (3, S, S), got shape {x.shape}")
        if self._shape is None:
            self._shape = tuple(x.shape)  # no input_size on the engine: the first crop fixes the shape
        elif x.shape != self._shape:
            raise ValueError(f"batcher: expected a crop of shape {self._shape}, got {x.shape}")
        fut: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(self._on_done)
        self._pending.add(fut)
        self._c.submitted += 1
        return _Request(x, key, fut, time.perf_counter())

    def _on_done(self, fut: asyncio.Future[BatchResult]) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            self._c.cancelled += 1
        else:
            fut.exception()  # mark retrieved: a dropped try_submit() future must not log a warning

    async def submit(self, crop: np.ndarray, key: Any = None) -> BatchResult:
        """Score one preprocessed crop (float32 CHW, a row of engine.preprocess) with whatever else is queued.

        Waits for room when the queue is full (back-pressure). Raises BatcherClosed when the batcher
        closes first, EngineBatchError when the engine fails on this crop's batch, ValueError for a crop
        of the wrong shape. Cancelling the caller withdraws the crop if its batch has not started.
        """
        req = self._new_request(crop, key)
        assert self._queue is not None
        try:
            try:
                self._queue.put_nowait(req)
            except asyncio.QueueFull:
                self._blocked_puts += 1
                try:
                    await self._queue.put(req)
                finally:
                    self._blocked_puts -= 1
            return await req.future
        except asyncio.CancelledError:
            req.future.cancel()  # the collector skips cancelled requests
            raise

    def try_submit(self, crop: np.ndarray, key: Any = None) -> asyncio.Future[BatchResult] | None:
        """Queue one crop without waiting: a future of its result, or None (counted as dropped) when full.

        For live sources, where a face that cannot be queued now is better dropped than waited for.
        """
        if self._queue is not None and self._queue.full() and not self._closed:
            self._c.dropped += 1
            return None
        req = self._new_request(crop, key)
        assert self._queue is not None
        self._queue.put_nowait(req)  # cannot fail: checked above, and nothing ran in between
        return req.future

    # -- collecting and running batches ----------------------------------------------------------
    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        assert self._max_batch is not None and self._max_wait_ms is not None
        queue, slots = self._queue, self._slots
        max_batch, max_wait = self._max_batch, self._max_wait_ms / 1e3
        while True:
            await slots.acquire()  # read the queue only when a worker can take the batch
            try:
                batch = self._forming
                while not batch:
                    req = await queue.get()
                    if not req.future.done():
                        batch.append(req)
                deadline = batch[0].t_submit + max_wait  # the oldest crop's wait includes back-pressure
                while len(batch) < max_batch:
                    try:
                        req = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        try:
                            req = await asyncio.wait_for(queue.get(), remaining)
                        except TimeoutError:
                            break
                    if not req.future.done():
                        batch.append(req)
                self._forming = []
                batch = [r for r in batch if not r.future.done()]  # withdrawn while the batch filled
            except BaseException:
                slots.release()
                raise
            if not batch:
                slots.release()
                continue
            self._inflight.update(r.future for r in batch)
            task = asyncio.create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list[_Request]) -> None:
        assert self._slots is not None and self._executor is not None
        self._batch_ids += 1
        batch_id = self._batch_ids
        try:
            loop = asyncio.get_running_loop()
            crops = [r.crop for r in batch]
            try:
                scores, t_start, t_end = await loop.run_in_executor(self._executor, _timed_infer, self.engine, crops)
            except Exception as err:  # noqa: BLE001 - any engine failure fails this batch only
                self._c.failed_batches += 1
                name = getattr(self.engine, "name", type(self.engine).__name__)
                log.warning("batcher: engine %s failed on batch %d of %d crops: %s", name, batch_id, len(batch), err)
                for r in batch:
                    if not r.future.done():
                        exc = EngineBatchError(f"engine {name} failed on a batch of {len(batch)} crops: {err}")
                        exc.__cause__ = err
                        r.future.set_exception(exc)
                        self._c.failed += 1
                return
            infer_ms = (t_end - t_start) * 1e3
            self._c.batches += 1
            self._c.crops_in_batches += len(batch)
            self._c.batch_sizes[len(batch)] += 1
            self._c.infer_ms.append(infer_ms)
            for r, score in zip(batch, scores, strict=True):
                queue_ms = (t_start - r.t_submit) * 1e3
                self._c.queue_ms.append(queue_ms)
                if not r.future.done():  # a caller cancelled after its batch started
                    r.future.set_result(BatchResult(float(score), r.key, len(batch), queue_ms, infer_ms, batch_id))
                    self._c.completed += 1
        finally:
            self._inflight.difference_update(r.future for r in batch)
            self._slots.release()

    # -- observing -------------------------------------------------------------------------------
    def stats(self) -> BatcherStats:
        c = self._c
        return BatcherStats(
            submitted=c.submitted,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            dropped=c.dropped,
            batches=c.batches,
            failed_batches=c.failed_batches,
            mean_batch=c.crops_in_batches / c.batches if c.batches else 0.0,
            batch_sizes=dict(c.batch_sizes),
            queue_ms_p50=_percentile(c.queue_ms, 50),
            queue_ms_p95=_percentile(c.queue_ms, 95),
            infer_ms_p50=_percentile(c.infer_ms, 50),
            infer_ms_p95=_percentile(c.infer_ms, 95),
            queue_depth=self._queue.qsize() if self._queue is not None else 0,
            in_flight=len(self._inflight),
            max_batch=self._max_batch or 0,
            max_wait_ms=self._max_wait_ms if self._max_wait_ms is not None else math.nan,
        )


def _timed_infer(engine: SupportsInfer, crops: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """Runs in a worker thread: stack (a copy of up to tens of MB, kept off the event loop), infer, time it."""
    x = np.stack(crops)
    t_start = time.perf_counter()
    scores = np.asarray(engine.infer(x), dtype=np.float32).reshape(-1)
    t_end = time.perf_counter()
    if scores.shape[0] != x.shape[0]:
        raise ValueError(f"engine returned {scores.shape[0]} scores for a batch of {x.shape[0]} crops")
    return scores, t_start, t_end
