"""The cluster of monitors (issue 12, docs/cluster.md): takeover after kill -9, events lost, and what the
cluster path costs against a single node.

    python bench/cluster.py --kills 10 --out runs/bench-cluster          # the full run
    python bench/cluster.py --kills 2 --overhead-seconds 8 --synthetic-events 2000   # a quick look

Everything runs on this machine, on loopback, with real processes: a 3-node nats-server cluster
(JetStream, R3), monitor nodes that are real `swapwatch serve --cluster` processes (`ClusterRig`, with its
fast lease timing: TTL 5 s, renewal every 1 s) and one GStreamer RTSP server looping a small face clip
(320x180, 10 fps) for every stream.

1. `takeover`: 3 monitor nodes, 6 RTSP streams (2 per node). Then --kills times: pick a node that owns
   streams (round robin), `kill -9` it, and for each stream it owned measure the takeover time: from the
   kill to that stream's first scoring event (summary or track state) from another node, both on the wall
   clock (the events' `time`); also when the new owner's `connecting` event (it won the lease) and `live`
   event came. Then restart the killed node (same events file, same outbox) and wait until rebalancing
   has given it streams again before the next kill. A node whose start fails (the cluster code does not
   retry a JetStream timeout while it sets up the buckets) is started again, and that is reported.
2. `events`: stop every node gracefully, read the durable stream back (`read_events`) and compare event
   ids: lost = in a node's JSONL file but not in the stream; duplicates = stored more than once. A lost
   event is reported with whether its node was SIGKILLed within 1 s after it (written to the JSONL file,
   killed before its outbox insert committed: the two sinks are separate lanes). `overlaps()` must be empty.
   The nodes' logs are counted for claims, handovers, lost and fenced leases, and streams stopped as
   "removed" (nothing here removes one: each is a node that read the desired set without it).
3. `sinks`: --synthetic-events through a `SinkSet` with the JSONL sink alone, and with the JSONL sink plus
   `ClusterEventSink` publishing to the 3-node cluster (its own events stream, R3): events/s until all are
   written (JSONL) and acknowledged by JetStream (cluster), alternating, --repeats times.
4. `serve`: a plain `swapwatch serve` (no cluster) and then a 1-node cluster (same 3 NATS servers), each
   with the same 2 RTSP streams for --overhead-seconds: events/s, frames/s and CPU seconds per frame of
   the monitor process.

Writes results.json and takeover.png into --out (scratch files under --out/work, removed at the start of
each run) and prints a table. Progress lines go to stderr unless SWAPWATCH_PROGRESS=0. Exits 1 when an
event was lost or stored twice, or two nodes scored one stream at once; 2 when nats-server or the RTSP
server is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from swapwatch.stream.bench.cluster_rig import (  # noqa: E402
    FAST_LEASES,
    MONITOR_SETTINGS,
    ClusterRig,
    MonitorNode,
    RigError,
    event_time,
    overlaps,
    running_on,
    scoring_events,
    stored_events,
)
from swapwatch.stream.bench.face_clip import write_face_clip  # noqa: E402
from swapwatch.stream.bench.nats_cluster import LocalNatsCluster, find_nats_server  # noqa: E402
from swapwatch.stream.bench.rtsp_replay import RtspServer, choose_backend, start_rtsp_server  # noqa: E402

TTL_S = float(FAST_LEASES["cluster.lease_ttl_s"])
RENEW_S = float(FAST_LEASES["cluster.renew_s"])
NODES = 3
STREAMS = [f"cam{i}" for i in range(6)]
KILL_WINDOW_S = 1.0
"""A lost event made this long before its node's SIGKILL counts as "killed before its outbox insert"."""

TAKEOVER_TIMEOUT_S = TTL_S + RENEW_S + 30.0
START_TIMEOUT_S = 180.0
REBALANCE_TIMEOUT_S = 120.0


def progress(msg: str) -> None:
    if os.environ.get("SWAPWATCH_PROGRESS", "1").strip() != "0":
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- 1. takeover --------------------------------------------------------------------------------------


class JsonlTail:
    """New complete lines of a growing JSONL file, read from where the last call stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@dataclass
class Kill:
    index: int
    node: str
    wall: float  # time.time() just before the SIGKILL
    streams: list[str]
    takeover_s: dict[str, float | None] = field(default_factory=dict)  # kill -> first scoring event elsewhere
    claimed_s: dict[str, float | None] = field(default_factory=dict)  # kill -> `connecting` on the new owner
    live_s: dict[str, float | None] = field(default_factory=dict)  # kill -> `live` (first frame) there
    moved_to: dict[str, str] = field(default_factory=dict)
    restart_ready_s: float | None = None
    rebalanced_s: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        def r3(d: dict[str, float | None]) -> dict[str, float | None]:
            return {k: None if v is None else round(v, 3) for k, v in d.items()}

        return {"kill": self.index, "node": self.node, "time": self.wall, "streams": self.streams,
                "takeover_s": r3(self.takeover_s), "claimed_s": r3(self.claimed_s), "live_s": r3(self.live_s),
                "moved_to": self.moved_to, "restart_ready_s": _round(self.restart_ready_s),
                "rebalanced_s": _round(self.rebalanced_s), "note": self.note}


def _round(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def balanced(view: list[dict[str, Any]], nodes: list[str], must_hold: str | None = None) -> bool:
    """Every stream runs somewhere, loads differ by at most one, and `must_hold` runs at least one."""
    on = running_on(view)
    if set(on) != set(STREAMS):
        return False
    loads = dict.fromkeys(nodes, 0)
    for owner in on.values():
        loads[owner] = loads.get(owner, 0) + 1
    return max(loads.values()) - min(loads.values()) <= 1 and (must_hold is None or loads.get(must_hold, 0) > 0)


def wait_takeover(kill: Kill, tails: dict[str, JsonlTail]) -> None:
    """Watch the survivors' JSONL files for each moved stream's first events after the kill: `connecting`
    (the new owner won the lease and opens the stream), `live` (first frame) and the first scoring event."""
    deadline = time.monotonic() + TAKEOVER_TIMEOUT_S
    seen: dict[str, dict[str, tuple[float, str]]] = {"claimed": {}, "live": {}, "scored": {}}
    while time.monotonic() < deadline and len(seen["scored"]) < len(kill.streams):
        for name, tail in tails.items():
            if name == kill.node:
                continue
            for event in tail.new():
                stream, t = event.get("stream"), event_time(event["time"])
                if stream not in kill.streams or t <= kill.wall:
                    continue
                if event.get("type") == "stream" and event.get("source_state") == "connecting":
                    seen["claimed"].setdefault(stream, (t, name))
                elif event.get("type") == "stream" and event.get("source_state") == "live":
                    seen["live"].setdefault(stream, (t, name))
                elif next(scoring_events([event]), None) is not None:
                    seen["scored"].setdefault(stream, (t, name))
        time.sleep(0.1)
    for stream in kill.streams:
        for key, into in (("claimed", kill.claimed_s), ("live", kill.live_s), ("scored", kill.takeover_s)):
            into[stream] = seen[key][stream][0] - kill.wall if stream in seen[key] else None
        if stream in seen["scored"]:
            kill.moved_to[stream] = seen["scored"][stream][1]
        else:
            kill.note = f"no scoring event from another node within {TAKEOVER_TIMEOUT_S:g} s"


START_FAILURES: list[dict[str, Any]] = []
"""Node starts that failed and were retried (reported in results.json: the cluster code's start-up is not
retried, see docs/cluster.md)."""


def start_ready(node: MonitorNode, tries: int = 3) -> float:
    """Start `node` and wait until it answers; a start that exits (e.g. a JetStream request timing out
    while the buckets are set up) is retried. Seconds until ready."""
    t0 = time.monotonic()
    for attempt in range(1, tries + 1):
        if not node.alive:
            node.start()
        try:
            node.wait_ready(START_TIMEOUT_S)
            return time.monotonic() - t0
        except RigError as err:
            last = str(err).strip().splitlines()[-1]
            START_FAILURES.append({"node": node.name, "attempt": attempt, "error": last})
            progress(f"{node.name}: start failed ({last}); {'retrying' if attempt < tries else 'giving up'}")
            if attempt == tries:
                raise
    raise AssertionError("unreachable")


def takeover_phase(rig: ClusterRig, url: str, kills: int, deadline: float) -> list[Kill]:
    nodes = [rig.add_node(start=False) for _ in range(NODES)]
    for node in nodes:
        node.start()
    for node in nodes:
        start_ready(node)
    names = [n.name for n in nodes]
    for i, stream in enumerate(STREAMS):
        rig.add_stream(stream, url, via=nodes[i % NODES])
    took = rig.wait_until(lambda v: balanced(v, names), timeout_s=REBALANCE_TIMEOUT_S, poll_s=0.5)
    progress(f"takeover: {len(STREAMS)} streams running on {NODES} nodes after {took:.1f} s: "
             f"{running_on(rig.view())}")
    time.sleep(3.0)  # a few summaries from every stream before the first kill
    done: list[Kill] = []
    for k in range(kills):
        if time.monotonic() > deadline:
            progress(f"takeover: time budget spent after {k} kills; stopping the kill loop")
            break
        # Every stream running and spread before the kill (a node's view can lag one round behind).
        with contextlib.suppress(RigError):
            rig.wait_until(functools.partial(balanced, nodes=names), timeout_s=REBALANCE_TIMEOUT_S, poll_s=0.5)
        on = running_on(rig.view())
        order = names[k % NODES:] + names[: k % NODES]
        victim_name = next((n for n in order if n in on.values()), None)
        if victim_name is None:
            raise RigError(f"no node owns a running stream: {on}")
        victim = rig.nodes[victim_name]
        tails = {n: JsonlTail(rig.nodes[n].events_path) for n in names}
        kill = Kill(k + 1, victim_name, time.time(), sorted(s for s, o in on.items() if o == victim_name))
        victim.kill()
        wait_takeover(kill, tails)
        times = ", ".join(f"{s} {v:.2f} s -> {kill.moved_to.get(s)}" if v is not None else f"{s} none"
                          for s, v in kill.takeover_s.items())
        progress(f"kill {k + 1}/{kills}: {victim_name} (SIGKILL); takeover {times}")
        try:
            kill.restart_ready_s = start_ready(victim)
            survivor = next(rig.nodes[n] for n in names if n != victim_name)
            kill.rebalanced_s = rig.wait_until(functools.partial(balanced, nodes=names, must_hold=victim_name),
                                               timeout_s=REBALANCE_TIMEOUT_S, via=survivor, poll_s=0.5)
        except RigError as err:
            kill.note = (kill.note + "; " if kill.note else "") + f"after restart: {str(err)[:300]}"
            progress(f"kill {k + 1}: {kill.note}")
        else:
            progress(f"kill {k + 1}: {victim_name} back in {kill.restart_ready_s:.1f} s, "
                     f"streams rebalanced {kill.rebalanced_s:.1f} s later: {running_on(rig.view())}")
        done.append(kill)
        time.sleep(2.0)
    return done


def takeover_summary(kills: list[Kill]) -> dict[str, Any]:
    moved = [v for k in kills for v in k.takeover_s.values()]
    got = [v for v in moved if v is not None]
    claimed = [v for k in kills for v in k.claimed_s.values() if v is not None]
    return {
        "kills": len(kills), "streams_moved": len(moved), "not_taken_over": len(moved) - len(got),
        "p50_s": _round(statistics.median(got)) if got else None, "p95_s": _round(percentile(got, 0.95)),
        "max_s": _round(max(got)) if got else None,
        "claimed_p50_s": _round(statistics.median(claimed)) if claimed else None,
        "claimed_max_s": _round(max(claimed)) if claimed else None,
        "bound_ttl_plus_renew_s": TTL_S + RENEW_S,
        "per_kill": [k.as_dict() for k in kills],
    }


# --- 2. events lost ---------------------------------------------------------------------------------


LOG_MARKS = {
    "claimed": ": claimed (lease revision",
    "handed_over": ": handing over to even the load",
    "lost_lease": ": lease now held by another node",
    "fenced": ": lease not renewed for",
    # Nothing in this bench removes a stream: each of these is a node that read the desired set without it.
    "stopped_as_removed": ": removed from the cluster; stopping it",
    "round_failed": "cluster: round failed",
}


def log_counts(rig: ClusterRig) -> dict[str, dict[str, int]]:
    """How often each node's log says it claimed, handed over, lost, fenced or stopped a stream."""
    out = {}
    for node in rig.nodes.values():
        text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
        out[node.name] = {key: text.count(mark) for key, mark in LOG_MARKS.items()}
    return out


def outbox_rows(path: Path) -> int | None:
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def events_check(rig: ClusterRig, urls: list[str], kills: list[Kill]) -> dict[str, Any]:
    stop_codes = {n.name: n.stop() for n in rig.nodes.values()}
    by_node = {n.name: n.events() for n in rig.nodes.values()}
    stored, in_stream = asyncio.run(stored_events(urls))
    stored_ids = [e.id for e in stored]
    counts: dict[str, int] = {}
    for i in stored_ids:
        counts[i] = counts.get(i, 0) + 1
    emitted = {e["id"]: (node, e) for node, events in by_node.items() for e in events}
    kill_times: dict[str, list[float]] = {}
    for k in kills:
        kill_times.setdefault(k.node, []).append(k.wall)
    lost = []
    for event_id, (node, event) in emitted.items():
        if event_id in counts:
            continue
        t = event_time(event["time"])
        after = [kt - t for kt in kill_times.get(node, []) if 0.0 <= kt - t <= KILL_WINDOW_S]
        lost.append({"id": event_id, "node": node, "stream": event.get("stream"), "type": event.get("type"),
                     "time": event["time"], "killed_within_1s": bool(after),
                     "kill_after_s": round(min(after), 3) if after else None})
    return {
        "emitted": len(emitted),
        "stored_messages": in_stream,
        "read_back": len(stored_ids),
        "lost": len(lost),
        "lost_events": lost,
        "lost_killed_within_1s": sum(1 for x in lost if x["killed_within_1s"]),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "stored_not_in_jsonl": len(set(counts) - set(emitted)),
        "overlaps": overlaps(by_node),
        "left_in_outboxes": {n.name: outbox_rows(n.root / f"cluster-outbox-{n.name}.sqlite")
                             for n in rig.nodes.values()},
        "stop_exit_codes": stop_codes,
        "events_per_node": {n: len(e) for n, e in by_node.items()},
        "node_logs": log_counts(rig),
    }


# --- 3. the sinks alone -------------------------------------------------------------------------------


def synthetic_event(i: int) -> Any:
    from swapwatch.stream.events import Event

    return Event(type="summary", stream=f"syn{i % 6}", track=1, state="clear", score=0.1, raw_score=0.12,
                 box=[10.0, 20.0, 110.0, 140.0], frame_pts=i / 10, latency_ms=42.0, tracks=1,
                 counts={"clear": 1, "suspicious": 0, "alert": 0}, fps=10.0)


async def sink_run(n: int, workdir: Path, label: str, urls: list[str] | None, timeout_s: float) -> dict[str, Any]:
    """`n` events into a SinkSet (JSONL alone, or JSONL + ClusterEventSink when `urls`): seconds until the
    JSONL sink wrote them all and until JetStream acknowledged them all."""
    from swapwatch.stream.cluster.config import ClusterConfig
    from swapwatch.stream.cluster.event_log import ClusterEventSink
    from swapwatch.stream.cluster.store import ClusterStore
    from swapwatch.stream.sinks import Sink, SinkSet
    from swapwatch.stream.sinks.jsonl import JsonlConfig, JsonlSink

    sinks: list[Sink] = [JsonlSink(JsonlConfig(path=str(workdir / f"{label}.jsonl"), append=False))]
    store = cluster_sink = None
    if urls is not None:
        config = ClusterConfig(urls=urls, node="bench", bucket_prefix="bench", events_stream="SWAPWATCH_BENCH",
                               events_subject="swapwatch.bench")
        store = ClusterStore(config)
        await store.connect()
        assert store.js is not None
        cluster_sink = ClusterEventSink(config, store.js, workdir / f"{label}.outbox.sqlite")
        sinks.append(cluster_sink)
    events = [synthetic_event(i) for i in range(n)]  # built before the clock starts
    sinkset = SinkSet(sinks, event_queue=n + 1, node="bench")  # room for all: none dropped
    sinkset.start()
    t0 = time.perf_counter()
    for event in events:
        sinkset.publish_nowait(event)
    written_s = acked_s = None
    while time.perf_counter() - t0 < timeout_s:
        now = time.perf_counter() - t0
        if written_s is None and sinkset.stats()["jsonl"].published >= n:
            written_s = now
        if acked_s is None and cluster_sink is not None and cluster_sink.published >= n:
            acked_s = now
        if written_s is not None and (cluster_sink is None or acked_s is not None):
            break
        await asyncio.sleep(0.005)
    done_s = acked_s if cluster_sink is not None else written_s
    out: dict[str, Any] = {
        "events": n, "jsonl_written_s": _round(written_s, 3), "acked_s": _round(acked_s, 3),
        "jsonl_events_per_s": round(n / written_s) if written_s else None,
        "events_per_s": round(n / done_s) if done_s else None,
        "dropped": sum(s.dropped_events for s in sinkset.stats().values()),
    }
    if cluster_sink is not None:
        out["retries"] = cluster_sink.retries
        out["published"] = cluster_sink.published
    await sinkset.aclose()
    if store is not None:
        await store.close()
    return out


def sinks_phase(urls: list[str], workdir: Path, n: int, repeats: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {"jsonl": [], "jsonl+cluster": []}
    for r in range(repeats):
        for label, cluster in (("jsonl", None), ("jsonl+cluster", urls)):
            res = asyncio.run(sink_run(n, workdir, f"{label}-{r}", cluster, timeout_s=max(120.0, n / 50)))
            runs[label].append(res)
            progress(f"sinks: {label} run {r + 1}/{repeats}: {res['events_per_s']} events/s "
                     f"(JSONL {res['jsonl_events_per_s']} events/s)")
    _, stored = asyncio.run(stored_events(urls, "SWAPWATCH_BENCH", "swapwatch.bench"))
    summary: dict[str, Any] = {"events_per_run": n, "repeats": repeats, "runs": runs,
                               "stored_in_bench_stream": stored, "expected_in_bench_stream": n * repeats}
    for label, rs in runs.items():
        rates = [x["events_per_s"] for x in rs if x["events_per_s"]]
        summary[label] = {"median_events_per_s": round(statistics.median(rates)) if rates else None}
    a, b = summary["jsonl"]["median_events_per_s"], summary["jsonl+cluster"]["median_events_per_s"]
    summary["cluster_vs_jsonl"] = round(b / a, 4) if a and b else None
    return summary


# --- 4. serve, plain and in a 1-node cluster ----------------------------------------------------------


class PlainNode(MonitorNode):
    """`swapwatch serve` without `--cluster`: the single-node baseline."""

    def command(self) -> list[str]:
        cmd = super().command()
        for option in ("--cluster", "--node"):
            i = cmd.index(option)
            del cmd[i : i + 2]
        return cmd


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frames_now(node: MonitorNode) -> int:
    status, body = node.api("GET", "/api/status")
    if status != 200:
        raise RigError(f"{node.name}: GET /api/status: HTTP {status}")
    return sum(int(s.get("frames") or 0) for s in body["streams"].values() if not s.get("remote"))


def measure_node(node: MonitorNode, seconds: float) -> dict[str, Any]:
    """Events/s (its JSONL file), frames/s (its status) and CPU of `node` over `seconds` of steady running."""
    assert node.proc is not None
    load = os.getloadavg()[0]
    f0, c0, w0 = frames_now(node), cpu_seconds(node.proc.pid), time.time()
    time.sleep(seconds)
    f1, c1, w1 = frames_now(node), cpu_seconds(node.proc.pid), time.time()
    events = [e for e in node.events() if w0 <= event_time(e["time"]) < w1]
    frames = f1 - f0
    cpu = (c1 - c0) if c0 is not None and c1 is not None else None
    return {"seconds": round(w1 - w0, 2), "events": len(events), "events_per_s": round(len(events) / (w1 - w0), 2),
            "frames": frames, "frames_per_s": round(frames / (w1 - w0), 2), "cpu_s": _round(cpu),
            "cpu_ms_per_frame": round(1000 * cpu / frames, 2) if cpu is not None and frames else None,
            "load_before": round(load, 2)}


def serve_phase(root: Path, nats_urls: str, url: str, seconds: float) -> dict[str, Any]:
    streams = ["ovh0", "ovh1"]
    out: dict[str, Any] = {"streams": len(streams), "seconds": seconds}
    root.mkdir(parents=True, exist_ok=True)
    plain = PlainNode("plain", root, "", dict(MONITOR_SETTINGS))
    try:
        start_ready(plain)
        for s in streams:
            status, body = plain.api("POST", "/api/streams", {"name": s, "url": url})
            if status != 201:
                raise RigError(f"plain: adding {s}: HTTP {status}: {body}")
        wait_live(lambda: {n for n, st in plain.api("GET", "/api/status")[1]["streams"].items()
                           if st.get("running") and st.get("source_state") == "live"} >= set(streams))
        time.sleep(3.0)
        progress(f"serve: plain node, {len(streams)} streams, measuring {seconds:g} s")
        out["single"] = measure_node(plain, seconds)
    finally:
        plain.stop()
    rig = ClusterRig(root / "cluster", nats_urls, settings={"cluster.bucket_prefix": "ovh"})
    try:
        node = rig.add_node("c0", start=False)
        start_ready(node)
        for s in streams:
            rig.add_stream(s, url, via=node)
        rig.wait_until(lambda v: set(running_on(v)) == set(streams), timeout_s=REBALANCE_TIMEOUT_S, poll_s=0.5)
        time.sleep(3.0)
        progress(f"serve: 1-node cluster, {len(streams)} streams, measuring {seconds:g} s")
        out["cluster"] = measure_node(node, seconds)
    finally:
        rig.stop()
    for key in ("events_per_s", "frames_per_s", "cpu_ms_per_frame"):
        a, b = out["single"].get(key), out["cluster"].get(key)
        out[f"cluster_vs_single_{key}"] = round(b / a, 3) if a and b else None
    return out


def wait_live(check: Any, timeout_s: float = REBALANCE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError):
            if check():
                return
        time.sleep(0.5)
    raise RigError(f"streams not live within {timeout_s:g} s")


# --- report ------------------------------------------------------------------------------------------


def plot(kills: list[Kill], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for k in kills:
        values = [v for v in k.takeover_s.values() if v is not None]
        claims = [v for v in k.claimed_s.values() if v is not None]
        ax.scatter([k.index] * len(claims), claims, facecolors="none", edgecolors="#2a7ab9", s=24, zorder=3,
                   label="lease won, stream opening" if k is kills[0] else None)
        ax.scatter([k.index] * len(values), values, color="#2a7ab9", s=24, zorder=3,
                   label="first scoring event" if k is kills[0] else None)
        missing = [s for s, v in k.takeover_s.items() if v is None]
        if missing:
            ax.scatter([k.index], [TTL_S + RENEW_S + 1], marker="x", color="#c0392b", zorder=3)
    ax.axhline(TTL_S + RENEW_S, color="#c0392b", linestyle="--",
               label=f"lease TTL + renewal = {TTL_S + RENEW_S:g} s (then the stream opens)")
    ax.axhline(TTL_S, color="#999999", linestyle=":", label=f"lease TTL = {TTL_S:g} s")
    ax.set_xlabel("kill -9 of a monitor node")
    ax.set_ylabel("kill -> first scoring event elsewhere, s")
    ax.set_xticks([k.index for k in kills])
    ax.set_ylim(0, max([TTL_S + RENEW_S + 2.0, *(v + 0.5 for k in kills for v in k.takeover_s.values() if v)]))
    ax.set_title("Takeover of a killed node's streams (each marker: one stream)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict[str, Any]) -> None:
    t = results["takeover"]
    e = results["events"]
    print(f"\ncluster bench: {t['kills']} kills of {NODES} monitor nodes, {len(STREAMS)} RTSP streams, "
          f"lease TTL {TTL_S:g} s, renewal {RENEW_S:g} s; wall {results['wall_s'] / 60:.1f} min")
    print(f"{'takeover (kill -> first scoring event elsewhere)':52s} p50 {t['p50_s']} s, max {t['max_s']} s "
          f"over {t['streams_moved']} stream moves ({t['not_taken_over']} not taken over)")
    print(f"{'  of which kill -> lease won (stream connecting)':52s} p50 {t['claimed_p50_s']} s, "
          f"max {t['claimed_max_s']} s (bound: TTL + renewal = {TTL_S + RENEW_S:g} s)")
    print(f"{'events emitted / in the durable stream':52s} {e['emitted']} / {e['stored_messages']}")
    print(f"{'events lost':52s} {e['lost']} ({e['lost_killed_within_1s']} written <= 1 s before their node's kill)")
    print(f"{'events stored twice':52s} {e['duplicates']}")
    print(f"{'streams scored by two nodes at once (overlaps)':52s} {len(e['overlaps'])}")
    if results.get("start_failures"):
        print(f"{'node starts that failed and were retried':52s} {len(results['start_failures'])} "
              f"(last: {results['start_failures'][-1]['error'][:60]})")
    s = results.get("sinks")
    if s:
        print(f"{'sinks: JSONL alone, events/s (median)':52s} {s['jsonl']['median_events_per_s']}")
        print(f"{'sinks: JSONL + cluster, acknowledged events/s':52s} {s['jsonl+cluster']['median_events_per_s']} "
              f"(x{s['cluster_vs_jsonl']})")
    v = results.get("serve")
    if v:
        for key, label in (("single", "serve: single node"), ("cluster", "serve: 1-node cluster")):
            r = v[key]
            print(f"{label + ', 2 streams':52s} {r['events_per_s']} events/s, {r['frames_per_s']} frames/s, "
                  f"{r['cpu_ms_per_frame']} CPU ms/frame")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench-cluster"), help="folder for results.json and takeover.png")
    p.add_argument("--kills", type=int, default=10, help="monitor nodes killed with -9, one after another (default 10)")
    p.add_argument("--synthetic-events", type=int, default=20000, help="events per sink run (default 20000)")
    p.add_argument("--repeats", type=int, default=3, help="alternating sink runs (default 3)")
    p.add_argument("--overhead-seconds", type=float, default=20.0, help="steady-state seconds per serve run (default 20)")
    p.add_argument("--budget-s", type=float, default=3600.0,
                   help="stop killing once this many seconds have passed (the rest still runs; default 3600)")
    args = p.parse_args(argv)
    if find_nats_server() is None:
        print("cluster bench: nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    backend, why = choose_backend()
    if backend is None:
        print(f"cluster bench: no RTSP server: {why}", file=sys.stderr)
        return 2

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Closing the sink runs' connections logs "lost the connection" (meant for a node); not news here.
    logging.getLogger("swapwatch.stream.cluster.store").setLevel(logging.ERROR)
    started = time.monotonic()
    out: Path = args.out.resolve()  # the nodes run in their own folder: relative paths would land there
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_count": os.cpu_count(),
                               "lease_ttl_s": TTL_S, "renew_s": RENEW_S, "nodes": NODES, "streams": len(STREAMS)}
    with contextlib.ExitStack() as stack:
        clip = write_face_clip(work / "clip.mp4", width=320, height=180, fps=10, seconds=4.0)
        rtsp: RtspServer = start_rtsp_server(clip, work / "rtsp", backend=backend)
        stack.callback(rtsp.stop)
        progress(f"RTSP server ({backend}) at {rtsp.url}; starting 3 nats-server nodes")
        nats = stack.enter_context(LocalNatsCluster(work / "nats", 3))
        rig = ClusterRig(work / "nodes", nats.url_list)
        stack.callback(rig.stop)
        progress(f"NATS cluster at {nats.url_list}; starting {NODES} monitor nodes")
        kills = takeover_phase(rig, rtsp.url, args.kills, started + args.budget_s)
        results["takeover"] = takeover_summary(kills)
        progress("events: stopping every node gracefully and reading the durable stream back")
        results["events"] = events_check(rig, nats.urls, kills)
        progress(f"events: {results['events']['emitted']} emitted, {results['events']['lost']} lost, "
                 f"{results['events']['duplicates']} stored twice")
        if args.synthetic_events > 0 and args.repeats > 0:
            results["sinks"] = sinks_phase(nats.urls, work / "sinks", args.synthetic_events, args.repeats)
        if args.overhead_seconds > 0:
            results["serve"] = serve_phase(work / "serve", nats.url_list, rtsp.url, args.overhead_seconds)
    results["start_failures"] = START_FAILURES
    results["wall_s"] = round(time.monotonic() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if kills:
        plot(kills, out / "takeover.png")
    print_table(results)
    print(f"\nwrote {out / 'results.json'} and {out / 'takeover.png'}")
    e = results["events"]
    return 1 if e["lost"] or e["duplicates"] or e["overlaps"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
