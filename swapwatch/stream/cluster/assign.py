"""Which node should take which unowned stream: the least loaded, ties broken by rendezvous hashing.

Every node runs the same function on (nearly) the same snapshot of the buckets, so they mostly agree
and only the chosen node tries to claim; when they disagree, the lease's create-if-absent decides.
Pure functions, so the spreading is tested without NATS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def rendezvous(node: str, stream: str) -> int:
    """A stable pseudo-random rank of `node` for `stream` (lower wins ties)."""
    return int.from_bytes(hashlib.blake2b(f"{node}\0{stream}".encode(), digest_size=8).digest(), "big")


def assign(streams: Iterable[str], loads: Mapping[str, int], capacity: Mapping[str, int]) -> dict[str, str]:
    """stream -> node for each stream some node has room for, filling the least loaded (by share of its
    capacity) first. `loads`: streams each live node owns now; `capacity`: most streams per node."""
    load = {n: int(v) for n, v in loads.items()}
    out: dict[str, str] = {}
    for stream in sorted(streams):
        open_nodes = [n for n in load if load[n] < capacity.get(n, 0)]
        if not open_nodes:
            break
        best = min(open_nodes, key=lambda n: (load[n] / max(capacity.get(n, 1), 1), rendezvous(n, stream)))
        out[stream] = best
        load[best] += 1
    return out


def surplus(me: str, loads: Mapping[str, int], capacity: Mapping[str, int]) -> bool:
    """True when `me` should hand one stream over: it is the most loaded node (ties: the first name)
    and owns at least two more than some other node with room. One node per round, so a joining node
    is not flooded by every other node handing over at once."""
    mine = loads.get(me, 0)
    busiest = min(loads, key=lambda n: (-loads[n], n)) if loads else me
    return busiest == me and any(
        n != me and load + 2 <= mine and load < capacity.get(n, 0) for n, load in loads.items()
    )
