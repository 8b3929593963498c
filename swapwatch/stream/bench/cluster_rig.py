"""A cluster of monitors on one machine, for the cluster tests and `bench/cluster.py`.

    with LocalNatsCluster(root / "nats") as nats, ClusterRig(root, nats.url_list) as rig:
        rig.start_nodes(3)
        rig.add_stream("cam1", "rtsp://127.0.0.1:8554/stream")
        rig.wait_until(lambda v: all(s["node"] for s in v), timeout_s=30)
        rig.nodes["m0"].kill()                        # SIGKILL, like a crashed host

Each node is a real `swapwatch serve --cluster ...` process on a free loopback port, without auth (the
rig is for loopback use only), writing its events to `<root>/<node>.jsonl` and its log to
`<root>/<node>.log`. A node can reach NATS through its own URLs (e.g. a `TcpProxy` to cut it off).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from swapwatch.stream.bench.rtsp_replay import free_port
from swapwatch.stream.events import Event

FAST_LEASES = {"cluster.lease_ttl_s": "5", "cluster.renew_s": "1", "cluster.request_timeout_s": "1.5"}
"""Lease timing for tests and benchmarks: a dead node's streams move within about 6 s."""

MONITOR_SETTINGS = {"batcher.max_batch": "8", "batcher.max_wait_ms": "2", "server.allowed_networks": "[127.0.0.0/8]",
                    "summary_interval_s": "0.5"}
"""Fixed batcher sizes (no start-up profile), RTSP from loopback allowed for API callers, and a summary
event per stream every 0.5 s, so the events show who scored each stream when (`overlaps`)."""


_RUN_CLI = "import sys; from swapwatch.cli.main import main; sys.exit(main(sys.argv[1:]))"


class RigError(RuntimeError):
    """A node did not start or answer in time; carries the tail of its log."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class MonitorNode:
    """One `swapwatch serve --cluster` process."""

    name: str
    root: Path
    cluster_urls: str
    settings: dict[str, str]
    whip: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def events_path(self) -> Path:
        return self.root / f"{self.name}.jsonl"

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-c", _RUN_CLI, "serve", "--no-auth", *([] if self.whip else ["--no-whip"]),
               "--host", "127.0.0.1", "--port", str(self.port), "--cluster", self.cluster_urls, "--node", self.name,
               "--events", str(self.events_path)]
        for key, value in self.settings.items():
            cmd += ["--set", f"{key}={value}"]
        return cmd

    def start(self) -> None:
        """Start the process (appending to its log and events file, reusing its outbox)."""
        env = {**os.environ, "SWAPWATCH_PROGRESS": "0"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.started_at = time.monotonic()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise RigError(f"node {self.name} exited ({self.proc and self.proc.returncode}):\n{_tail(self.log_path)}")
            try:
                status, _ = self.api("GET", "/healthz", timeout_s=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RigError(f"node {self.name} not ready within {timeout_s:g} s:\n{_tail(self.log_path)}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait (the node releases its leases and flushes its events); SIGKILL past the timeout."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def api(self, method: str, path: str, body: Any = None, *, timeout_s: float = 10.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def events(self) -> list[dict[str, Any]]:
        """The events this node wrote to its JSONL file (a last line cut by a kill is skipped)."""
        out: list[dict[str, Any]] = []
        if not self.events_path.exists():
            return out
        for line in self.events_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


class ClusterRig:
    """Monitor nodes `m0`, `m1`, ... joined to the NATS servers at `cluster_urls`."""

    def __init__(self, root: Path, cluster_urls: str, *, settings: dict[str, str] | None = None) -> None:
        self.root = Path(root).resolve()  # the nodes run with it as their working directory
        self.root.mkdir(parents=True, exist_ok=True)
        self.cluster_urls = cluster_urls
        self.settings = {**MONITOR_SETTINGS, **FAST_LEASES, **(settings or {})}
        self.nodes: dict[str, MonitorNode] = {}

    def add_node(self, name: str | None = None, *, cluster_urls: str | None = None, whip: bool = False,
                 settings: dict[str, str] | None = None, start: bool = True) -> MonitorNode:
        name = name or f"m{len(self.nodes)}"
        node = MonitorNode(name, self.root, cluster_urls or self.cluster_urls, {**self.settings, **(settings or {})},
                           whip=whip)
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def start_nodes(self, count: int, timeout_s: float = 120.0) -> list[MonitorNode]:
        new = [self.add_node() for _ in range(count)]
        for node in new:
            node.wait_ready(timeout_s)
        return new

    def any_node(self) -> MonitorNode:
        for node in self.nodes.values():
            if node.alive:
                return node
        raise RigError("no monitor node is running")

    def add_stream(self, name: str, url: str, via: MonitorNode | None = None) -> None:
        status, body = (via or self.any_node()).api("POST", "/api/streams", {"name": name, "url": url})
        if status != 202:
            raise RigError(f"adding {name}: HTTP {status}: {body}")

    def remove_stream(self, name: str, via: MonitorNode | None = None) -> int:
        return (via or self.any_node()).api("DELETE", "/api/streams/" + quote(name, safe=""))[0]

    def view(self, via: MonitorNode | None = None) -> list[dict[str, Any]]:
        """The cluster-wide stream list, as one node's API shows it."""
        status, body = (via or self.any_node()).api("GET", "/api/streams")
        if status != 200:
            raise RigError(f"GET /api/streams: HTTP {status}: {body}")
        return list(body["streams"])

    def wait_until(self, check: Callable[[list[dict[str, Any]]], bool], *, timeout_s: float,
                   via: MonitorNode | None = None, poll_s: float = 0.1) -> float:
        """Poll the stream list until `check` holds; seconds it took (RigError on timeout)."""
        t0 = time.monotonic()
        last: list[dict[str, Any]] = []
        while time.monotonic() - t0 < timeout_s:
            try:
                last = self.view(via)
                if check(last):
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(poll_s)
        raise RigError(f"condition not met within {timeout_s:g} s; last view: {json.dumps(last)[:3000]}")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def event_time(iso: str) -> float:
    """Unix seconds of an event's ISO 8601 `time`."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def stored_events(urls: Sequence[str], stream: str = "SWAPWATCH_EVENTS",
                        subject: str = "swapwatch.events") -> tuple[list[Event], int]:
    """Every event in a durable events stream, and how many messages the stream says it holds."""
    import nats

    from swapwatch.stream.cluster.config import ClusterConfig
    from swapwatch.stream.cluster.event_log import read_events

    config = ClusterConfig(urls=list(urls), node="reader", events_stream=stream, events_subject=subject)
    nc = await nats.connect(servers=list(urls))
    try:
        js = nc.jetstream(timeout=10.0)
        info = await js.stream_info(stream)
        events, _ = await read_events(js, config, limit=10**8, scan=10**8, timeout_s=20.0)
    finally:
        await nc.close()
    return events, int(info.state.messages)


def running_on(view: Sequence[dict[str, Any]]) -> dict[str, str]:
    """stream -> node for the streams whose owner reports them live."""
    out = {}
    for entry in view:
        status = entry.get("status") or {}
        if entry.get("node") and status.get("running") and status.get("source_state") == "live":
            out[entry["name"]] = entry["node"]
    return out


def scoring_events(events: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Events that come from scoring frames (summaries and track state changes, not ends or source changes)."""
    for event in events:
        if event.get("type") in ("state", "summary") and not event.get("ended"):
            yield event


def overlaps(events_by_node: dict[str, list[dict[str, Any]]], *, min_tenure_s: float = 1.0) -> list[str]:
    """Streams two nodes scored at the same time. With summaries every 0.5 s (the rig's setting), two
    nodes scoring one stream at once make its timeline alternate between them; a real handover switches
    once and stays. So: a stream is flagged when an owner's tenure between two switches is shorter than
    `min_tenure_s`."""
    timelines: dict[str, list[tuple[float, str]]] = {}
    for node, events in events_by_node.items():
        for event in scoring_events(events):
            t = event_time(event["time"])
            timelines.setdefault(event["stream"], []).append((t, node))
    problems = []
    for stream, timeline in sorted(timelines.items()):
        timeline.sort()
        switches = [timeline[i] for i in range(1, len(timeline)) if timeline[i][1] != timeline[i - 1][1]]
        for (t0, node), (t1, _) in itertools.pairwise(switches):
            if t1 - t0 < min_tenure_s:
                owners = " -> ".join([timeline[0][1], *(n for _, n in switches)])
                problems.append(f"{stream}: {node} held it only {t1 - t0:.2f} s between switches ({owners})")
                break
    return problems
