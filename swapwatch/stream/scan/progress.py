"""The scan's progress bar on stderr: frames done / total, frames per second, files, time left.

Shown only when stderr is a terminal and SWAPWATCH_PROGRESS is not "0", so logs, pipes and CI output
stay clean. The total grows as files open (a video's frame count is read from its header when the
decoder reaches it), so the bar never waits for every file to be probed before the first frame.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import IO, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def progress_enabled(stream: IO[str] | None = None) -> bool:
    """True when `stream` (default stderr) is a TTY and SWAPWATCH_PROGRESS is not set to 0."""
    if os.environ.get("SWAPWATCH_PROGRESS", "1").strip() == "0":
        return False
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class FpsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} fps" if speed else "   ... fps", style="progress.data.speed")


class ScanProgress:
    """`with ScanProgress(n_files) as p: p.add_total(n); p.advance(frames); p.file_done()`; a no-op when disabled."""

    def __init__(self, n_files: int, enabled: bool | None = None, stream: IO[str] | None = None) -> None:
        self.enabled = progress_enabled(stream) if enabled is None else enabled
        self.n_files = n_files
        self.files_done = 0
        self._progress: Progress | None = None
        self._task = None
        if self.enabled:
            console = Console(file=stream if stream is not None else sys.stderr)
            self._progress = Progress(
                TextColumn("[bold]scan[/bold] {task.fields[files]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("frames"),
                FpsColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task("scan", total=0, files=self._files())

    def _files(self) -> str:
        return f"{self.files_done}/{self.n_files} files"

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add_total(self, frames: int) -> None:
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[0]
            self._progress.update(self._task, total=(task.total or 0) + frames)

    def advance(self, frames: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, frames)

    def file_done(self, frames_short: int = 0) -> None:
        """A file finished; `frames_short` frames it was expected to have never came (truncated, max)."""
        self.files_done += 1
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[0]
            total = (task.total or 0) - max(0, frames_short)
            self._progress.update(self._task, total=total, files=self._files())
