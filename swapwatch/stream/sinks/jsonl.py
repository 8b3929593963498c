"""Events as JSON lines: one `Event.to_json()` object per line, flushed line by line.

Each line goes to the OS in one `write` + `flush`, so whatever kills the process (SIGTERM without a
handler, SIGKILL, a crash) leaves complete lines behind, at worst missing the last event. If a previous
run did die mid-line, the file is opened with a newline first so the next line starts clean and every
complete line still parses. `fsync` makes lines survive a power cut too, at the cost of one disk sync
per event (events are few: state changes and periodic summaries).

Writes run in a worker thread (`asyncio.to_thread`) so a slow disk never stalls the event loop;
`close()` is synchronous, idempotent and registered with `atexit`, so a SIGTERM handler (or interpreter
exit) can call it from any thread.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import threading
from pathlib import Path
from typing import IO

from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.errors import SwapwatchError
from swapwatch.stream.events import Event, EventType


def _default_types() -> list[EventType]:
    return ["state", "summary", "stream"]


class JsonlConfig(StrictModel):
    """The JSON-lines event file."""

    path: str = Field(..., description="File the events are appended to, one JSON object per line; '-' for stdout.")
    append: bool = Field(True, description="Append to an existing file (false: truncate it at start).")
    types: list[EventType] = Field(
        default_factory=_default_types, description="Event types written (others skipped)."
    )
    fsync: bool = Field(False, description="fsync after every line (survives power loss; one disk sync per event).")


class JsonlSink:
    """Append events to a JSON-lines file (or stdout)."""

    name = "jsonl"

    def __init__(self, config: JsonlConfig) -> None:
        self.config = config
        self._types = set(config.types)
        self._lock = threading.Lock()
        self.lines = 0
        self._owns_file = config.path != "-"
        self.path = None if not self._owns_file else Path(config.path)
        if self.path is None:
            self._file: IO[str] | None = sys.stdout
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                needs_newline = (
                    config.append
                    and self.path.is_file()
                    and self.path.stat().st_size > 0
                    and not _ends_with_newline(self.path)
                )
                self._file = open(self.path, "a" if config.append else "w", encoding="utf-8")  # noqa: SIM115
            except OSError as err:
                raise SwapwatchError(f"{config.path}: cannot open the events file: {err.strerror or err}") from None
            if needs_newline:  # a previous run died mid-line: end that line so ours parse
                self._file.write("\n")
                self._file.flush()
        atexit.register(self.close)

    def write_line(self, event: Event) -> bool:
        """Write one event now (blocking); False when it was filtered out or the sink is closed."""
        if event.type not in self._types:
            return False
        line = event.to_json() + "\n"
        with self._lock:
            if self._file is None:
                return False
            self._file.write(line)
            self._file.flush()
            if self.config.fsync and self._owns_file:
                os.fsync(self._file.fileno())
            self.lines += 1
        return True

    async def publish(self, event: Event) -> None:
        if event.type in self._types:
            await asyncio.to_thread(self.write_line, event)

    def close(self) -> None:
        """Flush and close (safe to call twice, from any thread, e.g. a SIGTERM handler)."""
        with self._lock:
            f, self._file = self._file, None
        if f is not None:
            try:
                f.flush()
            finally:
                if self._owns_file:
                    f.close()
        atexit.unregister(self.close)

    async def aclose(self) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
