"""The cluster end to end with real servers on loopback: a 3-node nats-server cluster, monitor nodes
that are real `swapwatch serve --cluster` processes, and six RTSP streams from the GStreamer RTSP server.

The tests run in order on one module-wide rig (starting it costs ~20 s): spread, kill a monitor node,
partition one from NATS, kill the JetStream leader. Lease timing is the rig's fast setting (TTL 5 s,
renewal every 1 s), so a dead node's streams must move within 5 s plus the time to open the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swapwatch.stream.bench.cluster_rig import (
    ClusterRig,
    MonitorNode,
    event_time,
    overlaps,
    running_on,
    scoring_events,
    stored_events,
)
from swapwatch.stream.bench.face_clip import write_face_clip
from swapwatch.stream.bench.nats_cluster import LocalNatsCluster, find_nats_server
from swapwatch.stream.bench.rtsp_replay import RtspServer, choose_backend, start_rtsp_server
from swapwatch.stream.bench.tcp_proxy import TcpProxy
from tests.stream.server.chromium import Chromium, chromium_path

TTL_S, RENEW_S = 5.0, 1.0
STREAMS = [f"cam{i}" for i in range(6)]
# A stream moves within the TTL and one renewal; opening the RTSP stream and its first frame come on top.
TAKEOVER_BOUND_S = TTL_S + RENEW_S + 4.0

pytestmark = [
    pytest.mark.skipif(find_nats_server() is None, reason="nats-server is not installed (apt-get install nats-server)"),
    pytest.mark.skipif(choose_backend()[0] is None, reason=f"no RTSP server: {choose_backend()[1]}"),
]


@dataclass
class Rig:
    nats: LocalNatsCluster
    rtsp: RtspServer
    monitors: ClusterRig
    root: Path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("cluster")
    clip = write_face_clip(root / "clip.mp4", width=320, height=180, fps=10, seconds=4)
    rtsp = start_rtsp_server(clip, root / "rtsp")
    nats = LocalNatsCluster(root / "nats", 3).start()
    monitors = ClusterRig(root / "nodes", nats.url_list)
    try:
        yield Rig(nats, rtsp, monitors, root)
    finally:
        monitors.stop()
        nats.stop()
        rtsp.stop()


def owners(view: list[dict]) -> dict[str, str | None]:
    return {entry["name"]: entry["node"] for entry in view}


def test_every_stream_is_owned_by_exactly_one_node(rig: Rig) -> None:
    nodes = rig.monitors.start_nodes(3)
    for name in STREAMS:
        rig.monitors.add_stream(name, rig.rtsp.url, via=nodes[STREAMS.index(name) % 3])
    rig.monitors.wait_until(lambda v: set(running_on(v)) == set(STREAMS), timeout_s=60)
    time.sleep(2.0)  # a few summaries from every stream
    views = [rig.monitors.view(via=n) for n in nodes]
    assert all(owners(v) == owners(views[0]) for v in views), "every node's API shows the same owners"
    per_node = {n.name: sorted(s for s, o in owners(views[0]).items() if o == n.name) for n in nodes}
    assert all(len(streams) == 2 for streams in per_node.values()), per_node  # spread by load
    scored_by: dict[str, set[str]] = {}
    for node in nodes:
        for event in scoring_events(node.events()):
            scored_by.setdefault(event["stream"], set()).add(event["node"])
    assert {s: len(n) for s, n in scored_by.items()} == dict.fromkeys(STREAMS, 1)
    assert all(next(iter(scored_by[s])) == owners(views[0])[s] for s in STREAMS)


def test_any_node_answers_for_the_whole_cluster(rig: Rig) -> None:
    a, b, c = (rig.monitors.nodes[n] for n in ("m0", "m1", "m2"))
    owner = owners(rig.monitors.view())["cam0"]
    assert a.api("POST", "/api/streams", {"name": "cam0", "url": rig.rtsp.url})[0] == 409
    assert rig.monitors.remove_stream("no-such-stream", via=b) == 404
    status, body = b.api("GET", "/api/events?stream=cam0&type=summary&limit=5")
    assert status == 200 and body["source"] == "cluster" and body["count"] == 5
    assert {(e["stream"], e["type"], e["node"]) for e in body["events"]} == {("cam0", "summary", owner)}
    status, body = c.api("GET", "/api/status")
    assert status == 200
    assert {n["node"] for n in body["cluster"]["nodes"]} == {"m0", "m1", "m2"}
    assert set(body["streams"]) == set(STREAMS)
    assert {body["streams"][s].get("node", "m2") for s in STREAMS} == {"m0", "m1", "m2"}
    status, health = c.api("GET", "/healthz")
    assert status == 200 and health["cluster"] == {"node": "m2", "connected": True, "leases": 2}
    with urllib.request.urlopen(c.base_url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "swapwatch_cluster_connected 1.0" in metrics
    assert "swapwatch_cluster_leases 2.0" in metrics
    assert 'swapwatch_cluster_lease_changes_total{kind="claimed"}' in metrics


@pytest.mark.skipif(chromium_path() is None, reason="needs Chromium: apt-get install -y chromium")
def test_one_dashboard_shows_every_nodes_streams(rig: Rig, tmp_path: Path) -> None:
    node = rig.monitors.nodes["m2"]
    shot = tmp_path / "cluster-dashboard.png"
    read_tiles = ("JSON.stringify([...document.querySelectorAll('#tiles .tile')]"
                  ".map(t => [t.dataset.stream, t.dataset.node, t.dataset.sourceState]))")

    async def scenario() -> list[list[str]]:
        async with Chromium(tmp_path / "profile") as browser:
            page = await browser.open(node.base_url + "/")
            tiles: list[list[str]] = []
            for _ in range(150):
                tiles = json.loads(await page.evaluate(read_tiles))
                if len(tiles) == len(STREAMS) and {t[1] for t in tiles} == {"m0", "m1", "m2"}:
                    await page.screenshot(shot)
                    break
                await asyncio.sleep(0.2)
            return tiles

    tiles = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert {name: owner for name, owner, _ in tiles} == owners(rig.monitors.view())
    assert {state for _, _, state in tiles} == {"live"}
    assert shot.stat().st_size > 10_000


def test_a_stream_removed_through_any_node_stops_on_its_owner(rig: Rig) -> None:
    m = rig.monitors
    owner = m.nodes[owners(m.view())["cam5"]]
    other = next(n for n in m.nodes.values() if n is not owner)
    assert m.remove_stream("cam5", via=other) == 202
    m.wait_until(lambda v: "cam5" not in owners(v), timeout_s=10)
    removed_at = time.time()
    m.wait_until(lambda v: "cam5" not in running_on(v), timeout_s=10, via=owner)
    time.sleep(3 * RENEW_S)
    late = [e for e in scoring_events(owner.events()) if e["stream"] == "cam5" and event_time(e["time"]) > removed_at + 2 * RENEW_S]
    assert late == []
    m.add_stream("cam5", rig.rtsp.url, via=other)
    m.wait_until(lambda v: set(running_on(v)) == set(STREAMS), timeout_s=30)


def test_a_webrtc_stream_is_pinned_to_the_node_that_accepted_it(rig: Rig) -> None:
    from swapwatch.stream.bench.whip_client import FileTrack, publish

    m = rig.monitors
    ingest = m.add_node("w0", whip=True, settings={"cluster.capacity": "0"})  # WHIP only: claims nothing
    ingest.wait_ready()
    other = m.nodes["m1"]

    async def scenario() -> None:
        track = FileTrack(rig.root / "clip.mp4", loop=True)
        session = await publish(ingest.base_url + "/whip/desk1", track)
        try:
            await session.wait_connected()
            await asyncio.to_thread(m.wait_until, lambda v: running_on(v).get("desk1") == "w0", timeout_s=30,
                                    via=other)
            entry = next(e for e in m.view(via=other) if e["name"] == "desk1")
            assert entry["pinned"] == "w0"
            assert set(running_on(m.view(via=other))) == {*STREAMS, "desk1"}  # nothing moved to make room
        finally:
            await session.close()
        await asyncio.to_thread(m.wait_until, lambda v: "desk1" not in owners(v), timeout_s=15, via=other)

    asyncio.run(asyncio.wait_for(scenario(), 90))
    status, body = other.api("GET", "/api/events?stream=desk1&limit=1000")
    assert status == 200 and body["count"] > 0 and {e["node"] for e in body["events"]} == {"w0"}
    assert ingest.stop() == 0


def test_killed_node_streams_move_within_ttl_and_renewal(rig: Rig) -> None:
    m = rig.monitors
    victim = m.nodes["m0"]
    before = owners(m.view())
    moved = sorted(s for s, o in before.items() if o == victim.name)
    assert moved
    survivor = m.nodes["m1"]
    victim.kill()
    took = m.wait_until(lambda v: all(running_on(v).get(s) not in (None, victim.name) for s in moved),
                        timeout_s=TAKEOVER_BOUND_S + 10, via=survivor)
    print(f"takeover of {moved} after kill -9: {took:.2f} s")
    assert took <= TAKEOVER_BOUND_S
    assert set(running_on(m.view(via=survivor))) == set(STREAMS)
    time.sleep(1.5)
    assert overlaps({n.name: n.events() for n in m.nodes.values()}) == []
    victim.start()  # same events file and outbox: what it had not published goes out now
    victim.wait_ready()


@contextlib.contextmanager
def node_behind_proxies(rig: Rig, name: str) -> Iterator[tuple[MonitorNode, list[TcpProxy], list[str]]]:
    """A new monitor node that reaches NATS only through proxies the test controls, once it runs streams
    (by rebalancing): yields it, its proxies and the streams it runs."""
    m = rig.monitors
    proxies = [TcpProxy("127.0.0.1", int(url.rsplit(":", 1)[1])) for url in rig.nats.urls]
    try:
        node = m.add_node(name, cluster_urls=",".join(p.url for p in proxies))
        node.wait_ready()
        m.wait_until(lambda v: node.name in running_on(v).values(), timeout_s=30)
        yield node, proxies, sorted(s for s, o in running_on(m.view()).items() if o == node.name)
    finally:
        for proxy in proxies:
            proxy.close()


def wait_moved_off(rig: Rig, node: MonitorNode, streams: list[str]) -> float:
    return rig.monitors.wait_until(lambda v: all(running_on(v).get(s) not in (None, node.name) for s in streams),
                                   timeout_s=TAKEOVER_BOUND_S + 10, via=rig.monitors.nodes["m1"])


def test_partitioned_node_stops_its_streams_and_does_not_take_them_back(rig: Rig) -> None:
    m = rig.monitors
    with node_behind_proxies(rig, "m3") as (cut_off, proxies, held):
        cut_at = time.time()
        for proxy in proxies:
            proxy.cut()
        took = wait_moved_off(rig, cut_off, held)
        print(f"takeover of {held} from the partitioned node: {took:.2f} s")
        last_scored = max(
            (e["time"] for e in scoring_events(cut_off.events()) if e["stream"] in held), default=""
        )
        assert last_scored and event_time(last_scored) <= cut_at + TTL_S, "the cut-off node kept scoring past its lease"
        for proxy in proxies:
            proxy.heal()
        time.sleep(4 * RENEW_S)  # it reconnects and runs a few rounds
        now = running_on(m.view(via=m.nodes["m1"]))
        assert all(now.get(s) != cut_off.name or _won_again(cut_off, s, cut_at) for s in held)
        assert overlaps({n.name: n.events() for n in m.nodes.values()}) == []
        assert cut_off.stop() == 0  # connected again: it hands its streams back and flushes its events


def test_a_node_whose_link_goes_silent_stops_at_its_deadline(rig: Rig) -> None:
    """A black-holed link (no error, no byte): the node stops by its local deadline, not when some request
    finally times out, and before the lease can expire on the server."""
    m = rig.monitors
    with node_behind_proxies(rig, "m4") as (silent, proxies, held):
        frozen_at = time.time()
        for proxy in proxies:
            proxy.freeze()
        wait_moved_off(rig, silent, held)
        last_scored = max(event_time(e["time"]) for e in scoring_events(silent.events()) if e["stream"] in held)
        margin = min(TTL_S / 2, RENEW_S * 1.5)  # ClusterConfig.stop_margin_s
        print(f"silent link: last score {last_scored - frozen_at:.2f} s after the freeze "
              f"(deadline at most {TTL_S - margin:.1f} s after it)")
        assert last_scored <= frozen_at + TTL_S - margin + 0.5
        assert overlaps({n.name: n.events() for n in m.nodes.values()}) == []
        for proxy in proxies:
            proxy.thaw()
        assert silent.stop() == 0


def _won_again(node: MonitorNode, stream: str, after: float) -> bool:
    """The node runs `stream` again only through a new claim (logged), never by resuming the old lease."""
    log = node.log_path.read_text(errors="replace")
    return f"cluster: {stream}: claimed" in log.split("reconnected to NATS", 1)[-1]


def test_killing_the_jetstream_leader_loses_no_event_and_stores_none_twice(rig: Rig) -> None:
    m = rig.monitors
    live = [n for n in m.nodes.values() if n.alive]
    assert len(live) == 3
    offsets = {n.name: len(n.events()) for n in live}
    leader = rig.nats.stream_leader("SWAPWATCH_EVENTS")
    assert leader is not None
    rig.nats.kill(leader)
    time.sleep(6.0)  # events keep coming while the stream elects a new leader
    rig.nats.restart(leader)
    time.sleep(2.0)
    for node in live:
        assert node.stop() == 0, node.log_path.read_text()[-3000:]
    emitted = [e["id"] for n in live for e in n.events()[offsets[n.name]:]]
    assert len(emitted) > 50
    stored = [e.id for e in asyncio.run(stored_events(rig.nats.urls))[0]]
    assert len(stored) == len(set(stored)), "an event is in the durable stream twice"
    missing = set(emitted) - set(stored)
    assert not missing, f"{len(missing)} of {len(emitted)} events missing from the durable stream"
