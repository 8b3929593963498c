"""Fault injection on real servers (issue 10): what breaks, and which test shows swapwatch copes.

Real parts only: the GStreamer RTSP server (killed with SIGKILL, restarted, frozen), a TCP server that
accepts and never answers, an aiohttp webhook receiver, child processes killed with SIGKILL, a tmpfs
mounted small and filled up, and the real Monitor (detector, ONNX model, sinks) on the swap clip.

The matrix, fault -> the tests that cover it (in this file unless a module is named):

1. RTSP server
   - killed with SIGKILL mid-stream, back later on the same port (reconnecting -> live, counted once,
     one frame numbering): test_rtsp.py::test_server_killed_and_restarted_reconnects
   - restarted: the same test (kill, 0.5 s down with refused retries, restart, resumes from the clip start)
   - one server dies, the other stream keeps going: test_rtsp.py::test_two_sources_one_server_dies_the_other_keeps_going
   - hung, accepting TCP but never answering (each attempt times out and is retried, the state changes say
     why, the other stream is unaffected): test_hung_server_is_dropped_and_retried_while_another_stream_goes_on[silent]
   - hung, stopping sending mid-stream (the stall watchdog drops it and retries, every new connection goes
     live and stalls again, the other stream is unaffected):
     test_hung_server_is_dropped_and_retried_while_another_stream_goes_on[frozen]
   - the same with no retries left (failed, the stall named): test_rtsp.py::test_frozen_server_trips_the_stall_watchdog
   - end-of-stream on a live URL is a loss: test_rtsp.py::test_end_of_stream_on_a_live_url_is_a_loss
2. Webhook receiver
   - down, then up (every event, once after de-duplication, in order per stream):
     test_outbox.py::test_receiver_down_then_up_gets_every_event_once_after_dedup
   - slow (every event, bounded concurrency):
     test_outbox.py::test_slow_receiver_gets_every_event_with_bounded_concurrency
   - hung (publish never waits on it, the dispatcher does not spin):
     test_outbox.py::test_publish_never_waits_on_the_network,
     test_outbox.py::test_dispatcher_sleeps_while_requests_hang,
     test_sinks.py::test_webhook_hanging_receiver_never_blocks_publish
   - erroring (5xx, 429, 408 retried; 4xx dropped, counted, logged per reason; a request that times out
     retried up to max_attempts): test_outbox.py::test_answers_decide_retry_or_drop,
     test_outbox.py::test_drops_are_logged_per_reason_with_counts_not_per_event,
     test_sinks.py::test_webhook_retries_then_succeeds, test_sinks.py::test_webhook_outcomes
   - down for longer than max_age_s, or the outbox full: test_outbox.py::test_events_older_than_max_age_are_dropped,
     test_outbox.py::test_outbox_full_drops_the_oldest_not_in_flight_and_keeps_the_rest_on_disk
3. Disk full under the evidence folder (a 512 KiB tmpfs, filled): the monitor keeps scoring every frame,
   every event reaches the JSONL file, each alert's evidence is a counted drop (reason disk_full, in the
   sink and in swapwatch_sink_dropped_total), logged once per reason (repeats folded into one more line),
   and no file is left: test_evidence_disk_full_keeps_the_monitor_scoring_and_leaves_nothing_half_written
   [nothing-fits] (the first file fails) and [event-json-fits] (the clip fails part-way).
   A writer killed mid-evidence leaves a hidden partial folder, removed at the next start:
   test_partial_evidence_of_a_killed_writer_is_removed_at_start
4. Swapwatch killed with SIGKILL during webhook delivery, then restarted: nothing lost:
   test_outbox.py::test_kill_9_during_delivery_loses_no_event (the killed child runs the WebhookSink on its
   own, not a whole monitor; the monitor's path into it is SinkSet -> WebhookSink.publish, one committed
   SQLite insert), test_outbox.py::test_a_new_sink_on_the_same_outbox_resumes_without_new_events
   (a new SinkSet from build_sinks resumes the outbox without new events).
Also: a sink that raises or hangs never stalls the others:
test_sinks.py::test_sinkset_isolates_failing_and_hanging_sinks; a JSONL writer stopped with SIGTERM keeps
its complete lines: test_sinks.py::test_jsonl_complete_lines_survive_sigterm.

Waits poll a condition under a deadline that only turns a hang into a failure; nothing asserts on how
long anything took.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.events import Event, state_event
from swapwatch.stream.pipeline import Monitor
from swapwatch.stream.sinks.evidence import EVIDENCE_DROP_REASONS, EvidenceConfig, EvidenceSink, failure_reason
from swapwatch.stream.sinks.metrics import Metrics
from swapwatch.stream.sources import Source, SourceError, SourceStalledError, SourceTimeoutError, open_source
from swapwatch.stream.temporal import LEVEL, SmoothingConfig
from tests.stream.conftest import read_marker, run_async, states
from tests.stream.test_pipeline import monitor_config, read_events
from tests.stream.test_rtsp import QUICK, Reader, ServerFactory, needs_gstreamer, rtsp_source
from tests.stream.test_sinks import ts

SAFETY_S = 60.0


async def until(cond: Callable[[], bool], what: str, safety_s: float = SAFETY_S) -> None:
    """Poll `cond` until it holds; fail naming `what` after `safety_s` (a hang, not a slow machine)."""
    deadline = asyncio.get_running_loop().time() + safety_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


# -- RTSP: hung servers ----------------------------------------------------------------------------------------


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection, reads nothing, answers nothing, closes nothing."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"rtsp://127.0.0.1:{self.port}/live"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()


def losses_by(source: Source, kind: type[SourceError]) -> int:
    """State changes into `reconnecting` whose error is a `kind`."""
    return sum(1 for c in source.history if c.new == "reconnecting" and isinstance(c.error, kind))


@pytest.mark.parametrize(
    ("hang", "error", "reason", "goes_live"),
    [
        # FFmpeg's open timeout (1 s) ends each attempt, before the first-frame watchdog (0.5 + 1 s) would.
        pytest.param("silent", SourceTimeoutError, "the server accepted the connection but did not answer", False,
                     id="silent"),
        # Every connection gets 15 frames, then nothing: the watchdog (0.5 s), not FFmpeg's read timeout (10 s).
        pytest.param("frozen", SourceStalledError, "(stall watchdog)", True, id="frozen"),
    ],
)
def test_hung_server_is_dropped_and_retried_while_another_stream_goes_on(
    rtsp_server: ServerFactory, hang: str, error: type[SourceError], reason: str, goes_live: bool
) -> None:
    steady = rtsp_server()
    silent: SilentServer | None = None
    if hang == "silent":
        silent = SilentServer()
        url, reader_options = silent.url, {}
    else:
        needs_gstreamer("a frozen stream")
        frozen = rtsp_server(freeze_after=15)
        url, reader_options = frozen.url, frozen.reader_options

    async def scenario() -> tuple[Reader, Reader, int]:
        hung = Reader(open_source(url, name="hung", ffmpeg_options=reader_options, open_timeout_s=1.0,
                                  read_timeout_s=10.0, stall_timeout_s=0.5, reconnect=QUICK, policy="all"))  # fmt: skip
        ok = Reader(rtsp_source(steady, name="steady", reconnect=QUICK))
        await ok.wait_frames(5)
        ok_before = len(ok.frames)
        await until(lambda: losses_by(hung.source, error) >= 3, f"three {error.__name__} losses of the hung stream")
        await until(lambda: len(ok.frames) >= ok_before + 30, "a second of video from the steady stream")
        await asyncio.gather(hung.close(), ok.close())
        return hung, ok, ok_before

    try:
        hung, ok, ok_before = run_async(scenario(), timeout=120)
    finally:
        if silent is not None:
            silent.close()

    seen = states(hung.source)
    assert seen[0] == "connecting" and seen[-1] == "ended" and "failed" not in seen  # retried without end
    drops = [c for c in hung.source.history if c.new == "reconnecting"]
    assert len(drops) >= 3 and all(isinstance(c.error, error) and reason in c.reason for c in drops)
    assert [c.attempt for c in drops] == list(range(1, len(drops) + 1))  # consecutive failures, counted
    assert all(c.retry_in_s is not None and f"retry {c.attempt} in" in c.reason for c in drops)
    stats = hung.source.stats()
    assert stats.last_error is not None and reason in stats.last_error
    if goes_live:  # each new connection played again from the clip's first frame, then froze again
        assert seen[:4] == ["connecting", "live", "reconnecting", "live"]
        assert stats.losses >= 3 and stats.reconnects >= 2
        markers = [read_marker(f.image) for f in hung.frames]
        assert max(markers) < 15 and sum(b < a for a, b in itertools.pairwise(markers)) >= 2
    else:
        assert "live" not in seen and not hung.frames and stats.attempts >= len(drops) - 1  # retries started
        assert silent is not None and len(silent.accepted) >= 3  # the TCP connections were really made
    assert ok.error is None and len(ok.frames) >= ok_before + 30
    assert states(ok.source) == ["connecting", "live", "ended"] and ok.source.stats().losses == 0
    assert {f.stream for f in ok.frames} == {"steady"}


# -- disk full under the evidence folder -----------------------------------------------------------------------


def _mount_problem() -> str | None:
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount not installed"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    return None


@contextmanager
def full_tmpfs(path: Path, size_kib: int, free_kib: int) -> Iterator[Path]:
    """A `size_kib` tmpfs mounted at `path`, filled up but for `free_kib` (page-rounded); always unmounted."""
    problem = _mount_problem()
    if problem:
        pytest.skip(f"disk-full test: {problem}")
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"disk-full test: cannot mount a tmpfs (an unprivileged container?): {done.stderr.strip()}")
    try:
        filler = path / "filler"
        with filler.open("wb", buffering=0) as f:  # unbuffered: a close must not retry what did not fit
            try:
                while True:
                    f.write(b"\xff" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
        os.truncate(filler, filler.stat().st_size - free_kib * 1024)
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


class EventLog:
    """An event sink keeping what the monitor published, to compare the JSONL file with."""

    name = "event-log"

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.events.append(event)

    async def aclose(self) -> None:
        pass


def rises_into(events: list[Event], on_states: list[str]) -> list[Event]:
    """The state events that open an evidence job (see EvidenceSink.publish)."""
    return [
        e for e in events
        if e.type == "state" and not e.ended and e.previous_state is not None
        and LEVEL[e.state] > LEVEL[e.previous_state] and e.state in on_states
    ]  # fmt: skip


ON_STATES = ["suspicious", "alert"]  # two evidence jobs per swapped track at least: repeats to fold in the log


@pytest.mark.parametrize(
    "free_kib",
    [
        pytest.param(0, id="nothing-fits"),  # the first file (event.json) fails
        pytest.param(16, id="event-json-fits"),  # event.json is written, the clip fails part-way
    ],
)
def test_evidence_disk_full_keeps_the_monitor_scoring_and_leaves_nothing_half_written(
    swap_clip: DemoClip, reference_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, free_kib: int
) -> None:
    with full_tmpfs(tmp_path / "disk", 512, free_kib) as disk:
        evidence = disk / "evidence"
        sinks = {
            "jsonl": {"path": str(tmp_path / "events.jsonl")},  # elsewhere: not on the full disk
            "metrics": {},
            "evidence": {"dir": str(evidence), "on_states": ON_STATES, "pre_s": 1.0, "post_s": 1.0},
        }
        source = {"url": str(swap_clip.path), "name": "clip", "realtime": False}
        cfg = monitor_config([source], reference_model, tmp_path, sinks=sinks)
        published = EventLog()
        monitor = Monitor(cfg, extra_sinks=[published])
        with caplog.at_level(logging.WARNING):
            report = asyncio.run(monitor.run())
        left = sorted(str(p.relative_to(evidence)) for p in evidence.rglob("*") if not p.is_dir())
        folders = sorted(str(p.relative_to(evidence)) for p in evidence.rglob("*") if p.is_dir())

    # The monitor kept scoring: every frame, the alert found, the stream ended normally.
    stream = report.streams["clip"]
    assert report.failed == [] and stream.source_state == "ended" and stream.error is None
    assert stream.frames == swap_clip.frames and stream.crops_failed == 0

    # Every event reached the JSONL file, in order, and the JSONL sink lost nothing.
    written = read_events(tmp_path / "events.jsonl")
    assert [e.id for e in written] == [e.id for e in published.events]
    jsonl = report.sinks["jsonl"]
    assert (jsonl["dropped_events"], jsonl["errors"], jsonl["unsent_at_close"]) == (0, 0, 0)
    jobs = rises_into(written, ON_STATES)
    assert any(e.state == "alert" for e in jobs) and len(jobs) >= 2

    # Each alert's evidence failed for lack of space: counted by reason, in the sink and in the metrics.
    sink = monitor.sinks.get(EvidenceSink) if monitor.sinks is not None else None
    assert sink is not None and sink.drops == {"disk_full": len(jobs)} and sink.items == []
    labels = {"sink": "evidence", "kind": "event"}
    assert {r: monitor.metrics.value("swapwatch_sink_dropped_total", {**labels, "reason": r})
            for r in EVIDENCE_DROP_REASONS} == {r: (len(jobs) if r == "disk_full" else 0)
                                                for r in EVIDENCE_DROP_REASONS}  # fmt: skip

    # Logged once per reason (the repeats folded into one more line at close), never per alert or frame.
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    lines = [r for r in warned if r.name == "swapwatch.stream.sinks.evidence"]
    counts = [re.search(r"alerts without evidence \(disk_full\): (\d+)", r.getMessage()) for r in lines]
    assert all(counts) and 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    assert sum(int(m.group(1)) for m in counts if m) == len(jobs)
    assert "No space left on device" in lines[0].getMessage()
    # Nothing else complained about it (a frame queue falling behind under load may, about its own drops).
    others = [r.getMessage() for r in warned if r not in lines and "queue_full" not in r.getMessage()]
    assert not [m for m in others if "evidence" in m or "No space" in m], others

    # Nothing half-written claims to be evidence: no file at all (no index: nothing was complete), no partial
    # folder, no temp index; only the stream's (empty) folder.
    assert left == [] and folders == ["clip"]


def test_partial_evidence_of_a_killed_writer_is_removed_at_start(tmp_path: Path) -> None:
    complete = tmp_path / "cam" / "20250101T000000.000Z-track1"
    partial = tmp_path / "cam" / ".20250101T000001.000Z-track2.partial"
    for folder in (complete, partial):
        folder.mkdir(parents=True)
        (folder / "event.json").write_text("{}\n")
    (partial / "clip.mp4").write_bytes(b"\x00" * 100)  # cut short by the kill

    sink = EvidenceSink(EvidenceConfig(dir=str(tmp_path)))
    run_async(sink.aclose())
    assert not partial.exists() and (complete / "event.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == [complete.name]


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "disk_full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk_full"),
        (PermissionError(errno.EACCES, "Permission denied"), "disk_error"),
        (OSError(errno.EIO, "Input/output error"), "disk_error"),
        (ValueError("PNG encoding failed"), "write_error"),
    ],
)
def test_evidence_failure_reasons(err: Exception, reason: str) -> None:
    assert failure_reason(err) == reason


def test_alerts_over_max_pending_are_counted_drops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    alerts = [state_event("cam", ts(track, "alert", "suspicious"), box=[0, 0, 10, 10], frame_pts=1.0)
              for track in range(4)]  # fmt: skip

    async def main() -> EvidenceSink:
        sink = EvidenceSink(EvidenceConfig(dir=str(tmp_path), max_pending=1), smoothing=SmoothingConfig(),
                            metrics=metrics)
        for event in alerts:
            await sink.publish(event)
        await sink.aclose()  # writes the one pending alert, with the frames there are (none)
        return sink

    with caplog.at_level(logging.WARNING, logger="swapwatch.stream.sinks.evidence"):
        sink = run_async(main())
    assert sink.drops == {"max_pending": 3} and sink.skipped == 3 and len(sink.items) == 1
    labels = {"sink": "evidence", "kind": "event", "reason": "max_pending"}
    assert metrics.value("swapwatch_sink_dropped_total", labels) == 3
    counts = [int(m.group(1)) for r in caplog.records
              if (m := re.search(r"alerts without evidence \(max_pending\): (\d+)", r.getMessage()))]  # fmt: skip
    assert sum(counts) == 3 and len(counts) == len(caplog.records) <= 2

