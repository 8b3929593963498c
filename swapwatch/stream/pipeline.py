"""The live monitor: sources -> faces -> one shared micro-batcher -> per-track smoothing -> sinks, on asyncio.

    report = asyncio.run(Monitor(load_monitor_config("monitor.yaml")).run(duration_s=60))

One task per source runs a `StreamWorker` (swapwatch/stream/worker.py): it reads its frames, runs that
stream's `FaceTracking` (detect every N frames, track in between, align) and preprocessing in the
stream's own worker thread, and submits every crop to ONE `MicroBatcher`, so crops from different
streams share engine batches. Each score updates the stream's `TrackBook` (per-track smoothing, expiry
and the stream verdict, swapwatch/stream/temporal.py); state changes become `state` events, source
state changes become `stream` events, and every `summary_interval_s` each stream publishes a `summary`
event. Everything goes to one `SinkSet`, which never blocks the frame loop. The per-stream design
choices (sequential per stream, live sources never wait, event order, stream clock) and the timings
are described in worker.py.

**Failure isolation.** A source that fails (missing file, refused connection, corrupt data) ends its own
task with a `stream` event `failed`; an unexpected error in one stream's processing does the same; the
other streams carry on. Only a failure of the shared parts (engine, detector, sinks at start) stops the
monitor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from swapwatch.engine.base import Engine
from swapwatch.engine.batcher import BatcherClosed, MicroBatcher
from swapwatch.engine.profile import EngineProfile, profile_engine
from swapwatch.errors import ConfigError, NoFaceError, SwapwatchError
from swapwatch.stream.config import MonitorConfig
from swapwatch.stream.events import ModelInfo
from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.redact import log_text
from swapwatch.stream.sinks import Sink, SinkSet, build_sinks
from swapwatch.stream.sinks.metrics import Metrics, MetricsSink
from swapwatch.stream.sources import Source, SourceConfig, open_source
from swapwatch.stream.temporal import SmoothingConfig
from swapwatch.stream.worker import FrameObserver, FrameReport, Shared, StreamClock, StreamReport, StreamWorker

__all__ = [  # FrameReport and StreamClock live in worker.py; importing them from here still works
    "FrameObserver", "FrameReport", "Monitor", "MonitorReport", "MonitorStoppedError", "StreamClock",
    "StreamLimitError", "StreamNotFoundError", "StreamReport", "build_sink_set", "install_signal_handlers",
    "profile_on_sample_faces", "run_monitor", "warm_up",
]

log = logging.getLogger(__name__)


@dataclass
class MonitorReport:
    """The result of `Monitor.run`: per-stream reports, timings, batcher and sink counters, why it stopped."""

    streams: dict[str, StreamReport]
    stopped_by: str
    wall_s: float
    timings: dict[str, Any]
    batcher: dict[str, Any] | None
    sinks: dict[str, Any]
    smoothing: dict[str, float]
    model: dict[str, Any] | None

    @property
    def failed(self) -> list[str]:
        """Streams whose source failed or whose processing broke."""
        return [name for name, s in self.streams.items() if s.source_state == "failed" or s.error is not None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "streams": {k: asdict(v) for k, v in self.streams.items()},
            "stopped_by": self.stopped_by,
            "wall_s": round(self.wall_s, 3),
            "timings": self.timings,
            "batcher": self.batcher,
            "sinks": self.sinks,
            "smoothing": self.smoothing,
            "model": self.model,
        }


# --- the monitor ------------------------------------------------------------------------------------------


def warm_up(engine: Engine, detector: FaceDetector) -> None:
    """One detection and one inference before the sources open.

    ONNX Runtime allocates and plans on a session's first runs (the first detection took ~0.5 s here
    against ~10 ms after); done while a recorded source is already being read, that first frame makes
    the next ones queue up and shows as a latency spike at every start.
    """
    import importlib

    # The tracker imports scipy.optimize (~0.3 s) lazily on its first association; pay that here too.
    importlib.import_module("scipy.optimize")
    detector.detect(np.zeros((360, 640, 3), np.uint8))
    size = engine.input_size
    engine.infer(engine.preprocess(np.zeros((1, size, size, 3), np.uint8)))


def profile_on_sample_faces(engine: Engine, size: int, margin: float) -> EngineProfile:
    """The engine's batch-size profile measured on the package's real sample faces (~1-2 s), aligned
    with the monitor's own geometry (and resampling chain, through the model's `alignment.size`) so the
    profile sees the crops the monitor will send."""
    from swapwatch.samples import sample_crops

    try:
        crops = sample_crops(size, margin, crop_size=int(engine.meta.alignment.size))
    except NoFaceError:
        raise SwapwatchError("no face found in the package sample images to profile the engine with; "
                             "set batcher.max_batch and batcher.max_wait_ms") from None
    return profile_engine(engine, engine.preprocess(crops), seconds=0.15)


def build_sink_set(config: MonitorConfig, smoothing: SmoothingConfig, extra: Sequence[Sink] = ()) -> SinkSet:
    """The configured sinks plus `extra` ones (e.g. the demo's recorder) in one SinkSet."""
    base = build_sinks(config.sinks, smoothing=smoothing)
    sinks: list[Sink] = [*base.sinks, *extra]
    c = config.sinks
    return SinkSet(sinks, event_queue=c.event_queue, frame_queue=c.frame_queue, drain_timeout_s=c.drain_timeout_s,
                   close_timeout_s=c.close_timeout_s, on_drop=base.on_drop,
                   node=config.cluster.node if config.cluster is not None else None)


class StreamNotFoundError(SwapwatchError, LookupError):
    """No stream of that name is running or listed (API: 404)."""

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        self.name = name
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"stream {name!r}: no such stream (streams: {listed})")


class MonitorStoppedError(SwapwatchError):
    """The monitor is stopping or has stopped: no stream can be added any more (API: 503)."""


class StreamLimitError(SwapwatchError):
    """A new stream would take more readers than the limit allows (API and WHIP: 429)."""


MAX_FINISHED = 64
"""Ended/failed streams kept listed (with their final counters) until removed or replaced by a new one."""


class Monitor:
    """Runs the pipeline for a `MonitorConfig` until the sources end, `duration_s` passes or `stop()`.

    `engine` / `detector` may be given (tests, the demo, a server that keeps them warm); otherwise they
    are opened from the config and closed at the end. `sources` (already built, not yet started, e.g.
    a wrapper that reads a timestamp the sender drew into each frame) run after the configured ones;
    `extra_sinks` join the configured ones;
    `observers` are called synchronously with every processed frame's `FrameReport` (keep them cheap).

    Streams can come and go while it runs: `await add_source(...)` starts one (a `Source`, a
    `SourceConfig` or a URL), `await remove_stream(name)` closes one and waits for its last scores,
    track ends and `stream ended` event. `run(serve=True)` keeps the monitor up with zero or more
    streams until `stop()` (or `duration_s`) instead of ending when the last source ends, which is what
    `swapwatch serve` does. Streams that ended or failed stay listed in `status()` with their final
    counters until removed or replaced by a new stream of the same name (the last MAX_FINISHED when
    serving; a `watch` run keeps all of them for its report).

    A removed stream's reader thread can outlive it for a bounded time (a network open or read blocked
    in FFmpeg returns only at its timeout): such readers are counted by `streams_in_use` until they
    exit, so adding and removing streams in a loop cannot pile up threads and sockets past a limit.
    """

    def __init__(
        self,
        config: MonitorConfig,
        *,
        engine: Engine | None = None,
        detector: FaceDetector | None = None,
        sources: Sequence[Any] = (),
        extra_sinks: Sequence[Sink] = (),
        observers: Sequence[FrameObserver] = (),
    ) -> None:
        self.config = config
        self.extra_sources = list(sources)
        self._engine = engine
        self._detector = detector
        self.extra_sinks = list(extra_sinks)
        self.observers = list(observers)
        self.smoothing: SmoothingConfig | None = None
        self.model_info: ModelInfo | None = None
        self.engine: Engine | None = None
        self.started_wall: float | None = None
        self._stop: asyncio.Event | None = None
        self._stop_reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shared: Shared | None = None
        self._running: dict[str, tuple[StreamWorker, asyncio.Task[None]]] = {}
        self._listed: dict[str, StreamWorker] = {}
        self._draining: list[Source] = []
        self._serve = False
        self._reports: list[StreamReport] = []  # `watch` only: streams removed while it ran, for its report
        self._idle = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self.on_stopping: list[Callable[[], Awaitable[None]]] = []
        """Awaited in turn once the monitor stops, before it closes the remaining streams (the server ends
        its WHIP sessions here, so their streams end with the server's reason rather than `closed`)."""

    # -- control ---------------------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask the monitor to stop (idempotent). Safe from a signal handler or from another thread."""
        if self._stop_reason is None:
            self._stop_reason = reason
        loop, stop = self._loop, self._stop
        if loop is None or stop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            stop.set()
        else:
            loop.call_soon_threadsafe(stop.set)

    @property
    def ready(self) -> bool:
        """True while the shared parts are up and streams can be added (after start-up, before stopping)."""
        return self._shared is not None and not self._closing

    @property
    def stopping(self) -> bool:
        """True once the monitor has begun to stop (or has stopped)."""
        return self._closing or self._stop_reason is not None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until `run()` has the engine, detector, batcher and sinks up (TimeoutError after `timeout`)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    @property
    def metrics(self) -> Metrics | None:
        """The Prometheus `Metrics` of the running monitor (None when the metrics sink is off or not started)."""
        return self._shared.metrics if self._shared is not None else None

    @property
    def sinks(self) -> SinkSet | None:
        """The running SinkSet (None before start and after stop)."""
        return self._shared.sinks if self._shared is not None else None

    def stream_names(self) -> list[str]:
        """Streams listed now: running, then waiting to start, then ended/failed ones kept for status."""
        names = list(self._running)
        names += [s.name for s in self.extra_sources if s.name not in names]
        names += [n for n in self._listed if n not in names]
        return names

    def streams_in_use(self) -> int:
        """Streams holding a reader now: running, queued to start, and removed ones whose reader has not exited."""
        self._draining = [s for s in self._draining if s.reader_alive]
        return len(self._running) + len(self.extra_sources) + len(self._draining)

    def _taken(self) -> set[str]:
        """Names a new stream may not use: running ones and ones queued to start."""
        taken = set(self._running) | {s.name for s in self.extra_sources}
        if self._shared is None:  # not started yet: the configured sources will start too
            taken |= {s.resolved_name for s in self.config.sources}
        return taken

    async def add_source(self, source: Source | SourceConfig | str, *, limit: int | None = None) -> str:
        """Start monitoring `source` (a Source not yet started, a SourceConfig or a URL); returns its name.

        Before `run()` starts it is queued and starts with the configured sources. ConfigError when the
        name is already in use by a running stream (give the source another `name`) or the config is
        invalid (naming the field); MonitorStoppedError once the monitor is stopping; StreamLimitError
        when `limit` streams are in use already (`streams_in_use`; checked and taken with no await between).
        """
        if self.stopping:
            raise MonitorStoppedError("the monitor is stopping; no stream can be added")
        if limit is not None:
            in_use = self.streams_in_use()
            if in_use >= limit:
                draining = f", {len(self._draining)} of them removed and still closing" if self._draining else ""
                raise StreamLimitError(f"{in_use} streams in use{draining} (limit {limit}); remove one or try later")
        if isinstance(source, (str, SourceConfig)):
            source = open_source(source)
        name = str(source.name)
        if name in self._taken():
            raise ConfigError(
                f"name: a stream named {name!r} is already running; remove it first or give the new source "
                "another `name`"
            )
        if self._shared is None:
            self.extra_sources.append(source)
        else:
            self._start_worker(source)
        return name

    async def remove_stream(self, name: str) -> StreamReport:
        """Stop stream `name` and wait for its end (last scores, track ends, `stream ended`); returns its report.

        A stream that already ended or failed is just taken off the list. StreamNotFoundError for an
        unknown name.
        """
        if name in self._running:
            worker, task = self._running[name]
            try:
                await worker.source.aclose()
            except Exception:
                log.exception("%s: closing the source failed", log_text(name))
            try:
                await asyncio.wait_for(asyncio.shield(task), self.config.stop_timeout_s)
            except TimeoutError:
                log.warning("%s: did not finish within %.1f s of its source closing; cancelling it", log_text(name),
                            self.config.stop_timeout_s)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            except BatcherClosed:
                pass  # the whole monitor is shutting down at the same time
            if self._listed.get(name) is worker:
                del self._listed[name]
                if not self._serve:
                    self._reports.append(worker.report)
                self._forget(name)
            if worker.source.reader_alive:
                self._draining.append(worker.source)
            return worker.report
        for source in self.extra_sources:
            if source.name == name:
                self.extra_sources.remove(source)
                await source.aclose()
                return StreamReport(name, source.url, source_state="ended")
        finished = self._listed.pop(name, None)
        if finished is None:
            raise StreamNotFoundError(name, self.stream_names())
        self._forget(name)
        return finished.report

    def stream_status(self, name: str) -> dict[str, Any]:
        """One stream's status snapshot (see `StreamWorker.status`); StreamNotFoundError if unknown."""
        worker = self._listed.get(name)
        if worker is not None:
            return worker.status(running=name in self._running and self._running[name][0] is worker)
        for source in self.extra_sources:
            if source.name == name:
                return {"name": name, "url": source.url, "running": False, "source_state": "connecting",
                        "state": "clear", "tracks": [], "frames": 0}
        raise StreamNotFoundError(name, self.stream_names())

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the whole monitor: per-stream status, batcher, model, thresholds."""
        shared = self._shared
        return {
            "ready": self.ready,
            "stopping": self.stopping,
            "started": None if self.started_wall is None
            else datetime.fromtimestamp(self.started_wall, tz=UTC).isoformat(timespec="milliseconds"),
            "streams": {name: self.stream_status(name) for name in self.stream_names()},
            "batcher": shared.batcher.stats().to_dict() if shared is not None else None,
            "model": self.model_info.model_dump() if self.model_info is not None else None,
            "engine": self.engine.name if self.engine is not None else None,
            **(shared.timings.as_dict() if shared is not None else {}),
        }

    # -- internals: one task per stream ------------------------------------------------------------------
    def _start_worker(self, source: Source) -> StreamWorker:
        assert self._shared is not None
        worker = StreamWorker(self._shared, source)
        self._listed.pop(worker.name, None)  # an ended stream of the same name is replaced by the new one
        self._listed[worker.name] = worker
        if self._serve:  # a long-lived server keeps the last few finished streams, not every one it ever ran
            finished = [n for n in self._listed if n not in self._running and n != worker.name]
            for old in finished[: max(0, len(finished) - MAX_FINISHED)]:
                del self._listed[old]
                self._forget(old)
        task = asyncio.create_task(worker.run(), name=f"swapwatch-stream-{worker.name}")
        self._running[worker.name] = (worker, task)
        self._idle.clear()
        task.add_done_callback(functools.partial(self._on_done, worker))
        return worker

    def _forget(self, name: str) -> None:
        """A serving monitor drops a stream's metric series once the stream is off its list (a server that
        ran thousands of streams must not export them all)."""
        sinks = self.sinks
        sink = sinks.get(MetricsSink) if sinks is not None and self._serve else None
        if sink is not None:
            sink.forget_when_ended(name)

    def _on_done(self, worker: StreamWorker, task: asyncio.Task[None]) -> None:
        entry = self._running.get(worker.name)
        if entry is not None and entry[0] is worker:
            del self._running[worker.name]
        if not task.cancelled():
            err = task.exception()
            if err is not None and not isinstance(err, BatcherClosed):
                worker.report.error = worker.report.error or f"{type(err).__name__}: {err}"
        if not self._running:
            self._idle.set()

    async def _open(self) -> tuple[Engine, FaceDetector, bool]:
        owns = self._engine is None
        engine = self._engine
        if engine is None:
            from swapwatch.engine.select import engine_from_config

            engine = await asyncio.to_thread(engine_from_config, self.config.engine)
        detector = self._detector
        if detector is None:
            from swapwatch.stream.faces.detector import load_detector

            try:
                detector = await asyncio.to_thread(load_detector, self.config.faces.detector)
            except BaseException:
                if owns:
                    engine.close()
                raise
        return engine, detector, owns

    async def run(self, duration_s: float | None = None, *, serve: bool = False) -> MonitorReport:
        """Run to the end; returns the report. ConfigError for a config that cannot run (no sources
        without `serve`, crop size mismatch); SwapwatchError when the engine, detector or a sink cannot start.

        `serve=True`: run with zero or more streams until `stop()` or `duration_s`, even when every
        stream has ended (streams come and go through `add_source` / `remove_stream`).
        """
        cfg = self.config
        if not serve and not cfg.sources and not self.extra_sources:
            raise ConfigError("sources: no video source given (pass SOURCE arguments or list them under sources:)")
        if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
            raise ConfigError(f"duration: must be a positive number of seconds, got {duration_s}")
        names = [s.resolved_name for s in cfg.sources] + [s.name for s in self.extra_sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"sources: stream name(s) {', '.join(map(repr, dupes))} used twice; give them distinct names")
        self._serve = serve
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_reason is not None:
            self._stop.set()
        started = time.monotonic()
        self.started_wall = time.time()
        engine, detector, owns_engine = await self._open()
        self.engine = engine
        sinks: SinkSet | None = None
        batcher: MicroBatcher | None = None
        try:
            meta = engine.meta
            size = cfg.faces.size if cfg.faces.size is not None else engine.input_size
            if size != engine.input_size:
                raise ConfigError(
                    f"faces.size: {size} differs from the model's input size {engine.input_size} "
                    f"({engine.path.name}); leave it unset to use the model's"
                )
            margin = cfg.faces.margin if cfg.faces.margin is not None else float(meta.alignment.margin)
            crop_size = int(meta.alignment.size)  # the canonical crop the model was trained on
            self.smoothing = cfg.smoothing.resolve(meta.score_calibration)
            model_info = ModelInfo(
                name=engine.path.name, method=meta.method, sha256=meta.model_sha256[:12], precision=meta.precision,
                thresholds=self.smoothing.thresholds(),
            )
            self.model_info = model_info
            sinks = build_sink_set(cfg, self.smoothing, self.extra_sinks)
            sinks.start()
            metrics = None
            if cfg.sinks.metrics is not None:
                ms = sinks.get(MetricsSink)
                metrics = ms.metrics if ms is not None else None
            await asyncio.to_thread(warm_up, engine, detector)
            profile = None
            if cfg.batcher.max_batch is None or cfg.batcher.max_wait_ms is None:
                profile = await asyncio.to_thread(profile_on_sample_faces, engine, size, margin)
            batcher = MicroBatcher(engine, cfg.batcher, profile=profile)
            await batcher.start()
            log.info("monitor: %s on %s, batcher max_batch=%s max_wait=%.2f ms, thresholds %s", engine.path.name,
                     engine.name, batcher.max_batch, batcher.max_wait_ms or 0.0,
                     {k: round(v, 4) for k, v in self.smoothing.thresholds().items()})
            shared = Shared(cfg, engine, batcher, detector, self.smoothing, sinks, model_info, list(self.observers),
                            metrics, size, margin, crop_size)
            sources = [open_source(s) for s in cfg.sources] + self.extra_sources
            self.extra_sources = []
            # From here on add_source starts streams directly (no await between these lines and the starts).
            self._shared = shared
            for source in sources:
                self._start_worker(source)
            if not self._running:
                self._idle.set()
            self._ready.set()
            stopped_by = await self._supervise(duration_s, serve)
        finally:
            self._closing = True
            if batcher is not None:
                await batcher.aclose()
            if sinks is not None:
                await sinks.aclose()
            if owns_engine:
                engine.close()
        return MonitorReport(
            streams={**{r.name: r for r in self._reports}, **{w.name: w.report for w in self._listed.values()}},
            stopped_by=stopped_by,
            wall_s=time.monotonic() - started,
            timings=shared.timings.as_dict(),
            batcher=batcher.stats().to_dict(),
            sinks={k: v.as_dict() for k, v in sinks.stats().items()},
            smoothing=self.smoothing.thresholds(),
            model=model_info.model_dump(),
        )

    async def _supervise(self, duration_s: float | None, serve: bool) -> str:
        assert self._stop is not None
        stop_wait = asyncio.create_task(self._stop.wait())
        waits: set[asyncio.Task[Any]] = {stop_wait}
        idle_wait = None if serve else asyncio.create_task(self._idle.wait())
        if idle_wait is not None:
            waits.add(idle_wait)
        try:
            done, _ = await asyncio.wait(waits, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
            if idle_wait is not None and idle_wait in done and not self._running:
                stopped_by = "sources ended"
            elif stop_wait in done:
                stopped_by = self._stop_reason or "stopped"
            else:
                stopped_by = f"duration {duration_s:g} s"
            self._closing = True  # no stream may start from here on
            for hook in list(self.on_stopping):
                try:
                    await asyncio.wait_for(hook(), self.config.stop_timeout_s)
                except Exception:
                    log.exception("monitor: a stopping hook failed; the streams are closed anyway")
            running = list(self._running.values())
            if running:
                log.info("monitor: stopping (%s)", stopped_by)
                await asyncio.gather(*(w.source.aclose() for w, _ in running), return_exceptions=True)
                tasks = [t for _, t in running]
                all_done = asyncio.gather(*tasks, return_exceptions=True)
                try:
                    await asyncio.wait_for(asyncio.shield(all_done), self.config.stop_timeout_s)
                except TimeoutError:
                    log.warning("monitor: streams did not finish within %.1f s; cancelling them",
                                self.config.stop_timeout_s)
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            return stopped_by
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def install_signal_handlers(monitor: Monitor, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """SIGINT and SIGTERM stop `monitor` gracefully (flush sinks, exit 0); a second SIGINT interrupts.

    Returns a function that removes the handlers. Where the loop cannot take signal handlers (not the
    main thread, Windows), nothing is installed.
    """
    installed: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        if monitor._stop_reason is not None and sig == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("monitor: %s received, stopping", sig.name)
        monitor.stop(f"{sig.name}")

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


def run_monitor(
    config: MonitorConfig,
    *,
    duration_s: float | None = None,
    handle_signals: bool = True,
    **kwargs: Any,
) -> MonitorReport:
    """Synchronous entry point for commands: run a Monitor in a fresh event loop, signals handled."""

    async def main() -> MonitorReport:
        monitor = Monitor(config, **kwargs)
        remove = install_signal_handlers(monitor, asyncio.get_running_loop()) if handle_signals else (lambda: None)
        try:
            return await monitor.run(duration_s)
        finally:
            remove()

    return asyncio.run(main())
