"""`swapwatch watch SOURCE...`: monitor live streams and files, writing events as faces change state.

    swapwatch watch rtsp://cam.local/live --events events.jsonl
    swapwatch watch call.mp4 --events ev.jsonl --annotate annotated.mp4 --duration 60
    swapwatch watch --config configs/monitor.yaml --print-config
    swapwatch watch a.mp4 b.mp4 --no-realtime --set smoothing.alert_enter=0.9 --report report.json

Runs until every source ends, `--duration` seconds pass, or SIGINT/SIGTERM arrives; then it flushes the
sinks (events file, webhooks, videos) and prints one line per stream on stderr. A source that fails
(missing file, unreachable camera) is reported as a `stream` event and the others keep running.

Exit codes (EXIT_CODES, also in `--help`): 0 every source delivered frames; 1 some source delivered no
frame at all (a file that cannot be opened, a camera or stream that never connected, however long it
kept retrying: its line on stderr says why, with the last connection error), or every source failed;
2 bad options or config, naming the field. A live source that did connect and was lost later is
reported (stream events, its line on stderr) but is not a failure of the run.

Off a terminal the console writes plain lines on stdout, one per stream and state change; the sources'
own log lines about the same changes are then left out of stderr, so each message appears once. With
`--events -` stdout carries only the events (JSON lines) and the console writes to stderr.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swapwatch.stream.config import MonitorConfig
    from swapwatch.stream.worker import StreamReport

# Static copy keeps `swapwatch --help` free of engine imports; the config validates the value again.
_BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch-tensorrt", "torch")


EXIT_CODES = (
    "exit codes: 0 every source delivered frames; 1 a source delivered no frame at all (missing file, camera "
    "or stream that never connected: stderr says why) or every source failed; 2 bad options or config"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXIT_CODES
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="video sources: file paths, rtsp://, http(s):// (HLS, MJPEG, files), /dev/videoN or a camera "
                   "index; they replace the config's `sources`")
    p.add_argument("--config", type=Path, help="monitor config YAML (see configs/monitor.yaml); default: built-in defaults")
    p.add_argument("--events", type=Path, metavar="PATH", help="append events as JSON lines to this file ('-' for stdout)")
    p.add_argument("--annotate", type=Path, metavar="PATH",
                   help="write an annotated H.264 video (boxes, track ids, states, scores); '{stream}' in the name "
                   "gives one file per stream")
    p.add_argument("--evidence", type=Path, metavar="DIR", help="write a clip, face snapshot and score timeline per alert")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds (default: run until "
                   "the sources end or SIGINT/SIGTERM)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="recorded files: pace frames at their native rate (--realtime) or read them as fast as they "
                   "are scored (--no-realtime); default: the config's `realtime` (paced)")
    p.add_argument("--model", type=Path, help="deepfake detector (.onnx with its sidecar, .plan, .ep, .pt); default: embedded")
    p.add_argument("--backend", choices=_BACKENDS, help="inference backend (default: the config's, auto)")
    p.add_argument("--engine", metavar="URL",
                   help="run the detector on NVIDIA Triton Inference Server: triton://HOST:PORT/MODEL[/VERSION] (gRPC; "
                   "needs the [cluster] extra; model and sidecar come from the server, so no --model; docs/triton.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                   help="override any config field by its dotted path, e.g. --set smoothing.alert_enter=0.9 "
                   "--set faces.detect_every=2 (the value is read as YAML); repeatable")
    p.add_argument("--no-console", action="store_true", help="no live table or console lines (events still go to sinks)")
    p.add_argument("--report", type=Path, metavar="PATH",
                   help="write a JSON run report: per-stream counts, stage timings, latency percentiles, batcher and sinks")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config (defaults + file + environment + options) as YAML and exit; "
                   "URL credentials are masked, secrets from the environment appear as variable names")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides from the command-line options (the `--set` values last)."""
    from swapwatch.stream.config import parse_set_option

    overrides: dict[str, Any] = {}
    if args.sources:
        overrides["sources"] = [{"url": s} for s in args.sources]
    if args.events is not None:
        overrides["sinks.jsonl.path"] = str(args.events)
    if args.annotate is not None:
        overrides["sinks.annotate.path"] = str(args.annotate)
    if args.evidence is not None:
        overrides["sinks.evidence.dir"] = str(args.evidence)
    if args.metrics_port is not None:
        overrides["sinks.metrics.port"] = args.metrics_port
    if args.model is not None:
        overrides["engine.model"] = str(args.model)
    if args.backend is not None:
        overrides["engine.backend"] = args.backend
    if args.engine is not None:
        if args.backend is not None:
            from swapwatch.errors import ConfigError

            raise ConfigError(f"--engine {args.engine}: runs on backend triton; leave out --backend {args.backend}")
        overrides["engine.backend"] = "triton"
        overrides["engine.url"] = args.engine
    if args.no_console:
        overrides["sinks.console"] = None
    for text in args.set_values:
        key, value = parse_set_option(text)
        overrides[key] = value
    return overrides


def resolved_thresholds_note(cfg: MonitorConfig) -> str:
    """Comment lines saying which thresholds the smoother will use with the configured model (sidecar only)."""
    from swapwatch.engine.metadata import read_metadata
    from swapwatch.engine.onnx_runtime import default_model_path
    from swapwatch.stream.temporal import thresholds_from_calibration

    try:
        path = cfg.engine.model or default_model_path()
        meta = read_metadata(path, verify_hash=False)
    except Exception as err:  # noqa: BLE001 - a bad model is reported when the monitor starts; here only a note
        return f"# smoothing thresholds: cannot read the model's sidecar ({err})\n"
    smoothing = cfg.smoothing.resolve(meta.score_calibration)
    picked = thresholds_from_calibration(meta.score_calibration)
    values = ", ".join(f"{k}={v:.4g}" for k, v in smoothing.thresholds().items())
    return f"# smoothing thresholds with {Path(path).name}: {values}\n#   from: {picked.source}\n"


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from swapwatch.errors import ConfigError
    from swapwatch.stream.config import effective_config_yaml, load_monitor_config

    cfg = load_monitor_config(args.config, cli_overrides(args))
    if args.realtime is not None:
        for source in cfg.sources:
            source.realtime = args.realtime
    if args.print_config:
        sys.stdout.write(effective_config_yaml(cfg))
        sys.stdout.write(resolved_thresholds_note(cfg))
        return 0
    if not cfg.sources:
        raise ConfigError("no SOURCE given and the config lists no `sources`")
    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f"--duration: must be a positive number of seconds, got {args.duration}")

    from swapwatch.stream.pipeline import run_monitor
    from swapwatch.stream.sources.base import SOURCE_STATE_LOG_FLAG

    quiet = _DropFlagged(SOURCE_STATE_LOG_FLAG)
    console = cfg.sinks.console
    handlers = list(logging.getLogger().handlers) if console is not None and _console_is_plain(console.mode) else []
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        report = run_monitor(cfg, duration_s=args.duration)
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    latency = report.timings.get("latency_ms") or {}
    print(f"swapwatch watch: stopped ({report.stopped_by}) after {report.wall_s:.1f} s"
          + (f"; glass-to-score latency p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms" if latency else ""),
          file=sys.stderr)
    for name, s in report.streams.items():
        print(f"  {name}: {stream_line(s)}", file=sys.stderr)
    silent = [name for name, s in report.streams.items() if s.frames == 0]
    if silent:
        print(f"swapwatch watch: {len(silent)} of {len(report.streams)} source(s) delivered no frame "
              f"({', '.join(silent)}); nothing was monitored there (exit 1)", file=sys.stderr)
        return 1
    failed = report.failed
    if failed and len(failed) == len(report.streams):
        print(f"swapwatch watch: every source failed ({', '.join(failed)})", file=sys.stderr)
        return 1
    return 0


def stream_line(s: StreamReport) -> str:
    """One stream's line of the final report (a `StreamReport`): counts and verdict, or why nothing came."""
    if s.frames == 0:
        why = s.error or s.last_error
        if why is None:
            why = ("still connecting when the run stopped (no answer yet)" if s.source_state == "connecting"
                   else "the source opened but sent no frame")
        return f"{s.source_state}, NO FRAME received: {why}"
    top = "-" if s.max_score is None else f"{s.max_score:.3f}"
    line = (f"{s.source_state}, {s.frames} frames, {s.faces_scored} faces scored, {s.tracks} tracks, "
            f"worst state {s.worst_state}, top score {top}")
    if s.error:
        line += f", error: {s.error}"
    elif s.last_error and s.source_state != "live":
        line += f", last connection error: {s.last_error}"
    return line


def _console_is_plain(mode: str) -> bool:
    if mode != "auto":
        return mode == "plain"
    from rich.console import Console

    return not Console().is_terminal  # the same test the console sink makes


class _DropFlagged(logging.Filter):
    """Leaves out log records carrying `flag` (the sources' state changes, which the plain console prints)."""

    def __init__(self, flag: str) -> None:
        super().__init__()
        self.flag = flag

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, self.flag, False)
