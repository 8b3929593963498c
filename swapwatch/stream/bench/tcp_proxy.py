"""A TCP forwarder on a loopback port that a test can cut, to partition a client from a server.

    with TcpProxy("127.0.0.1", nats_port) as proxy:
        nc = await nats.connect([proxy.url])   # the monitor node talks to NATS through the proxy
        proxy.cut()                            # its connection drops; reconnects are refused
        proxy.heal()                           # reconnects succeed again
        proxy.freeze()                         # a silent partition: connections stay open, no byte moves
        proxy.thaw()                           # the held bytes flow again

Threads only (an accept thread, two pump threads per connection), no asyncio: it works the same from
a synchronous test and from any event loop. While cut, the proxy still accepts (so it can count the
attempts) but resets each new connection at once, which a client sees as a failed connect.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Self

HOST = "127.0.0.1"
CHUNK = 65536
ACCEPT_POLL_S = 0.05
JOIN_TIMEOUT_S = 5.0


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0): the peer sees "connection reset"."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _shutdown(sock: socket.socket) -> None:
    # shutdown (unlike close) wakes a thread blocked in recv on the same socket
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Link:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True, name="tcp-proxy-up"),
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True, name="tcp-proxy-down"),
        ]
        self._done = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        _shutdown(self.client)
        _shutdown(self.upstream)

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                self.proxy._flowing.wait()  # frozen: hold the bytes, as a black-holed link would
                dst.sendall(data)
                self.proxy._count_bytes(direction, len(data))
        except OSError:
            pass
        # One side ended: end both, so the other pump returns too and each peer sees the close.
        self.close()
        with self._lock:
            self._done += 1
            last = self._done == 2
        if last:
            self.client.close()
            self.upstream.close()
            self.proxy._forget(self)


class TcpProxy:
    """Forwards every connection to 127.0.0.1:`port` on to `target_host`:`target_port`.

    `cut()` closes every live connection at once and resets new ones until `heal()`; the port stays the
    same throughout, so clients keep their URL. It starts listening in the constructor.
    """

    def __init__(self, target_host: str, target_port: int, *, port: int = 0, connect_timeout_s: float = 2.0) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout_s = connect_timeout_s
        self.accepted = 0
        """Connections forwarded to the target."""
        self.refused = 0
        """Connections reset at once because the proxy was cut."""
        self.upstream_failures = 0
        """Connections reset because the target could not be reached."""
        self.bytes_up = 0
        self.bytes_down = 0
        self._cut = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, port))
        self._listener.listen(64)
        self._listener.settimeout(ACCEPT_POLL_S)
        self.port: int = int(self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name=f"tcp-proxy-{self.port}")
        self._acceptor.start()

    @property
    def url(self) -> str:
        """The proxy's address as a NATS client URL."""
        return f"nats://{HOST}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def active(self) -> int:
        """Connections open through the proxy now."""
        with self._lock:
            return len(self._links)

    def cut(self) -> None:
        """Partition: close every live connection (both ends) and reset new ones until `heal()`.

        Returns once the live connections are closed.
        """
        with self._lock:
            self._cut = True
            links = list(self._links)
        for link in links:
            link.close()
        for link in links:
            for t in link.threads:
                t.join(JOIN_TIMEOUT_S)

    def heal(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._cut = False

    def freeze(self) -> None:
        """A silent partition: connections stay open (new ones too) but no byte goes through until `thaw()`.
        Unlike `cut()`, the client sees no error; only its requests time out."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Let the held and new bytes flow again."""
        self._flowing.set()

    @property
    def is_frozen(self) -> bool:
        return not self._flowing.is_set()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._flowing.set()  # release pumps held by a freeze, so they see their sockets close
        self.cut()
        self._closed.set()
        self._acceptor.join(JOIN_TIMEOUT_S)
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "cut" if self._cut else "frozen" if self.is_frozen else "open"
        return f"TcpProxy({HOST}:{self.port} -> {self.target[0]}:{self.target[1]}, {state})"

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                continue
            client.settimeout(None)
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._lock:
            cut = self._cut
            if cut:
                self.refused += 1
        if cut:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout_s)
        except OSError:
            with self._lock:
                self.upstream_failures += 1
            _reset(client)
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(self, client, upstream)
        with self._lock:
            admitted = not self._cut  # not cut while the upstream connection was being made
            if admitted:
                self.accepted += 1
                self._links.add(link)
            else:
                self.refused += 1
        if admitted:
            link.start()
        else:
            _reset(client)
            upstream.close()

    def _count_bytes(self, direction: str, n: int) -> None:
        with self._lock:
            if direction == "up":
                self.bytes_up += n
            else:
                self.bytes_down += n

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
