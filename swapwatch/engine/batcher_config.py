"""What the micro-batcher needs from an engine (`SupportsInfer`) and its knobs (`BatcherConfig`).

Kept apart from batcher.py because the profiler (profile.py) derives a `BatcherConfig` from measured
timings, and the batcher in turn measures a profile when its sizes are left unset.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from pydantic import Field

from swapwatch.config import StrictModel


class SupportsInfer(Protocol):
    """What the batcher needs from an engine: a normalised NCHW float32 batch in, one score per row out.

    `max_batch` (None = unbounded) and `input_size` are read with getattr when present, so any engine
    of swapwatch.engine (or a test double) fits.
    """

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


class BatcherConfig(StrictModel):
    """Micro-batcher knobs. Leave max_batch/max_wait_ms unset to take them from the engine's profile."""

    max_batch: int | None = Field(
        None,
        ge=1,
        description="Most crops per engine call. None: chosen from the engine's measured profile "
        "(the batch with the best throughput whose p95 latency fits budget_ms), capped by the engine's own max_batch.",
    )
    max_wait_ms: float | None = Field(
        None,
        ge=0.0,
        description="Longest time the oldest queued crop waits for others to join its batch. None: from the "
        "profile (a fraction of single-crop latency, a few ms on CPU, under 1 ms on a GPU); 0 never waits.",
    )
    max_queue: int = Field(
        64,
        ge=1,
        description="Most crops waiting for a batch. When full, submit() waits and try_submit() returns None.",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Batches run concurrently (threads calling engine.infer). 1 suits one CPU session or one "
        "GPU stream; more only helps an engine that overlaps calls.",
    )
    budget_ms: float = Field(
        50.0,
        gt=0.0,
        description="Latency budget for one batch, used only when max_batch or max_wait_ms comes from the profile.",
    )
