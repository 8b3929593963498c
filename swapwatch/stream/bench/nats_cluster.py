"""A local NATS JetStream cluster of real `nats-server` processes on loopback, for tests, the cluster
bench, and operators trying the cluster on one machine:

    python -m swapwatch.stream.bench.nats_cluster --root /tmp/nats --nodes 3

Each node gets a config file, a JetStream store dir and a log file under the root folder, and three
ports on 127.0.0.1 (client, cluster route, HTTP monitoring): free ones by default, or fixed ones from
`base_port` (client base+i, route base+2000+i, monitoring base+4000+i, as 4222/6222/8222).
Readiness and leaders are read from the monitoring endpoints (`/healthz`, `/jsz`, `/routez`).

Nodes do not advertise their client URLs (`no_advertise`): a client only ever uses the URLs it was
given, so a client connected through a `TcpProxy` cannot sidestep a partition by reconnecting to a
server it discovered from the cluster.

Leaders, as nats-server 2.9 reports them: `/jsz` has `meta_cluster.leader` (server name); with
`?accounts=true&streams=true`, `account_details[].stream_detail[]` lists the streams the queried server
holds a replica of, each with `cluster.leader`. A KV bucket is the stream `KV_<bucket>`. A server only
lists the streams it holds, and a follower may name a leader that has just died, so a leader counts
only when that very server, alive, names itself.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

HOST = "127.0.0.1"
BINARY_ENV = "SWAPWATCH_NATS_SERVER"
INSTALL_HINT = "apt-get install nats-server"
READY_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 5.0
_TERMINATING = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


class NatsClusterError(RuntimeError):
    """nats-server is missing, a node did not start, or the cluster did not become ready in time."""


def find_nats_server() -> str | None:
    """The nats-server binary: $SWAPWATCH_NATS_SERVER, else PATH, else Debian's /usr/sbin (not on every PATH)."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("nats-server")
    if found:
        return found
    return "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is picked, so the OS hands out `count` different ones.
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _get_json(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> dict[str, Any] | None:
    """The JSON body of a monitoring endpoint, or None when the server does not answer 200 in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):  # refused, reset, timed out, HTTP 503 (HTTPError is an OSError), bad JSON
        return None
    return body if isinstance(body, dict) else None


@dataclass
class NatsNode:
    """One nats-server of the cluster: its name, ports and files (all fixed for its whole life)."""

    name: str
    client_port: int
    route_port: int
    http_port: int
    store_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, path: str) -> dict[str, Any] | None:
        """GET a monitoring endpoint (path with query, e.g. "/jsz?streams=true"); None when not answered."""
        return _get_json(self.monitor_url + path) if self.running else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalNatsCluster:
    """N nats-server processes (default 3) with JetStream, routed to each other; N=1 is a plain server.

    `start()` (or `with`) returns once every node is healthy, fully routed and agrees on a JetStream meta
    leader. Nodes are addressed by name ("n0", "n1", ...) or index.
    """

    def __init__(
        self,
        root: Path | str,
        nodes: int = 3,
        *,
        cluster_name: str = "swapwatch",
        base_port: int | None = None,
        binary: str | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got {nodes}")
        self.root = Path(root).resolve()
        self.size = nodes
        self.cluster_name = cluster_name
        self.base_port = base_port
        self.binary = binary
        self.ready_timeout_s = ready_timeout_s
        self.nodes: list[NatsNode] = []

    # --- addresses -------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def urls(self) -> list[str]:
        """Client URLs, one per node (nats-py's `connect` takes this list, not a comma-joined string)."""
        return [n.url for n in self.nodes]

    @property
    def url_list(self) -> str:
        """The client URLs comma-joined, as `--cluster` takes them."""
        return ",".join(self.urls)

    def node(self, name_or_index: str | int) -> NatsNode:
        if isinstance(name_or_index, int):
            return self.nodes[name_or_index]
        for n in self.nodes:
            if n.name == name_or_index:
                return n
        raise KeyError(f"no node {name_or_index!r} (nodes: {', '.join(self.names)})")

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Write the configs, start every node and wait until the cluster is ready.

        With free ports, a port another process grabbed in between (the node's log says "address already
        in use") makes it retry with fresh ports, up to three times.
        """
        binary = self.binary or find_nats_server()
        if binary is None or not os.access(binary, os.X_OK):
            raise NatsClusterError(f"nats-server not found (looked at ${BINARY_ENV}, PATH, /usr/sbin); "
                                   f"install it: {INSTALL_HINT}")
        self.binary = binary
        self.root.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.base_port is not None else 3
        for attempt in range(attempts):
            self._plan()
            for n in self.nodes:
                self._write_config(n)
                self._spawn(n)
            atexit.register(self.stop)
            try:
                self.wait_ready()
                return self
            except NatsClusterError as err:
                port_taken = any("address already in use" in n.log_tail() for n in self.nodes)
                self.stop()
                if not port_taken or attempt == attempts - 1:
                    raise err
            except BaseException:  # Ctrl-C while waiting: leave no server behind
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a few seconds); the files stay under the root."""
        atexit.unregister(self.stop)
        for n in self.nodes:
            if n.process is not None and n.process.poll() is None:
                n.process.send_signal(signal.SIGCONT)  # a node frozen with SIGSTOP cannot handle SIGTERM
                n.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for n in self.nodes:
            if n.process is None:
                continue
            try:
                n.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.process.kill()
                n.process.wait(timeout=STOP_TIMEOUT_S)
            n.process = None

    def kill(self, name_or_index: str | int, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a node; for one that ends the process (SIGKILL, SIGTERM...), wait until it has.

        SIGSTOP / SIGCONT freeze and thaw a node instead (it keeps its sockets but answers nothing, so
        leader lookups spend their HTTP timeout on it).
        """
        n = self.node(name_or_index)
        if n.process is None or n.process.poll() is not None:
            return
        n.process.send_signal(sig)
        if sig in _TERMINATING:
            if sig != signal.SIGKILL:
                n.process.send_signal(signal.SIGCONT)  # a frozen node handles SIGTERM only once thawed
            n.process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self, name_or_index: str | int, *, timeout_s: float | None = None) -> None:
        """Start a node again with its ports and store dir (killing it first if it runs); return once it
        is healthy, routed to every other running node and knows the meta leader."""
        n = self.node(name_or_index)
        if n.running:
            self.kill(n.name)
        self._spawn(n)
        self._wait(lambda: self._node_problem(n), timeout_s or self.ready_timeout_s, [n])

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until every running node is healthy and routed, and all agree on one meta leader."""
        self._wait(self._cluster_problem, timeout_s or self.ready_timeout_s, self.nodes)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- leaders ---------------------------------------------------------------------------------

    def meta_leader(self) -> str | None:
        """The name of the JetStream meta leader, or None while there is none (an election is running)."""
        for n in self.nodes:
            jsz = n.get("/jsz")
            if jsz is None:
                continue
            if self.size == 1:
                return n.name
            if (jsz.get("meta_cluster") or {}).get("leader") == n.name:
                return n.name
        return None

    def stream_leader(self, stream: str) -> str | None:
        """The name of the server leading a stream (a KV bucket's is "KV_<bucket>"), or None while it has
        none or it does not exist."""
        for n in self.nodes:
            jsz = n.get("/jsz?accounts=true&streams=true")
            if jsz is None:
                continue
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") != stream:
                        continue
                    # A single server reports no cluster block: it leads whatever it holds.
                    leader = (detail.get("cluster") or {}).get("leader") or (n.name if self.size == 1 else None)
                    if leader == n.name:
                        return n.name
        return None

    def wait_for_leader(
        self, stream: str | None = None, *, other_than: str | None = None, timeout_s: float = 20.0
    ) -> str:
        """Wait for a meta leader (or `stream`'s leader) other than `other_than`; return its name.

        After a leader dies, its peers wait out an election timeout first: 4-9 s in nats-server 2.9.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.meta_leader() if stream is None else self.stream_leader(stream)
            if leader is not None and leader != other_than:
                return leader
            if time.monotonic() > deadline:
                what = "meta leader" if stream is None else f"leader of stream {stream!r}"
                raise NatsClusterError(f"no {what} other than {other_than!r} within {timeout_s:.0f} s "
                                       f"(last seen: {leader!r})")
            time.sleep(0.1)

    # --- internals -------------------------------------------------------------------------------

    def _plan(self) -> None:
        if self.base_port is not None:
            b = self.base_port
            ports = [(b + i, b + 2000 + i, b + 4000 + i) for i in range(self.size)]
        else:
            free = _free_ports(3 * self.size)
            ports = [(free[3 * i], free[3 * i + 1], free[3 * i + 2]) for i in range(self.size)]
        self.nodes = [
            NatsNode(
                name=f"n{i}",
                client_port=client,
                route_port=route,
                http_port=http,
                store_dir=self.root / f"n{i}",
                config_path=self.root / f"n{i}.conf",
                log_path=self.root / f"n{i}.log",
            )
            for i, (client, route, http) in enumerate(ports)
        ]

    def _write_config(self, n: NatsNode) -> None:
        lines = [
            f"server_name: {n.name}",
            f"listen: {HOST}:{n.client_port}",
            f"http: {HOST}:{n.http_port}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(n.store_dir))}",
            "}",
        ]
        if self.size > 1:
            routes = [f"    nats-route://{HOST}:{o.route_port}" for o in self.nodes if o is not n]
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: {HOST}:{n.route_port}",
                "  no_advertise: true",
                "  routes: [",
                *routes,
                "  ]",
                "}",
            ]
        n.config_path.write_text("\n".join(lines) + "\n")

    def _spawn(self, n: NatsNode) -> None:
        assert self.binary is not None
        with n.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {n.name}\n".encode())
            log.flush()
            # Its own session: a Ctrl-C in the terminal reaches only our process, which stops the nodes.
            n.process = subprocess.Popen(
                [self.binary, "-c", str(n.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _node_problem(self, n: NatsNode) -> str | None:
        """Why `n` is not ready yet, or None when it is."""
        health = n.get("/healthz")
        if health is None or health.get("status") != "ok":
            return "not healthy"
        peers = sum(1 for o in self.nodes if o is not n and o.running)
        if peers:
            routez = n.get("/routez")
            if routez is None or int(routez.get("num_routes", 0)) < peers:
                return f"routes to {peers} peers not all up"
            jsz = n.get("/jsz")
            if jsz is None or not (jsz.get("meta_cluster") or {}).get("leader"):
                return "no meta leader known"
        return None

    def _cluster_problem(self) -> str | None:
        running = [n for n in self.nodes if n.running]
        for n in running:
            problem = self._node_problem(n)
            if problem:
                return f"{n.name}: {problem}"
        if self.size > 1:
            seen = {n.name: ((n.get("/jsz") or {}).get("meta_cluster") or {}).get("leader") for n in running}
            if len(set(seen.values())) != 1:
                return f"meta leaders disagree: {seen}"
        return None

    def _wait(self, problem: Callable[[], str | None], timeout_s: float, watched: list[NatsNode]) -> None:
        deadline = time.monotonic() + timeout_s
        last: str | None = "not checked"
        while time.monotonic() < deadline:
            for n in watched:
                if n.process is not None and n.process.poll() is not None:
                    raise NatsClusterError(f"nats-server {n.name} exited with code {n.process.returncode}; "
                                           f"{n.log_path} ends with:\n{n.log_tail()}")
            last = problem()
            if last is None:
                return
            time.sleep(0.1)
        tails = "\n".join(f"--- {n.log_path}:\n{n.log_tail(15)}" for n in watched)
        raise NatsClusterError(f"NATS cluster not ready within {timeout_s:.0f} s ({last})\n{tails}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m swapwatch.stream.bench.nats_cluster",
        description="Run a local NATS JetStream cluster on 127.0.0.1 until Ctrl-C.",
    )
    p.add_argument("--root", type=Path, default=None,
                   help="folder for configs, store dirs and logs (default: a new temporary folder); "
                        "reuse it to keep the streams across runs")
    p.add_argument("--nodes", type=int, default=3, help="number of servers (1: a single server, no cluster)")
    p.add_argument("--name", default="swapwatch", help="cluster name")
    p.add_argument("--base-port", type=int, default=None,
                   help="fixed ports: clients BASE+i, routes BASE+2000+i, monitoring BASE+4000+i "
                        "(e.g. 4222; default: free ports)")
    args = p.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="swapwatch-nats-"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cluster = LocalNatsCluster(root, args.nodes, cluster_name=args.name, base_port=args.base_port)
    try:
        with cluster:
            for n in cluster.nodes:
                print(f"{n.name}: {n.url}  (monitoring {n.monitor_url}, log {n.log_path})")
            print(f"meta leader: {cluster.meta_leader()}")
            print(f"--cluster {cluster.url_list}")
            print("Ctrl-C stops the cluster.", flush=True)
            while not stop.wait(0.5):
                pass
    except NatsClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
