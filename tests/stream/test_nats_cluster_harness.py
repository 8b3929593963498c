"""The harness the cluster tests and bench run on: real nats-server processes (LocalNatsCluster) and a
TCP proxy a test can cut (TcpProxy). Real parts only: Debian's nats-server on loopback ports, nats-py
clients, SIGKILL.

Async scenarios run under `run_async` (a safety deadline that turns a hang into a failure). Waits poll
a condition under a deadline; nothing asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swapwatch.stream.bench.nats_cluster import LocalNatsCluster, NatsClusterError, find_nats_server
from swapwatch.stream.bench.tcp_proxy import TcpProxy
from tests.stream.conftest import run_async

nats = pytest.importorskip("nats")
from nats.js.api import StreamConfig  # noqa: E402
from nats.js.errors import NoStreamResponseError  # noqa: E402

needs_nats_server = pytest.mark.skipif(
    find_nats_server() is None, reason="nats-server is not installed (apt-get install nats-server)"
)
# After a leader dies its peers wait out an election timeout (4-9 s in nats-server 2.9) before voting.
FAILOVER_S = 25.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsCluster]:
    if find_nats_server() is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    with LocalNatsCluster(tmp_path_factory.mktemp("nats"), 3) as c:
        yield c


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.05)


# --- LocalNatsCluster ------------------------------------------------------------------------------


@needs_nats_server
def test_three_nodes_start_routed_with_a_meta_leader(cluster: LocalNatsCluster) -> None:
    assert cluster.names == ["n0", "n1", "n2"]
    assert len(set(cluster.urls)) == 3
    assert all(u.startswith("nats://127.0.0.1:") for u in cluster.urls)
    assert cluster.url_list == ",".join(cluster.urls)
    assert cluster.meta_leader() in cluster.names
    for n in cluster.nodes:
        assert n.get("/healthz") == {"status": "ok"}
        assert (n.get("/routez") or {}).get("num_routes") == 2
        assert "jetstream" in n.config_path.read_text()
        assert n.log_path.exists()


@needs_nats_server
def test_a_single_node_runs_jetstream_without_a_cluster(tmp_path: Path) -> None:
    async def scenario(c: LocalNatsCluster) -> None:
        nc = await nats.connect(c.urls)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="SOLO", subjects=["solo.>"]))
            await js.publish("solo.a", b"x")
            await js.create_key_value(bucket="solo")
        finally:
            await nc.close()

    with LocalNatsCluster(tmp_path, 1) as c:
        assert "cluster {" not in c.nodes[0].config_path.read_text()
        assert c.meta_leader() == "n0"
        run_async(scenario(c))
        assert c.stream_leader("SOLO") == "n0"
        assert c.stream_leader("KV_solo") == "n0"
        assert c.stream_leader("NONE") is None


@needs_nats_server
def test_a_replicated_stream_fails_over_when_its_leader_is_killed_and_the_node_rejoins(
    cluster: LocalNatsCluster,
) -> None:
    async def publish(js: nats.js.JetStreamContext, msg_id: str) -> bool:
        """Publish until the stream acknowledges (bounded); True when it had the message already."""
        deadline = time.monotonic() + FAILOVER_S
        while True:
            try:
                ack = await js.publish("events.x", msg_id.encode(), timeout=1.0, headers={"Nats-Msg-Id": msg_id})
                return bool(ack.duplicate)
            except (NoStreamResponseError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # no leader: the servers answer "no responders" at once

    async def scenario() -> str:
        nc = await nats.connect(cluster.urls, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="EVENTS", subjects=["events.>"], num_replicas=3))
            assert [await publish(js, i) for i in ("e1", "e2")] == [False, False]
            leader = cluster.stream_leader("EVENTS")
            assert leader in cluster.names

            await asyncio.to_thread(cluster.kill, leader)
            assert not cluster.node(leader).running
            # Acknowledged once a new leader is elected (maybe as a duplicate: a try that timed out
            # while the client reconnected can still have been stored).
            await publish(js, "e3")
            assert await asyncio.to_thread(cluster.wait_for_leader, "EVENTS", other_than=leader) != leader
            # Retried publishes (same Nats-Msg-Id) across the failover are stored once.
            assert [await publish(js, i) for i in ("e1", "e2", "e3")] == [True, True, True]
            await asyncio.to_thread(cluster.wait_for_leader)  # stream info asks the meta leader
            assert (await js.stream_info("EVENTS")).state.messages == 3
            return leader
        finally:
            await nc.close()

    killed = run_async(scenario(), timeout=60)
    cluster.restart(killed)
    node = cluster.node(killed)
    assert node.running and node.get("/healthz") == {"status": "ok"}
    assert cluster.wait_for_leader() in cluster.names

    def stored_on_rejoined_node() -> int | None:
        jsz = node.get("/jsz?accounts=true&streams=true") or {}
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail["name"] == "EVENTS":
                    return int(detail["state"]["messages"])
        return None

    deadline = time.monotonic() + FAILOVER_S
    while stored_on_rejoined_node() != 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored_on_rejoined_node() == 3


@needs_nats_server
def test_a_kv_bucket_is_led_like_its_stream(cluster: LocalNatsCluster) -> None:
    async def scenario() -> None:
        nc = await nats.connect(cluster.urls)
        try:
            kv = await nc.jetstream().create_key_value(bucket="leases", replicas=3)
            await kv.put("cam-1", b"n0")
        finally:
            await nc.close()

    run_async(scenario())
    assert cluster.stream_leader("KV_leases") in cluster.names


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing binary", "apt-get install nats-server"),
        ("port taken", "address already in use"),
    ],
)
@needs_nats_server
def test_start_errors_say_why(tmp_path: Path, setup: str, message: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if setup == "missing binary":
            c = LocalNatsCluster(tmp_path, 1, binary=str(tmp_path / "no-nats-server"))
        else:  # fixed ports, the client port already bound by this test: the node exits at once
            c = LocalNatsCluster(tmp_path, 1, base_port=taken.getsockname()[1], ready_timeout_s=10)
        with pytest.raises(NatsClusterError, match=message):
            c.start()
    assert all(not n.running for n in c.nodes)


# --- TcpProxy --------------------------------------------------------------------------------------


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on a loopback port (a thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def roundtrip(port: int, payload: bytes) -> bytes:
    """Send `payload` through a fresh connection and read as much back; b"" when the connection drops
    (a reset can even come before the connect call returns)."""
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(payload)
            while len(got) < len(payload) and (chunk := s.recv(4096)):
                got += chunk
    except (ConnectionResetError, BrokenPipeError):
        return b""
    return got


def test_proxy_forwards_until_cut_and_again_once_healed(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        assert proxy.url == f"nats://127.0.0.1:{proxy.port}"
        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        live.sendall(b"ping")
        assert live.recv(4) == b"ping"
        assert roundtrip(proxy.port, b"x" * 100_000) == b"x" * 100_000

        proxy.cut()
        with live:
            try:
                assert live.recv(4) == b""  # the live connection is closed
            except ConnectionResetError:
                pass
        assert roundtrip(proxy.port, b"hello") == b""  # a new one is refused
        assert (proxy.is_cut, proxy.active, proxy.accepted, proxy.refused) == (True, 0, 2, 1)

        proxy.heal()
        assert roundtrip(proxy.port, b"hello") == b"hello"
        assert (proxy.accepted, proxy.refused) == (3, 1)
    assert proxy.bytes_up == proxy.bytes_down == 4 + 100_000 + 5  # final once closed


def test_proxy_resets_connections_when_the_target_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens once this socket closes
    with TcpProxy("127.0.0.1", dead_port) as proxy:
        assert roundtrip(proxy.port, b"hello") == b""
        assert (proxy.accepted, proxy.upstream_failures) == (0, 1)


@needs_nats_server
def test_proxy_partitions_a_nats_client_from_the_cluster(cluster: LocalNatsCluster) -> None:
    target = next(n for n in cluster.nodes if n.running)

    async def scenario(proxy: TcpProxy) -> None:
        disconnected, reconnected = asyncio.Event(), asyncio.Event()

        async def on_disconnect() -> None:
            disconnected.set()

        async def on_reconnect() -> None:
            reconnected.set()

        async def on_error(_: Exception) -> None:
            pass  # every refused reconnect is reported here; expected while cut

        nc = await nats.connect(
            [proxy.url], reconnect_time_wait=0.1, max_reconnect_attempts=-1,
            disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, error_cb=on_error,
        )
        try:
            sub = await nc.subscribe("probe")
            await nc.publish("probe", b"before")
            assert (await sub.next_msg(timeout=2)).data == b"before"
            assert nc.discovered_servers == []  # the cluster does not advertise: no way around the proxy

            proxy.cut()
            await asyncio.wait_for(disconnected.wait(), 5)
            await eventually(lambda: proxy.refused >= 2, 5, "reconnects refused while cut")
            assert not nc.is_connected

            proxy.heal()
            await asyncio.wait_for(reconnected.wait(), 5)
            await nc.publish("probe", b"after")
            assert (await sub.next_msg(timeout=2)).data == b"after"
        finally:
            await nc.close()

    with TcpProxy("127.0.0.1", target.client_port) as proxy:
        run_async(scenario(proxy))
        assert proxy.accepted == 2

