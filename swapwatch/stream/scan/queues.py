"""A bounded queue between two scan stages that records its peak size and can be abandoned.

`queue.Queue(maxsize)` already gives the back-pressure that keeps memory flat: the decoder blocks
once `maxsize` frames wait for the face stage. Two things are added:
- `peak`, the most items it ever held, so tests and benchmarks can check the bound really held;
- a shared stop event: when the consumer goes away (an error, or the caller stops iterating), blocked
  producers wake up within `poll_s` and exit, instead of waiting forever on a queue nobody reads.
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """The pipeline was stopped while this thread waited on a queue."""


class StageQueue(Generic[T]):
    """Bounded FIFO with peak-size tracking and stop-aware blocking put/get."""

    def __init__(self, name: str, maxsize: int, stop: threading.Event, poll_s: float = 0.1) -> None:
        if maxsize < 1:
            raise ValueError(f"{name}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self._q: queue.Queue[T] = queue.Queue(maxsize)
        self._stop = stop
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self.peak = 0
        self.puts = 0

    def put(self, item: T) -> None:
        while True:
            if self._stop.is_set():
                raise Stopped(self.name)
            try:
                self._q.put(item, timeout=self._poll_s)
                break
            except queue.Full:
                continue
        with self._lock:
            self.puts += 1
            self.peak = max(self.peak, self._q.qsize())

    def get(self) -> T:
        while True:
            if self._stop.is_set():
                raise Stopped(self.name)
            try:
                return self._q.get(timeout=self._poll_s)
            except queue.Empty:
                continue

    def get_nowait(self) -> T | None:
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def qsize(self) -> int:
        return self._q.qsize()
