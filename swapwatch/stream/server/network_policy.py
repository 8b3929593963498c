"""Which hosts an API caller may make the server connect to: networks denied by default, and exceptions.

A token holder who adds `rtsp://10.0.0.1:6379/` or `http://169.254.169.254/` makes the server open a
connection inside its own network (SSRF). So for streams added through the API every address the
host resolves to is checked, and one denied address refuses the stream: a name with a public and a
private address cannot slip through on the public one.

- Denied by default (`DEFAULT_DENIED_NETWORKS`): unspecified, loopback, private (RFC 1918), shared
  (CGNAT), link-local (cloud metadata), unique-local and site-local IPv6, multicast, reserved and
  broadcast. IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is checked as the IPv4 address it maps to.
- Exceptions: `allowed_networks` (addresses) and `allowed_hosts` (names, or `*.example.com`), which
  win over the denied networks. A host named in `allowed_hosts` is not resolved at all: the admin
  trusts whatever it points to.

What this does not cover, because FFmpeg connects on its own after the check: a host whose DNS answer
changes between the check and FFmpeg's own lookup (DNS rebinding), HTTP and RTSP redirects, and HLS
segment URLs on other hosts. The protocol whitelist (sources/ffmpeg_options.py) still keeps all of those to
http(s)/rtsp. A deployment that must rule them out puts the server behind an egress firewall.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DENIED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (CGNAT)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
        "::/128",
        "::1/128",
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed by some stacks)
        "ff00::/8",  # multicast
    )
)
"""Networks API-added network sources may not reach unless an exception allows them."""

RESOLVE_TIMEOUT_S = 5.0
"""How long the check waits for a host name to resolve before refusing the stream."""


def plain_address(address: IPAddress) -> IPAddress:
    """The address a connection really reaches: the IPv4 address of an IPv4-mapped IPv6 one, else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


def address_allowed(address: IPAddress, denied: Iterable[IPNetwork], allowed: Iterable[IPNetwork]) -> bool:
    """False when `address` is in a denied network and in no allowed one."""
    addr = plain_address(address)
    if not any(addr in net for net in denied):
        return True
    return any(addr in net for net in allowed)


def normal_host(host: str) -> str:
    """A host name for comparison: lower case, without brackets or a trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def host_listed(host: str, patterns: Sequence[str]) -> bool:
    """True when `host` is one of `patterns` (exact names, or `*.domain` for any name below domain)."""
    h = normal_host(host)
    for pattern in patterns:
        p = normal_host(pattern)
        if h == p or (p.startswith("*.") and h.endswith(p[1:])):
            return True
    return False


def ip_literal(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal (`127.0.0.1`, `::1`, `[::1]`), else None."""
    try:
        return ipaddress.ip_address(normal_host(host))
    except ValueError:
        return None


async def resolve(host: str, port: int | None) -> list[IPAddress]:
    """Every address `host` resolves to (the standard library's resolver, in a worker thread).

    OSError when it does not resolve, TimeoutError after RESOLVE_TIMEOUT_S.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.run_in_executor(None, socket.getaddrinfo, normal_host(host), port, 0, socket.SOCK_STREAM),
        RESOLVE_TIMEOUT_S,
    )
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
