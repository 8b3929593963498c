"""The cluster's parts one by one: names as keys, the assignment, the config, and leases and the events
stream against a real (single) nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapwatch.errors import ConfigError
from swapwatch.stream.bench.nats_cluster import LocalNatsCluster, find_nats_server
from swapwatch.stream.cluster.assign import assign, surplus
from swapwatch.stream.cluster.config import ClusterConfig
from swapwatch.stream.cluster.keys import name_to_token, token_to_name
from swapwatch.stream.config import load_monitor_config
from swapwatch.stream.events import stream_event

needs_nats = pytest.mark.skipif(find_nats_server() is None, reason="nats-server is not installed (apt-get install nats-server)")


@pytest.mark.parametrize(("name", "token"), [
    ("cam1", "cam1"),
    ("10.0.0.5:554_live", "10=2E0=2E0=2E5=3A554_live"),
    ("desk@studio-2", "desk=40studio-2"),
    ("a.b", "a=2Eb"),
])
def test_stream_names_map_to_one_key_and_back(name: str, token: str) -> None:
    assert name_to_token(name) == token
    assert token_to_name(token) == name


def test_a_malformed_token_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown escape"):
        token_to_name("cam=ZZ")


@pytest.mark.parametrize(("streams", "loads", "capacity", "expected"), [
    # empty nodes share six streams evenly
    (["s1", "s2", "s3", "s4", "s5", "s6"], {"a": 0, "b": 0, "c": 0}, {"a": 8, "b": 8, "c": 8}, {"a": 2, "b": 2, "c": 2}),
    # a busy node gets nothing until the others catch up
    (["s1", "s2"], {"a": 3, "b": 1, "c": 1}, {"a": 8, "b": 8, "c": 8}, {"b": 1, "c": 1}),
    # capacity is a ceiling: the rest waits
    (["s1", "s2", "s3"], {"a": 1, "b": 0}, {"a": 1, "b": 1}, {"b": 1}),
    # a node with twice the capacity takes twice the share
    (["s1", "s2", "s3", "s4", "s5", "s6"], {"a": 0, "b": 0}, {"a": 8, "b": 4}, {"a": 4, "b": 2}),
    # capacity 0 (WHIP-only node) claims nothing
    (["s1", "s2"], {"a": 0, "b": 0}, {"a": 0, "b": 4}, {"b": 2}),
])
def test_assignment_fills_the_least_loaded_first(
    streams: list[str], loads: dict[str, int], capacity: dict[str, int], expected: dict[str, int]
) -> None:
    plan = assign(streams, loads, capacity)
    counts: dict[str, int] = {}
    for node in plan.values():
        counts[node] = counts.get(node, 0) + 1
    assert counts == expected


def test_assignment_is_the_same_on_every_node() -> None:
    streams = [f"cam{i}" for i in range(20)]
    loads, capacity = {"a": 0, "b": 0, "c": 0}, {"a": 10, "b": 10, "c": 10}
    assert assign(streams, loads, capacity) == assign(list(reversed(streams)), dict(reversed(loads.items())), capacity)


@pytest.mark.parametrize(("me", "loads", "capacity", "hands_over"), [
    ("a", {"a": 2, "b": 2, "c": 2, "d": 0}, dict.fromkeys("abcd", 8), True),  # busiest, first by name
    ("b", {"a": 2, "b": 2, "c": 2, "d": 0}, dict.fromkeys("abcd", 8), False),  # also busy, but not first
    ("a", {"a": 2, "b": 1}, {"a": 8, "b": 8}, False),  # one apart: moving would just swap the imbalance
    ("a", {"a": 3, "b": 1}, {"a": 8, "b": 1}, False),  # the light node has no room
])
def test_only_the_busiest_node_hands_over_and_only_when_it_evens_the_load(
    me: str, loads: dict[str, int], capacity: dict[str, int], hands_over: bool
) -> None:
    assert surplus(me, loads, capacity) is hands_over


@pytest.mark.parametrize(("overrides", "field"), [
    ({"cluster.urls": ["http://nats:4222"]}, "cluster.urls"),
    ({"cluster.urls": []}, "cluster.urls"),
    ({"cluster.urls": ["nats://h:4222"], "cluster.node": "bad name"}, "cluster.node"),
    ({"cluster.urls": ["nats://h:4222"], "cluster.renew_s": 5, "cluster.lease_ttl_s": 10}, "cluster"),
    ({"cluster.urls": ["nats://h:4222"], "cluster.events_subject": "a..b"}, "cluster.events_subject"),
    ({"cluster.urls": ["nats://h:4222"], "cluster.lease_tll_s": 3}, "cluster.lease_tll_s"),
])
def test_a_bad_cluster_config_names_its_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_monitor_config(None, overrides)


def test_the_local_stop_comes_before_the_server_side_expiry() -> None:
    c = ClusterConfig(urls=["nats://h:4222"])
    assert 0 < c.stop_margin_s < c.lease_ttl_s
    assert c.lease_ttl_s - c.stop_margin_s > 2 * c.renew_s  # two renewals may fail before a stream stops


# --- against a real nats-server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if find_nats_server() is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    with LocalNatsCluster(tmp_path_factory.mktemp("nats"), 1) as cluster:
        yield cluster.urls[0]


def config(url: str, **extra: object) -> ClusterConfig:
    return ClusterConfig.model_validate({"urls": [url], "replicas": 1, "lease_ttl_s": 1.5, "renew_s": 0.5,
                                         "request_timeout_s": 0.5, **extra})


@needs_nats
def test_a_lease_is_held_by_one_node_and_fenced_by_revision(nats_url: str) -> None:
    from swapwatch.stream.cluster.leases import LeaseBook
    from swapwatch.stream.cluster.store import ClusterStore

    async def scenario() -> None:
        cfg = config(nats_url, bucket_prefix="fence")
        store = ClusterStore(cfg)
        await store.connect()
        assert store.leases is not None
        a = LeaseBook(store.leases, "a", ttl_s=cfg.lease_ttl_s, margin_s=cfg.stop_margin_s)
        b = LeaseBook(store.leases, "b", ttl_s=cfg.lease_ttl_s, margin_s=cfg.stop_margin_s)
        try:
            assert await a.claim("cam.1") is not None
            assert await b.claim("cam.1") is None  # held
            assert await a.renew("cam.1") == "renewed"
            await asyncio.sleep(cfg.lease_ttl_s + 0.3)  # a stops renewing: the server forgets the lease
            assert a.overdue() == ["cam.1"]  # and a knew before the server did
            assert await b.claim("cam.1") is not None
            assert await a.renew("cam.1") == "lost"  # its old revision no longer fits
            assert "cam.1" not in a.held
            await b.release("cam.1")
            assert await a.claim("cam.1") is not None  # released: free at once
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@needs_nats
def test_a_bucket_with_another_ttl_is_a_config_error_naming_the_field(nats_url: str) -> None:
    from swapwatch.stream.cluster.store import ClusterStore

    async def scenario() -> None:
        first = ClusterStore(config(nats_url, bucket_prefix="ttl"))
        await first.connect()
        await first.close()
        other = ClusterStore(config(nats_url, bucket_prefix="ttl", lease_ttl_s=3.0, renew_s=1.0))
        with pytest.raises(ConfigError, match="cluster.lease_ttl_s"):
            await other.connect()
        await other.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@needs_nats
def test_events_reach_the_stream_once_even_when_sent_twice(nats_url: str, tmp_path: Path) -> None:
    from swapwatch.stream.cluster.event_log import ClusterEventSink, read_events
    from swapwatch.stream.cluster.store import ClusterStore
    from swapwatch.stream.server.feed import EventFilter

    async def scenario() -> None:
        cfg = config(nats_url, bucket_prefix="ev", events_stream="EV_ONCE", events_subject="once")
        store = ClusterStore(cfg)
        await store.connect()
        assert store.js is not None
        events = [stream_event(f"cam{i % 3}", "live") for i in range(30)]
        try:
            for attempt in range(2):  # the second sink resends the same ids, as a retry after a failover would
                sink = ClusterEventSink(cfg, store.js, tmp_path / f"outbox{attempt}.sqlite")
                sink.start()
                for event in events:
                    await sink.publish(event)
                await sink.aclose()
                assert sink.published == 30
            stored, read = await read_events(store.js, cfg, limit=1000)
            assert read == 30
            assert [e.id for e in stored] == [e.id for e in events]
            only_cam1, _ = await read_events(store.js, cfg, EventFilter(streams=frozenset({"cam1"})), limit=1000)
            assert {e.stream for e in only_cam1} == {"cam1"} and len(only_cam1) == 10
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@needs_nats
def test_events_wait_in_the_outbox_while_nats_is_away_and_go_out_at_the_next_start(
    nats_url: str, tmp_path: Path
) -> None:
    import nats

    from swapwatch.stream.cluster.event_log import ClusterEventSink, read_events
    from swapwatch.stream.cluster.store import ClusterStore

    async def scenario() -> None:
        cfg = config(nats_url, bucket_prefix="ob", events_stream="EV_OUTBOX", events_subject="outbox")
        store = ClusterStore(cfg)
        await store.connect()
        assert store.js is not None and store.nc is not None
        outbox = tmp_path / "outbox.sqlite"
        events = [stream_event("cam", "live") for _ in range(5)]
        try:
            dead = await nats.connect(servers=[nats_url])
            js_dead = dead.jetstream(timeout=0.3)
            await dead.close()  # a connection that will never answer
            sink = ClusterEventSink(cfg, js_dead, outbox, close_timeout_s=0.5)
            sink.start()
            for event in events:
                await sink.publish(event)
            await sink.aclose()
            assert sink.published == 0 and sink.depth == 5
            resumed = ClusterEventSink(cfg, store.js, outbox)
            assert resumed.resumed == 5
            resumed.start()
            await resumed.aclose()
            stored, _ = await read_events(store.js, cfg, limit=100)
            assert [e.id for e in stored] == [e.id for e in events]
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@needs_nats
def test_a_bucket_read_lists_every_key_every_time(nats_url: str) -> None:
    from swapwatch.stream.cluster.store import ClusterStore, encode

    async def scenario() -> None:
        store = ClusterStore(config(nats_url, bucket_prefix="snap"))
        await store.connect()
        assert store.desired is not None
        try:
            for i in range(5):
                await store.desired.put(f"cam{i}", encode({"i": i}))
            await store.desired.delete("cam4")
            for _ in range(200):  # nats-py's watcher returned an empty bucket a few times in a thousand
                snap = await store.snapshot("streams")
                assert {k: e.value["i"] for k, e in snap.items()} == {f"cam{i}": i for i in range(4)}
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@needs_nats
def test_a_second_live_process_with_the_same_node_name_is_refused(nats_url: str) -> None:
    from typing import Any, cast

    from swapwatch.stream.cluster.node import ClusterNode
    from swapwatch.stream.cluster.store import ClusterStore, encode

    async def scenario() -> None:
        cfg = config(nats_url, bucket_prefix="twin", node="twin")
        store = ClusterStore(cfg)
        await store.connect()
        assert store.nodes is not None
        nodes = store.nodes

        async def other_process_heartbeats() -> None:
            while True:
                await nodes.put("twin", encode({"node": "twin", "instance": "someone-else"}))
                await asyncio.sleep(cfg.renew_s)

        beating = asyncio.create_task(other_process_heartbeats())
        try:
            await asyncio.sleep(0.2)
            node = ClusterNode(cfg, store, cast(Any, None))
            with pytest.raises(ConfigError, match="cluster.node: another running node"):
                await node.start()
            beating.cancel()
            # once that process is gone, its last heartbeat expires and a restarted node may join
            started = asyncio.get_running_loop().time()
            await node._wait_for_previous_incarnation()
            assert asyncio.get_running_loop().time() - started <= cfg.lease_ttl_s + 0.5
        finally:
            beating.cancel()
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
