"""`swapwatch serve`: the monitor as a long-running server with an API, a live dashboard and WHIP ingest.

    SWAPWATCH_TOKEN=$(openssl rand -hex 24) swapwatch serve --events events.jsonl
    swapwatch serve --no-auth rtsp://cam.local/live              # local use only: loopback, no token
    swapwatch serve --host 0.0.0.0 --port 8443 --config monitor.yaml --print-config

Streams come from SOURCE arguments (or the config's `sources`), from `POST /api/streams`, and from
WebRTC publishers (`POST /whip`). The engine and the face detector load once and stay warm; streams
come and go without a restart. SIGINT/SIGTERM stop it cleanly: WHIP sessions end, every stream gets
its last scores and `stream ended` event, the sinks flush, exit 0. Unsafe security settings (no token,
or --no-auth on a non-loopback host) are refused with exit 2, naming the field.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swapwatch.stream.config import MonitorConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="streams to start with (file paths, rtsp://, http(s)://); more can be added at run time")
    p.add_argument("--host", help="address to listen on (default: the config's server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default: the config's server.port, 8080; 0 picks a free one)")
    p.add_argument("--config", type=Path, help="monitor config YAML (see configs/monitor.yaml and docs/server.md)")
    p.add_argument("--events", type=Path, metavar="PATH", help="also append events as JSON lines to this file")
    p.add_argument("--token", help="API/WHIP bearer token (prefer the SWAPWATCH_TOKEN environment variable: "
                   "command lines are visible to other users of the machine)")
    p.add_argument("--no-auth", action="store_true",
                   help="no token (local use): refused unless the host is a loopback address, and then only requests "
                   "addressed to localhost, 127.0.0.1 or [::1] are answered, and none that a foreign web page sends")
    p.add_argument("--model", type=Path, help="deepfake detector (.onnx with its sidecar, .plan, ...); default: embedded")
    p.add_argument("--engine", metavar="URL",
                   help="run the detector on NVIDIA Triton Inference Server: triton://HOST:PORT/MODEL[/VERSION] (gRPC; "
                   "needs the [cluster] extra; model and sidecar come from the server, so no --model; docs/triton.md)")
    p.add_argument("--no-whip", action="store_true", help="leave out WebRTC ingest (/whip, /offer)")
    p.add_argument("--cluster", metavar="URLS",
                   help="join a cluster of monitors: comma-separated NATS URLs, e.g. nats://h1:4222,nats://h2:4222 "
                   "(docs/cluster.md); streams are then leased across the nodes")
    p.add_argument("--node", help="this node's name in the cluster (default: host name and pid)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                   help="override any config field by its dotted path, e.g. --set server.cors_origins=[https://desk.example]")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds (default: until a signal)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config as YAML, secrets redacted (token shown as **********), and exit")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides from the options (`--set` last). The console sink is off: a server has no terminal."""
    from swapwatch.stream.config import parse_set_option

    overrides: dict[str, Any] = {"sinks.console": None}
    if args.sources:
        overrides["sources"] = [{"url": s} for s in args.sources]
    if args.host is not None:
        overrides["server.host"] = args.host
    if args.port is not None:
        overrides["server.port"] = args.port
    if args.no_auth:
        overrides["server.auth"] = False
    if args.events is not None:
        overrides["sinks.jsonl.path"] = str(args.events)
    if args.model is not None:
        overrides["engine.model"] = str(args.model)
    if args.engine is not None:
        overrides["engine.backend"] = "triton"
        overrides["engine.url"] = args.engine
    if args.cluster is not None:
        overrides["cluster.urls"] = [u.strip() for u in args.cluster.split(",") if u.strip()]
    if args.node is not None:
        overrides["cluster.node"] = args.node
    for text in args.set_values:
        key, value = parse_set_option(text)
        overrides[key] = value
    return overrides


def run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from swapwatch.errors import ConfigError
    from swapwatch.stream.config import effective_config_yaml, load_monitor_config

    cfg = load_monitor_config(args.config, cli_overrides(args))
    if cfg.sinks.metrics is None:  # /metrics is part of the server; the metrics live in the monitor
        from swapwatch.stream.sinks.metrics import MetricsConfig

        cfg.sinks.metrics = MetricsConfig()
    token = cfg.server.resolved_token(args.token)
    if token:  # the effective config says a token is set (shown as **********), wherever it came from
        cfg.server.token = token  # type: ignore[assignment]  # validated into a SecretStr
    if args.print_config:
        sys.stdout.write(effective_config_yaml(cfg))
        return 0
    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f"--duration: must be a positive number of seconds, got {args.duration}")
    from swapwatch.stream.server.app import check_security

    check_security(cfg.server, token)
    if not args.no_whip:
        cfg.server.whip_config()  # a bad whip section is a config error (exit 2) before anything starts
    return asyncio.run(_serve(cfg, token if cfg.server.auth else None, args))


async def _serve(cfg: MonitorConfig, token: str | None, args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from swapwatch.stream.pipeline import install_signal_handlers
    from swapwatch.stream.server.app import serve_monitor

    async with serve_monitor(cfg, token=token, duration_s=args.duration, whip=not args.no_whip) as served:
        remove = install_signal_handlers(served.monitor, asyncio.get_running_loop())
        try:
            auth = "token required" if token else "NO AUTHENTICATION (loopback only)"
            print(f"swapwatch serve: listening on {served.base_url} ({auth}); dashboard {served.base_url}/, "
                  f"API {served.base_url}/api/, WHIP {served.base_url}/whip", file=sys.stderr, flush=True)
            report = await served.wait()
        finally:
            remove()
    latency = report.timings.get("latency_ms") or {}
    print(f"swapwatch serve: stopped ({report.stopped_by}) after {report.wall_s:.1f} s, {len(report.streams)} stream(s)"
          + (f"; glass-to-score latency p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms" if latency else ""),
          file=sys.stderr, flush=True)
    return 0
