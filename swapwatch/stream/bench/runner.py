"""Run a stream benchmark: prepare inputs, start senders, and for each stream count measure the
decode-only ceiling, then run the real Monitor on the received streams and summarise every frame.

One engine and one detector are opened for the whole benchmark and handed to a fresh Monitor per
run (as a server keeps them warm), so each run starts with the same warm model; the monitor's own
start-up (warm-up inference, batcher profile) happens before its sources open and is not measured.
The first `warmup_s` seconds of glass time of each run are left out as well (connections opening,
the first key frame, the tracker's first detections).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from swapwatch.stream.bench.ceiling import decode_ceiling
from swapwatch.stream.bench.inputs import BenchInput, encoded_file, probe_inputs
from swapwatch.stream.bench.recorder import (
    FrameRecord,
    FrameRecorder,
    GlassSource,
)
from swapwatch.stream.bench.results import (
    max_realtime,
    run_summary,
    window_records,
)
from swapwatch.stream.bench.settings import StreamBenchSettings
from swapwatch.stream.bench.transports import (
    Transport,
    machine_busy_s,
    make_transport,
    process_cpu_s,
)
from swapwatch.strict_json import json_safe

if TYPE_CHECKING:
    from swapwatch.engine.base import Engine
    from swapwatch.stream.config import MonitorConfig
    from swapwatch.stream.faces.detector import FaceDetector


@dataclass
class StreamBenchResult:
    """What a benchmark produced: the bench.json content, the per-run records and the files written."""

    report: dict[str, Any]
    records: dict[int, list[FrameRecord]] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Sample:
    t: float
    cpu: float
    sender_cpu: float | None
    machine: float | None


def _cpu_between(samples: list[_Sample], start: float, end: float) -> dict[str, float | None]:
    """Cores used (CPU seconds per second) between two times: by this process (monitor; with WebRTC also
    sender and receiver), by the sender processes, and by everything else on the machine (`other_cores`:
    other people's work, which makes the numbers noisy)."""
    inside = [s for s in samples if start <= s.t <= end]
    if len(inside) < 2:
        return {"process_cores": None, "sender_cores": None, "other_cores": None}
    a, b = inside[0], inside[-1]
    span = max(1e-6, b.t - a.t)
    process = (b.cpu - a.cpu) / span
    sender = None if a.sender_cpu is None or b.sender_cpu is None else (b.sender_cpu - a.sender_cpu) / span
    other = None
    if a.machine is not None and b.machine is not None:
        other = max(0.0, (b.machine - a.machine) / span - process - (sender or 0.0))
    return {"process_cores": round(process, 3), "sender_cores": None if sender is None else round(sender, 3),
            "other_cores": None if other is None else round(other, 3)}


class StreamBench:
    """One benchmark: `await StreamBench(settings, console).run()`."""

    def __init__(self, settings: StreamBenchSettings, console: Console | None = None) -> None:
        self.settings = settings
        self.console = console or Console(stderr=True)
        self.workdir = (settings.workdir or settings.out / "work").resolve()

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/]")

    async def run(self) -> StreamBenchResult:
        from swapwatch.engine.select import engine_from_config
        from swapwatch.stream.config import load_monitor_config
        from swapwatch.stream.faces.detector import load_detector

        s = self.settings
        load_at_start = [round(x, 2) for x in os.getloadavg()]
        inputs = await asyncio.to_thread(probe_inputs, list(s.sources), s.size, s.clip_seconds)
        overrides: dict[str, Any] = {"engine.backend": s.backend, **s.overrides}
        if s.engine is not None:
            overrides["engine.model"] = str(s.engine)
        # The benchmark brings its own sources and observes every frame itself: no configured sources or sinks.
        overrides.update({"sources": [], "sinks": {}})
        cfg = load_monitor_config(s.config, overrides)
        transport = make_transport(s.via, inputs, self.workdir, s.warmup_s + s.duration_s + 5.0, s.queue_size)
        codec = "vp8" if s.via == "webrtc" else "h264"
        self.say(f"preparing {len(inputs)} input(s) for --via {s.via} in {self.workdir}")
        ceiling_files = [await asyncio.to_thread(encoded_file, item, self.workdir / "encoded", 0.0, codec)
                         for item in inputs]
        self.say("opening the engine and the face detector")
        engine = await asyncio.to_thread(engine_from_config, cfg.engine)
        try:
            detector = await asyncio.to_thread(load_detector, cfg.faces.detector)
            await transport.start()
            result = StreamBenchResult(report={})
            runs: list[dict[str, Any]] = []
            starts: dict[int, float] = {}
            try:
                for copies in s.streams:
                    summary, records, start = await self._one_run(cfg, engine, detector, transport, inputs, copies,
                                                                  ceiling_files)
                    runs.append(summary)
                    result.records[copies] = records
                    starts[copies] = start
            finally:
                await transport.stop()
        finally:
            engine.close()
        meta = engine.meta
        result.report = json_safe({
            "mode": "stream",
            "via": s.via,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "loadavg_at_start": load_at_start, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "model": {"file": engine.path.name, "backend": engine.name, "method": meta.method,
                      "precision": meta.precision, "sha256": meta.model_sha256[:12]},
            "settings": json.loads(s.model_dump_json()),
            "inputs": [item.to_dict() for item in inputs],
            "runs": runs,
            "max_realtime_streams": {"p95_ms": s.p95_ms, "max_drop": s.max_drop, "streams": max_realtime(runs),
                                     "inputs": len(inputs)},
        })
        result.paths = self.write(result, starts, inputs)
        return result

    async def _one_run(
        self, cfg: MonitorConfig, engine: Engine, detector: FaceDetector, transport: Transport,
        inputs: list[BenchInput], copies: int, ceiling_files: list[Path],
    ) -> tuple[dict[str, Any], list[FrameRecord], float]:
        from swapwatch.stream.pipeline import Monitor

        s = self.settings
        total = copies * len(inputs)
        self.say(f"{copies} per input ({total} streams): decode-only ceiling with {total} decoder(s), "
                 f"{s.ceiling_s:g} s")
        ceiling = await asyncio.to_thread(decode_ceiling, ceiling_files, total, s.ceiling_s)
        recorder = FrameRecorder(stamped=transport.stamped)
        sources = await transport.open(copies)
        wrapped = [GlassSource(src, recorder, stamped=transport.stamped) for src in sources]
        monitor = Monitor(cfg, engine=engine, detector=detector, sources=wrapped, observers=[recorder])
        samples: list[_Sample] = []
        run_s = s.warmup_s + s.duration_s
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True, refresh_per_second=2) as progress:
            task = progress.add_task(f"{copies} per input: starting", total=run_s)

            async def tick() -> None:
                began: float | None = None
                while True:
                    now = time.monotonic()
                    samples.append(_Sample(now, process_cpu_s(), transport.sender_cpu_s(), machine_busy_s()))
                    seen = sum(m.seen for m in recorder.streams.values())
                    if seen and began is None:
                        began = now
                    recent = [r.glass_to_score_ms for r in recorder.records[-30 * total:] if r.glass == r.glass]
                    p95 = f", p95 {sorted(recent)[int(0.95 * (len(recent) - 1))]:.0f} ms" if recent else ""
                    phase = "warm-up" if began is None or now - began < s.warmup_s else "measuring"
                    progress.update(task, completed=0 if began is None else min(run_s, now - began),
                                    description=f"{copies} per input ({total} streams), {phase}: {seen} frames{p95}")
                    await asyncio.sleep(0.5)

            ticker = asyncio.create_task(tick())
            try:
                report = await monitor.run(duration_s=run_s)
            finally:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
                await transport.close_run()
        records = recorder.finish()
        first = min((r.glass for r in records), default=time.monotonic())
        start = first + s.warmup_s
        window = window_records(records, start)
        end = window[-1].glass if window else start
        summary = run_summary(
            window,
            streams=[w.name for w in wrapped],
            copies=copies,
            source_fps=float(sum(i.fps for i in inputs) / len(inputs)),
            unreadable=sum(m.unreadable for m in recorder.streams.values()),
            received=sum(m.seen for m in recorder.streams.values()),
            p95_ms=s.p95_ms,
            max_drop=s.max_drop,
        )
        summary["measured_s"] = round(end - start, 3)
        summary["decode_ceiling"] = ceiling
        summary["cpu"] = _cpu_between(samples, start, end)
        summary["monitor"] = {
            "stopped_by": report.stopped_by,
            # Whole run: frames the source's latest-frame queue replaced because the monitor was busy, as
            # against frames that never reached the receiver (the rest of `dropped`).
            "replaced_in_queue": sum(_queue_drops(w) for w in wrapped),
            "errors": {name: st.error for name, st in report.streams.items() if st.error},
            "crops_dropped": sum(st.crops_dropped for st in report.streams.values()),
            "batcher": report.batcher,
        }
        if summary["monitor"]["errors"]:
            summary["realtime"] = False
            summary["not_realtime_because"].append("a stream failed: " + "; ".join(
                f"{k}: {v}" for k, v in summary["monitor"]["errors"].items()))
        self._print_run(summary)
        return summary, window, start

    def _print_run(self, run: dict[str, Any]) -> None:
        lat = run["latency_ms"] or {}
        verdict = "[green]real time[/]" if run["realtime"] else f"[red]not real time[/] ({'; '.join(run['not_realtime_because'])})"
        self.console.print(
            f"{run['streams']} per input: {run['fps']['per_stream_mean']:.1f} fps/stream, "
            f"glass-to-score p50 {lat.get('p50', float('nan')):.0f} / p95 {lat.get('p95', float('nan')):.0f} / "
            f"p99 {lat.get('p99', float('nan')):.0f} ms, dropped {run['frames']['dropped']} of "
            f"{run['frames']['expected']}, decode ceiling {run['decode_ceiling']['fps_per_decoder']:.0f} fps/decoder: "
            f"{verdict}"
        )

    def write(self, result: StreamBenchResult, starts: dict[int, float], inputs: list[BenchInput]) -> dict[str, Path]:
        """bench.json, frames.jsonl and the PNGs into `out`."""
        from swapwatch.stream.bench.plots import write_plots

        out = self.settings.out
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "bench.json", "frames": out / "frames.jsonl"}
        paths["json"].write_text(json.dumps(result.report, indent=2, allow_nan=False) + "\n")
        with paths["frames"].open("w") as f:
            for copies, recs in result.records.items():
                for r in recs:
                    f.write(json.dumps({"streams": copies, **r.to_dict()}) + "\n")
        size = f"{inputs[0].width}x{inputs[0].height}" if inputs else ""
        title = (f"--via {self.settings.via}, {', '.join(i.name for i in inputs)} at {size}, "
                 f"model {result.report['model']['file']}")
        if result.report["runs"]:
            paths.update(write_plots(result.report["runs"], result.records, starts, self.settings.p95_ms, out, title))
        return paths


def _queue_drops(source: Any) -> int:
    try:
        return int(source.stats().dropped)
    except Exception:  # noqa: BLE001 - a source without stats just has nothing to add
        return 0


def print_summary(report: dict[str, Any], console: Console) -> None:
    """The runs as a table, and how many streams held in real time."""
    table = Table(title=f"stream benchmark, --via {report['via']}",
                  caption="N: streams per input; fps: scored, per stream; p50..max: glass-to-score, ms; ceiling: "
                  "decode-only fps per decoder; cores: monitor process (+senders); others: cores other work used "
                  "meanwhile (noise); ok: real time")
    for col in ("N", "fps", "p50", "p95", "p99", "max", "dropped", "ceiling", "cores", "others", "ok"):
        table.add_column(col, justify="right", no_wrap=True)
    for run in report["runs"]:
        lat = run["latency_ms"] or {}
        cpu = run["cpu"]
        cores = "-" if cpu["process_cores"] is None else f"{cpu['process_cores']:.2f}"
        if cpu.get("sender_cores") is not None:
            cores += f"+{cpu['sender_cores']:.2f}"
        other = "-" if cpu.get("other_cores") is None else f"{cpu['other_cores']:.2f}"
        table.add_row(
            str(run["streams"]), f"{run['fps']['per_stream_mean']:.1f}",
            *(f"{lat[k]:.0f}" if lat else "-" for k in ("p50", "p95", "p99", "max")),
            f"{run['frames']['dropped']}/{run['frames']['expected']}",
            f"{run['decode_ceiling']['fps_per_decoder']:.0f}", cores, other,
            "yes" if run["realtime"] else "no",
        )
    console.print(table)
    best = report["max_realtime_streams"]
    console.print(f"real-time streams per input at p95 <= {best['p95_ms']:g} ms and <= {100 * best['max_drop']:g}% "
                  f"dropped: {best['streams']}")


def run_stream_bench(settings: StreamBenchSettings, console: Console | None = None) -> StreamBenchResult:
    """Synchronous entry point (a fresh event loop)."""
    return asyncio.run(StreamBench(settings, console).run())
