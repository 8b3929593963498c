"""One node's leases on streams, fenced by the KV revision.

A lease is the key of a stream in the leases bucket. Claiming creates it (`create`: only if no live key
exists); renewing updates it with the revision this node last wrote as the expected last revision, so
a node whose lease expired and was claimed by another can never renew it again; releasing deletes it
with the same check. The bucket's max age is the TTL: the server forgets a lease that was not renewed,
however wrong the owner's clock.

The owner also keeps a local deadline: the time a claim or renewal was *sent* (monotonic clock), plus
the TTL, minus a safety margin. The server timestamps the write later than that, so the key expires on
the server after the local deadline; a node that cannot renew (partitioned from NATS) stops the stream
at its deadline, before any other node can have claimed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from swapwatch.stream.cluster.keys import name_to_token
from swapwatch.stream.cluster.store import encode, nats_errors

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

RenewOutcome = Literal["renewed", "lost", "unreachable", "dropped"]


@dataclass
class Lease:
    """A lease this node holds: the revision it last wrote, and when it must stop without a renewal."""

    name: str
    revision: int
    deadline: float


class LeaseBook:
    """Claim, renew and release leases in `kv` as `node`."""

    def __init__(
        self, kv: KeyValue, node: str, *, ttl_s: float, margin_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kv = kv
        self.node = node
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.clock = clock
        self.held: dict[str, Lease] = {}

    def _value(self, name: str) -> bytes:
        return encode({"node": self.node, "stream": name})

    async def claim(self, name: str) -> Lease | None:
        """Take the lease on `name` if no one holds it; None when another node does (or NATS did not answer)."""
        import nats.js.errors

        sent = self.clock()
        try:
            revision = await self.kv.create(name_to_token(name), self._value(name))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except nats_errors() as err:
            log.debug("cluster: claim of %s not answered: %s", name, err)
            return None
        lease = Lease(name, int(revision), sent + self.ttl_s - self.margin_s)
        self.held[name] = lease
        return lease

    async def renew(self, name: str) -> RenewOutcome:
        """Extend the lease; `lost` (dropped here) when another node holds it now, `unreachable` when NATS
        did not answer (the deadline stays: the caller stops the stream when it passes), `dropped` when
        its deadline passed meanwhile (the stream is stopped already; a late success is released)."""
        import nats.js.errors

        lease = self.held.get(name)
        if lease is None:  # stopped at its deadline meanwhile
            return "dropped"
        sent = self.clock()
        try:
            revision = await self.kv.update(name_to_token(name), self._value(name), last=lease.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            self.held.pop(name, None)
            return "lost"
        except nats_errors() as err:
            log.debug("cluster: renewal of %s not answered: %s", name, err)
            return "unreachable"
        lease.revision = int(revision)
        if self.held.get(name) is not lease:  # the deadline passed while the renewal was on its way
            self.held[name] = lease
            await self.release(name)  # the stream is stopped here: free it for the others at once
            return "dropped"
        lease.deadline = sent + self.ttl_s - self.margin_s
        return "renewed"

    def next_deadline(self) -> float | None:
        """The earliest local deadline (monotonic clock), or None when no lease is held."""
        return min((lease.deadline for lease in self.held.values()), default=None)

    def overdue(self) -> list[str]:
        """Leases whose local deadline has passed: the caller must stop those streams now."""
        now = self.clock()
        return [name for name, lease in self.held.items() if lease.deadline <= now]

    def forget(self, name: str) -> None:
        """Drop a lease locally (after its deadline passed; the server lets it expire)."""
        self.held.pop(name, None)

    async def release(self, name: str) -> None:
        """Give the lease up now (the stream stopped here), so another node may claim it at once."""
        lease = self.held.pop(name, None)
        if lease is None:
            return
        try:
            await self.kv.delete(name_to_token(name), last=lease.revision)
        except nats_errors() as err:  # expired already, or taken, or NATS away: the TTL ends it anyway
            log.debug("cluster: release of %s: %s", name, err)
