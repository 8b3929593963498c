"""The console view: a live table on a terminal, plain log lines anywhere else.

On a TTY a rich `Live` table shows one row per stream (source state, verdict, tracks, fps, latency, top
score, alerts so far, last change). Redraws happen on the event loop when events arrive, at most
`refresh_per_second` times a second, without rich's refresh thread: the table only changes when an event
comes, and a second thread writing to the terminal would be one more thing to stop on SIGTERM.

When stdout is not a terminal (a service, a pipe, CI), a redrawn table would be garbage in a log, so the
sink writes one plain line per state change and per stream change, and one summary line per stream at
most every `plain_summary_every_s` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.stream.events import Event

STATE_STYLE = {"clear": "green", "suspicious": "dark_orange", "alert": "bold red"}


class ConsoleConfig(StrictModel):
    """The console view."""

    mode: Literal["auto", "live", "plain"] = Field(
        "auto", description="live: rich table; plain: log lines; auto: live on a terminal, plain otherwise."
    )
    refresh_per_second: float = Field(4.0, gt=0, description="Most redraws of the live table per second.")
    plain_summary_every_s: float = Field(
        10.0, ge=0, description="Plain mode: one summary line per stream at most this often (0: no summary lines)."
    )


@dataclass
class StreamRow:
    """What the console knows about one stream."""

    stream: str
    source_state: str = "-"
    state: str = "clear"
    tracks: int = 0
    fps: float | None = None
    latency_ms: float | None = None
    score: float | None = None
    alerts: int = 0
    last_change: str = ""


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


class ConsoleSink:
    """Live table or plain lines on a rich Console (stdout by default)."""

    name = "console"

    def __init__(self, config: ConsoleConfig | None = None, console: Any = None) -> None:
        from rich.console import Console

        self.config = config or ConsoleConfig()
        self.console = console if console is not None else Console()
        mode = self.config.mode
        self.live_mode = mode == "live" or (mode == "auto" and self.console.is_terminal)
        self.rows: dict[str, StreamRow] = {}
        self._live: Any = None
        self._last_draw = 0.0
        self._last_summary: dict[str, float] = {}

    # -- model -------------------------------------------------------------------------------------------
    def _row(self, stream: str) -> StreamRow:
        row = self.rows.get(stream)
        if row is None:
            row = self.rows[stream] = StreamRow(stream)
        return row

    def apply(self, event: Event) -> str | None:
        """Update the rows from `event`; return the plain line this event deserves, or None."""
        row = self._row(event.stream)
        when = event.time.strftime("%H:%M:%S")
        if event.type == "stream":
            row.source_state = event.source_state or row.source_state
            row.state = event.state
            if event.source_state in ("ended", "failed"):
                row.tracks = 0
            return f"{event.time.isoformat(timespec='seconds')} {event.stream}: source {event.source_state}" + (
                f" ({event.reason})" if event.reason else ""
            )
        if event.type == "state":
            if event.latency_ms is not None:
                row.latency_ms = event.latency_ms
            if event.state == "alert" and event.previous_state != "alert":
                row.alerts += 1
            row.last_change = f"{when} #{event.track} {event.previous_state}->{event.state}"
            end = " (track ended)" if event.ended else ""
            return (
                f"{event.time.isoformat(timespec='seconds')} {event.stream}: track {event.track} "
                f"{event.previous_state} -> {event.state.upper()} score {_fmt(event.score, '.3f')}{end}"
                + (f" ({event.reason})" if event.reason else "")
            )
        # summary
        row.state = event.state
        row.tracks = event.tracks or 0
        row.fps = event.fps
        row.score = event.score
        if event.latency_ms is not None:
            row.latency_ms = event.latency_ms
        every = self.config.plain_summary_every_s
        now = time.monotonic()
        if every <= 0 or now - self._last_summary.get(event.stream, -1e18) < every:
            return None
        self._last_summary[event.stream] = now
        return (
            f"{event.time.isoformat(timespec='seconds')} {event.stream}: {event.state} tracks {row.tracks} "
            f"fps {_fmt(row.fps, '.1f')} latency {_fmt(row.latency_ms, '.0f')} ms top {_fmt(row.score, '.3f')}"
        )

    def table(self) -> Any:
        """The rich Table of all streams."""
        from rich.table import Table

        t = Table(title="swapwatch", expand=False)
        for col, justify in (
            ("stream", "left"), ("source", "left"), ("state", "left"), ("tracks", "right"), ("fps", "right"),
            ("latency ms", "right"), ("top score", "right"), ("alerts", "right"), ("last change", "left"),
        ):  # fmt: skip
            t.add_column(col, justify=justify)  # type: ignore[arg-type]
        for row in self.rows.values():
            style = STATE_STYLE.get(row.state, "")
            t.add_row(
                row.stream, row.source_state, f"[{style}]{row.state}[/]", str(row.tracks), _fmt(row.fps, ".1f"),
                _fmt(row.latency_ms, ".0f"), _fmt(row.score, ".3f"), str(row.alerts), row.last_change,
            )  # fmt: skip
        return t

    # -- sink --------------------------------------------------------------------------------------------
    async def publish(self, event: Event) -> None:
        line = self.apply(event)
        if not self.live_mode:
            if line is not None:
                self.console.file.write(line + "\n")
                self.console.file.flush()
            return
        if self._live is None:
            from rich.live import Live

            self._live = Live(self.table(), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        now = time.monotonic()
        urgent = event.type != "summary"  # state and stream changes are shown at once
        if urgent or now - self._last_draw >= 1.0 / self.config.refresh_per_second:
            self._last_draw = now
            self._live.update(self.table(), refresh=True)

    async def aclose(self) -> None:
        if self._live is not None:
            self._live.update(self.table(), refresh=True)
            self._live.stop()
            self._live = None
