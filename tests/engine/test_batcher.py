"""The micro-batcher: coalescing, result routing, max-wait flushes, back-pressure, failure isolation, close.

One test runs a real ONNX Runtime engine on real face crops end to end. The others use `RecordingEngine`,
a pure-Python double that records batch sizes and can block or fail on demand, because ordering,
back-pressure and failure isolation need an engine whose timing the test controls. No test asserts on
speed; time bounds here only stop a broken batcher from hanging the suite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from swapwatch.config import parse_config
from swapwatch.engine.batcher import BatcherClosed, BatcherConfig, EngineBatchError, MicroBatcher
from swapwatch.engine.profile import BatchTiming, EngineProfile
from swapwatch.errors import ConfigError

T = TypeVar("T")
SIZE = 4
HANG = 10.0  # seconds: only a broken batcher gets near this


class RecordingEngine:
    """Scores a crop as its first pixel, records batch sizes; can block on a gate or fail on a poison crop."""

    name = "recording"
    input_size = SIZE

    def __init__(self, max_batch: int | None = None, poison: float | None = None, gated: bool = False) -> None:
        self.max_batch = max_batch
        self.poison = poison
        self.batches: list[list[float]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        ids = [float(v) for v in batch[:, 0, 0, 0]]
        self.batches.append(ids)
        self.entered.set()
        if not self.gate.wait(HANG):
            raise RuntimeError("test gate never opened")
        if self.poison is not None and self.poison in ids:
            raise RuntimeError(f"poison crop {self.poison} in batch")
        return batch[:, 0, 0, 0].copy()

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def crop(value: float) -> np.ndarray:
    return np.full((3, SIZE, SIZE), value, np.float32)


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), HANG)

    return asyncio.run(bounded())


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


def cfg(**kw: Any) -> BatcherConfig:
    base: dict[str, Any] = {"max_batch": 4, "max_wait_ms": 20.0, "max_queue": 64}
    return BatcherConfig(**{**base, **kw})


# -- real engine, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("method, max_batch", [("masm", 4), ("airl", 3)])
def test_real_onnx_engine_scores_match_one_by_one(smoke_onnx: dict[str, Path], method: str, max_batch: int) -> None:
    from swapwatch.engine.onnx_runtime import OnnxEngine
    from swapwatch.samples import sample_crops

    engine = OnnxEngine(smoke_onnx[method])
    raw = sample_crops(engine.input_size, engine.meta.alignment.margin)
    x = engine.preprocess(raw)
    expected = np.array([engine.score_crops(raw[i : i + 1])[0] for i in range(len(raw))])
    order = [i % len(raw) for i in range(3 * len(raw))]  # each face three times, concurrently

    async def main() -> tuple[list[Any], Any]:
        async with MicroBatcher(engine, cfg(max_batch=max_batch)) as b:
            results = await asyncio.gather(*(b.submit(x[i], key=i) for i in order))
            return results, b.stats()

    results, stats = run(main)
    assert [r.key for r in results] == order
    np.testing.assert_allclose([r.score for r in results], expected[order], atol=1e-5)
    assert all(1 <= r.batch_size <= max_batch for r in results)
    assert stats.batches >= len(order) // max_batch and stats.mean_batch > 1  # coalesced, never above the cap
    assert stats.completed == len(order) and stats.failed == 0


def test_real_engine_without_sizes_is_profiled_at_start(smoke_onnx: dict[str, Path]) -> None:
    from swapwatch.engine.onnx_runtime import OnnxEngine

    engine = OnnxEngine(smoke_onnx["masm"])
    x = np.zeros((3, engine.input_size, engine.input_size), np.float32)

    async def main() -> MicroBatcher:
        async with MicroBatcher(engine, BatcherConfig(budget_ms=50.0)) as b:
            assert (await b.submit(x)).batch_size == 1
            return b

    b = run(main)
    assert b.profile is not None and [t.batch for t in b.profile.timings] == [1, 2, 4, 8, 16, 32]
    assert b.max_batch in {t.batch for t in b.profile.timings} and b.max_wait_ms is not None and b.max_wait_ms >= 0


# -- coalescing and routing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, max_batch, expected_sizes",
    [
        (10, 4, [4, 4, 2]),
        (3, 8, [3]),
        (5, 1, [1, 1, 1, 1, 1]),
        (8, 8, [8]),
        (9, 8, [8, 1]),
    ],
)
def test_concurrent_submits_coalesce_up_to_max_batch(n: int, max_batch: int, expected_sizes: list[int]) -> None:
    engine = RecordingEngine()

    async def main() -> list[Any]:
        async with MicroBatcher(engine, cfg(max_batch=max_batch, max_wait_ms=5.0)) as b:
            return await asyncio.gather(*(b.submit(crop(i), key=f"track-{i}") for i in range(n)))

    results = run(main)
    assert engine.sizes == expected_sizes
    assert [r.key for r in results] == [f"track-{i}" for i in range(n)]
    assert [r.score for r in results] == [float(i) for i in range(n)]  # each requester gets its own crop's score
    assert [r.batch_size for r in results] == [s for s in expected_sizes for _ in range(s)]
    assert all(r.queue_ms >= 0 and r.infer_ms >= 0 for r in results)


def test_engine_cap_limits_the_configured_batch() -> None:
    engine = RecordingEngine(max_batch=3)

    async def main() -> int | None:
        async with MicroBatcher(engine, cfg(max_batch=16, max_wait_ms=5.0)) as b:
            await asyncio.gather(*(b.submit(crop(i)) for i in range(7)))
            return b.max_batch

    assert run(main) == 3
    assert engine.sizes == [3, 3, 1]


@pytest.mark.parametrize("max_wait_ms", [0.0, 30.0])
def test_max_wait_flushes_a_lone_request(max_wait_ms: float) -> None:
    engine = RecordingEngine()

    async def main() -> Any:
        async with MicroBatcher(engine, cfg(max_batch=8, max_wait_ms=max_wait_ms)) as b:
            return await b.submit(crop(7.0))

    result = run(main)
    assert engine.sizes == [1]
    assert result.batch_size == 1 and result.score == 7.0
    assert result.queue_ms >= 0.8 * max_wait_ms  # it did wait for company, then went alone


def test_requests_arriving_while_the_engine_is_busy_form_the_next_batch() -> None:
    engine = RecordingEngine(gated=True)

    async def main() -> list[Any]:
        async with MicroBatcher(engine, cfg(max_batch=8, max_wait_ms=0.0)) as b:
            first = asyncio.ensure_future(b.submit(crop(0)))
            await until(engine.entered.is_set)
            rest = [asyncio.ensure_future(b.submit(crop(i))) for i in range(1, 6)]
            await asyncio.sleep(0.02)
            engine.gate.set()
            return await asyncio.gather(first, *rest)

    results = run(main)
    assert engine.sizes == [1, 5]  # max_wait 0, yet the five that queued meanwhile ran together
    assert [r.score for r in results] == [0, 1, 2, 3, 4, 5]


def test_event_loop_stays_responsive_while_the_engine_runs() -> None:
    engine = RecordingEngine(gated=True)

    async def main() -> int:
        async with MicroBatcher(engine, cfg(max_batch=1, max_wait_ms=0.0)) as b:
            pending = asyncio.ensure_future(b.submit(crop(1)))
            await until(engine.entered.is_set)
            ticks = 0
            for _ in range(10):  # the engine is blocked in its thread; the loop must keep ticking
                await asyncio.sleep(0.001)
                ticks += 1
            engine.gate.set()
            await pending
            return ticks

    assert run(main) == 10


def test_cancelled_request_is_withdrawn_before_its_batch() -> None:
    engine = RecordingEngine(gated=True)

    async def main() -> list[Any]:
        async with MicroBatcher(engine, cfg(max_batch=4, max_wait_ms=0.0)) as b:
            first = asyncio.ensure_future(b.submit(crop(0)))
            await until(engine.entered.is_set)
            keep = asyncio.ensure_future(b.submit(crop(1)))
            drop = asyncio.ensure_future(b.submit(crop(2)))
            await asyncio.sleep(0.01)
            drop.cancel()
            engine.gate.set()
            out = await asyncio.gather(first, keep)
            assert b.stats().cancelled == 1
            return out

    run(main)
    assert engine.batches == [[0.0], [1.0]]


# -- back-pressure --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_queue", [1, 2, 3])
def test_full_queue_makes_submit_wait_and_try_submit_drop(max_queue: int) -> None:
    engine = RecordingEngine(gated=True)

    async def main() -> None:
        async with MicroBatcher(engine, cfg(max_batch=1, max_wait_ms=0.0, max_queue=max_queue)) as b:
            running = asyncio.ensure_future(b.submit(crop(0)))  # taken by the (blocked) engine
            await until(engine.entered.is_set)
            queued = [asyncio.ensure_future(b.submit(crop(i + 1))) for i in range(max_queue)]
            await asyncio.sleep(0.01)
            assert b.stats().queue_depth == max_queue
            waiting = asyncio.ensure_future(b.submit(crop(99)))
            await asyncio.sleep(0.02)
            assert not waiting.done(), "submit on a full queue must wait"
            assert b.try_submit(crop(100)) is None, "try_submit on a full queue must drop"
            assert b.stats().dropped == 1
            engine.gate.set()
            results = await asyncio.gather(running, *queued, waiting)
            assert [r.score for r in results] == [0.0, *range(1, max_queue + 1), 99.0]
            fut = b.try_submit(crop(5))  # room again
            assert fut is not None and (await fut).score == 5.0

    run(main)


# -- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, poison, failed",
    [
        ([0, 1, 2, 3], 1, {0, 1}),  # first batch [0, 1] fails, [2, 3] still scored
        ([0, 1, 2, 3], 3, {2, 3}),
        ([0, 1, 2, 3, 4], 4, {4}),
    ],
)
def test_engine_error_fails_only_its_batch(values: list[int], poison: int, failed: set[int]) -> None:
    engine = RecordingEngine(poison=float(poison))

    async def main() -> tuple[list[Any], Any]:
        async with MicroBatcher(engine, cfg(max_batch=2, max_wait_ms=5.0)) as b:
            out = await asyncio.gather(*(b.submit(crop(v)) for v in values), return_exceptions=True)
            after = await b.submit(crop(42))  # the batcher keeps serving
            assert after.score == 42.0
            return out, b.stats()

    out, stats = run(main)
    for v, r in zip(values, out, strict=True):
        if v in failed:
            assert isinstance(r, EngineBatchError) and "poison" in str(r), (v, r)
            assert isinstance(r.__cause__, RuntimeError)
        else:
            assert r.score == float(v)
    assert stats.failed_batches == 1 and stats.failed == len(failed)


def test_wrong_number_of_scores_fails_the_batch() -> None:
    class Short(RecordingEngine):
        def infer(self, batch: np.ndarray) -> np.ndarray:
            return np.zeros(len(batch) - 1, np.float32)

    async def main() -> None:
        async with MicroBatcher(Short(), cfg(max_batch=2, max_wait_ms=5.0)) as b:
            with pytest.raises(EngineBatchError, match="1 scores for a batch of 2"):
                await asyncio.gather(b.submit(crop(0)), b.submit(crop(1)))

    run(main)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((SIZE, SIZE, 3), np.float32), r"CHW crop \(3, S, S\)"),  # HWC, i.e. not preprocessed
        (np.zeros((3, SIZE + 1, SIZE + 1), np.float32), r"shape \(3, 4, 4\)"),
        (np.zeros((1, 3, SIZE, SIZE), np.float32), "CHW crop"),  # a batch, not a crop
    ],
)
def test_wrong_crop_shape_is_refused_at_submit(bad: np.ndarray, match: str) -> None:
    engine = RecordingEngine()

    async def main() -> None:
        async with MicroBatcher(engine, cfg()) as b:
            with pytest.raises(ValueError, match=match):
                await b.submit(bad)
            assert (await b.submit(crop(1))).score == 1.0

    run(main)
    assert engine.sizes == [1]


# -- lifecycle ------------------------------------------------------------------------------------


def test_aclose_cancels_waiting_requests_and_finishes_the_running_batch() -> None:
    engine = RecordingEngine(gated=True)

    async def main() -> None:
        b = await MicroBatcher(engine, cfg(max_batch=1, max_wait_ms=0.0, max_queue=1)).start()
        running = asyncio.ensure_future(b.submit(crop(0)))
        await until(engine.entered.is_set)
        queued = asyncio.ensure_future(b.submit(crop(1)))
        blocked = asyncio.ensure_future(b.submit(crop(2)))  # queue full: parked in submit
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(b.aclose())
        for fut in (queued, blocked):
            with pytest.raises(BatcherClosed, match="closed before this crop was scored"):
                await fut
        assert not closing.done(), "aclose waits for the batch that is running"
        engine.gate.set()
        assert (await running).score == 0.0  # the running batch still delivers
        await closing
        with pytest.raises(BatcherClosed):
            await b.submit(crop(3))
        with pytest.raises(BatcherClosed):
            b.try_submit(crop(3))
        await b.aclose()  # idempotent

    run(main)
    assert engine.batches == [[0.0]]


def test_submit_before_start_is_refused() -> None:
    async def main() -> None:
        b = MicroBatcher(RecordingEngine(), cfg())
        with pytest.raises(BatcherClosed, match="not started"):
            await b.submit(crop(0))

    run(main)


def test_sizes_come_from_the_profile_when_not_configured() -> None:
    # A GPU-like profile: throughput keeps growing with the batch, and the budget stops it at 8.
    profile = EngineProfile(
        engine="recording",
        timings=[BatchTiming(1, 2.0, 2.2, 10), BatchTiming(2, 2.1, 2.3, 10), BatchTiming(4, 2.4, 2.6, 10),
                 BatchTiming(8, 3.0, 3.5, 10), BatchTiming(16, 5.0, 9.0, 10)],
    )
    engine = RecordingEngine()

    async def main() -> tuple[int | None, float | None, Any]:
        async with MicroBatcher(engine, BatcherConfig(budget_ms=5.0), profile=profile) as b:
            await asyncio.gather(*(b.submit(crop(i)) for i in range(10)))
            return b.max_batch, b.max_wait_ms, b.stats()

    max_batch, max_wait, stats = run(main)
    assert max_batch == 8 and max_wait == pytest.approx(1.0)  # half the single-crop latency
    assert engine.sizes == [8, 2]
    assert stats.max_batch == 8 and stats.batch_sizes == {8: 1, 2: 1}


@pytest.mark.parametrize(
    "data, field",
    [
        ({"max_queue": 0}, "max_queue"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"workers": 0}, "workers"),
        ({"max_queue": None}, "max_queue"),  # never an unbounded queue
        ({"max_wait": 5}, "max_wait"),  # misspelt key
    ],
)
def test_config_rejects_bad_values(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_config(BatcherConfig, data)
