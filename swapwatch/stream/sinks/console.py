"""The console view: a live table on a terminal, plain log lines anywhere else.

On a TTY a rich `Live` table shows one row per stream (source state, verdict, faces tracked, fps,
latency, top score, alerts so far). It fits an 80-column terminal: no borders, long stream names cut
with an ellipsis; each stream's last change gets its own column from `WIDE_TABLE` columns on, and
below that the newest change of any stream is the table's caption. Redraws happen on the event loop
when events arrive, at most `refresh_per_second` times a second, without rich's refresh thread: the
table only changes when an event comes, and a second thread writing to the terminal would be one more
thing to stop on SIGTERM.

When stdout is not a terminal (a service, a pipe, CI), a redrawn table would be garbage in a log, so the
sink writes one plain line per state change and per stream change, and one summary line per stream at
most every `plain_summary_every_s` seconds. `swapwatch watch` then leaves the sources' own log lines
about those changes out of stderr, so each change is printed once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.stream.events import Event

if TYPE_CHECKING:
    from rich.console import JustifyMethod
    from rich.table import Table
    from rich.text import Text

STATE_STYLE = {"clear": "green", "suspicious": "dark_orange", "alert": "bold red"}
WIDE_TABLE = 112
"""Terminal width from which the table has a per-stream "last change" column (it takes 33 columns)."""
STREAM_COLUMN_MAX = 16
"""Stream names longer than this are cut (with an ellipsis) below WIDE_TABLE; up to twice this above it."""


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
        self._newest_change = ""

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
            self._newest_change = f"{when} {event.stream} #{event.track} {event.previous_state}->{event.state}"
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

    def table(self) -> Table:
        """The rich Table of all streams, as wide as the console allows (see the module docstring)."""
        from rich.table import Table
        from rich.text import Text

        wide = self.console.width >= WIDE_TABLE
        caption = None if wide or not self._newest_change else f"last change: {self._newest_change}"
        t = Table(title="swapwatch", box=None, padding=(0, 1), pad_edge=False, expand=False, caption=caption,
                  caption_justify="left")
        spare = self.console.width - WIDE_TABLE if wide else 0  # longer stream names where the terminal allows
        t.add_column("stream", max_width=min(2 * STREAM_COLUMN_MAX, STREAM_COLUMN_MAX + spare), no_wrap=True,
                     overflow="ellipsis")
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("source", "left"), ("state", "left"), ("faces", "right"), ("fps", "right"), ("latency", "right"),
            ("score", "right"), ("alerts", "right"),
        )
        for col, justify in columns:
            t.add_column(col, justify=justify, no_wrap=True)
        if wide:
            t.add_column("last change", no_wrap=True, overflow="ellipsis")
        for row in self.rows.values():
            latency = "-" if row.latency_ms is None else f"{row.latency_ms:.0f} ms"
            cells: list[Text | str] = [
                Text(row.stream), row.source_state, Text(row.state, style=STATE_STYLE.get(row.state, "")),
                str(row.tracks), _fmt(row.fps, ".1f"), latency, _fmt(row.score, ".3f"), str(row.alerts),
            ]
            t.add_row(*cells, *([row.last_change] if wide else []))
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
