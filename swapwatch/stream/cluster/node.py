"""One monitor node in the cluster: heartbeats, lease renewals, claims by load, and fencing.

Every `renew_s` the node, in this order:

1. stops each stream whose lease deadline passed without a renewal (NATS unreachable: it stops before
   the lease can expire on the server, so no other node can be scoring it yet);
2. writes its heartbeat (capacity, owned streams and their brief status) into the nodes bucket;
3. renews its leases; one that another node holds now is stopped at once;
4. reads the three buckets, and then
   - stops and releases streams removed from the desired set;
   - marks streams that ended or failed here as done (they are not restarted elsewhere) and releases them;
   - claims the unowned streams the assignment gives it, up to its capacity (or any stream left
     unowned for three rounds, whoever was meant to take it), and starts them;
   - hands one stream over when it is the busiest node and owns at least two more than a node with
     room (`rebalance`; not in a round in which it claimed, and at most once every three rounds).

A node waits two rounds after joining before it claims, so nodes started together see each other and
share the streams rather than the first one taking all. WHIP streams are pinned: the node that
accepted the WebRTC session holds the lease and no other node claims them (media cannot move).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from swapwatch.errors import ConfigError
from swapwatch.stream.cluster.assign import assign, surplus
from swapwatch.stream.cluster.config import ClusterConfig
from swapwatch.stream.cluster.keys import name_to_token, token_to_name
from swapwatch.stream.cluster.leases import LeaseBook
from swapwatch.stream.cluster.store import ClusterStore, ClusterUnavailable, KvEntry, encode, nats_errors
from swapwatch.stream.redact import log_text
from swapwatch.stream.sources import SourceConfig, open_source
from swapwatch.stream.sources.config import mask_url

if TYPE_CHECKING:
    from swapwatch.stream.pipeline import Monitor
    from swapwatch.stream.sources.base import Source

log = logging.getLogger(__name__)

JOIN_ROUNDS = 2
ORPHAN_ROUNDS = 3
HANDOVER_ROUNDS = 3
REMOVED_ROUNDS = 2
"""A stream leaves this node only when two reads in a row no longer list it (one read is no proof)."""


class StreamExists(ConfigError):
    """The desired set already holds a live stream of that name (API: 409)."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Snapshot:
    """What the node last read from the buckets (names decoded), for the claims and for the API."""

    desired: dict[str, KvEntry] = field(default_factory=dict)
    leases: dict[str, KvEntry] = field(default_factory=dict)
    nodes: dict[str, KvEntry] = field(default_factory=dict)
    taken_at: float = 0.0

    def owner(self, name: str) -> str | None:
        lease = self.leases.get(name)
        return str(lease.value.get("node")) if lease is not None else None


@dataclass
class NodeStats:
    claimed: int = 0
    lost: int = 0  # renewal found another owner
    fenced: int = 0  # stopped at the local deadline, NATS unreachable
    released: int = 0
    handed_over: int = 0
    rounds: int = 0
    errors: int = 0


def _decoded(entries: dict[str, KvEntry]) -> dict[str, KvEntry]:
    out = {}
    for token, entry in entries.items():
        try:
            out[token_to_name(token)] = entry
        except ValueError:
            log.warning("cluster: ignoring key %r (not a stream token)", token)
    return out


class ClusterNode:
    """Runs the round above for `monitor`; `start()` after the monitor is ready, `close()` before it stops."""

    def __init__(
        self,
        config: ClusterConfig,
        store: ClusterStore,
        monitor: Monitor,
        *,
        api_url: str | None = None,
        rebalance: bool = True,
        open_stream: Callable[[SourceConfig], Source] = open_source,
    ) -> None:
        self.config = config
        self.store = store
        self.monitor = monitor
        self.api_url = config.advertise_url or api_url
        self.rebalance = rebalance
        self.open_stream = open_stream
        assert store.leases is not None and store.desired is not None and store.nodes is not None, "connect() first"
        self.leases = LeaseBook(store.leases, config.node, ttl_s=config.lease_ttl_s, margin_s=config.stop_margin_s)
        self.snapshot = Snapshot()
        self.stats = NodeStats()
        self.pinned: set[str] = set()
        self._unowned_since: dict[str, int] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._fence_task: asyncio.Task[None] | None = None
        self._missing: dict[str, int] = {}
        self.instance = uuid.uuid4().hex
        self._joined_round: int | None = None
        self._handed_over_round = 0
        self._closed = False

    @property
    def name(self) -> str:
        return self.config.node

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self, sources: Sequence[SourceConfig] = ()) -> None:
        """Put the configured sources into the desired set (those not there yet) and start the rounds."""
        for source in sources:
            with contextlib.suppress(StreamExists):
                await self.add_desired(source, added_by="config")
        await self._wait_for_previous_incarnation()
        self._task = asyncio.create_task(self._rounds(), name="cluster-node")
        self._fence_task = asyncio.create_task(self._fence(), name="cluster-fence")

    async def close(self) -> None:
        """Stop the rounds, stop every owned stream and release its lease (others take over at once)."""
        self._closed = True
        for task in (self._task, self._fence_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        names = list(self.leases.held)
        await asyncio.gather(*(self._stop_now(n, "node leaving the cluster") for n in names))
        for name in names:
            await self.leases.release(name)
        if self.store.connected:
            with contextlib.suppress(*nats_errors()):
                assert self.store.nodes is not None
                await self.store.nodes.delete(self.name)

    async def _rounds(self) -> None:
        while not self._closed:
            started = time.monotonic()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - one bad round must not end the node (fencing has its own timer)
                self.stats.errors += 1
                log.warning("cluster: round failed: %s", err, exc_info=not isinstance(err, nats_errors()))
            await asyncio.sleep(max(0.0, self.config.renew_s - (time.monotonic() - started)))

    async def _fence(self) -> None:
        """Stop each stream the moment its local deadline passes, whatever the rounds are waiting on (a
        hung connection can hold a round for several request timeouts)."""
        while not self._closed:
            self.stop_overdue()
            deadline = self.leases.next_deadline()
            wait = self.config.renew_s if deadline is None else deadline - time.monotonic()
            await asyncio.sleep(min(max(wait, 0.01), self.config.renew_s))

    def stop_overdue(self) -> None:
        for name in self.leases.overdue():
            self.leases.forget(name)
            self.stats.fenced += 1
            log.warning("cluster: %s: lease not renewed for %.1f s (NATS unreachable); stopping it here",
                        log_text(name), self.config.lease_ttl_s - self.config.stop_margin_s)
            self._stop(name, "lease expired")

    async def _wait_for_previous_incarnation(self) -> None:
        """A node restarted under the same name waits until its previous process's heartbeat has expired
        (at most the TTL), so the two are never live at once; a heartbeat that keeps being renewed means
        another running process has this name, which is a config error."""
        import nats.js.errors

        assert self.store.nodes is not None
        deadline = time.monotonic() + 2 * self.config.lease_ttl_s + self.config.renew_s
        logged = False
        while True:
            try:
                entry = await self.store.nodes.get(self.name)
            except nats.js.errors.KeyNotFoundError:
                return
            if json.loads(entry.value or b"{}").get("instance") == self.instance:
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"cluster.node: another running node is called {self.name!r}; "
                                  "give each node its own name (--node)")
            if not logged:
                log.info("cluster: waiting for the last heartbeat of a previous %s to expire", self.name)
                logged = True
            await asyncio.sleep(self.config.renew_s / 2)

    # -- one round -------------------------------------------------------------------------------------
    async def round(self) -> None:
        self.stats.rounds += 1
        self.stop_overdue()
        if not self.store.connected:
            return
        await self._heartbeat()
        held = list(self.leases.held)
        outcomes = await asyncio.gather(*(self.leases.renew(n) for n in held))
        for name, outcome in zip(held, outcomes, strict=True):
            if outcome == "lost":
                self.stats.lost += 1
                log.warning("cluster: %s: lease now held by another node; stopping it here", log_text(name))
                self._stop(name, "lease taken by another node")
        snap = await self.read()
        if self._joined_round is None:
            self._joined_round = self.stats.rounds
        await self._reconcile_owned(snap)
        await self._forget_orphans(snap)
        if self.stats.rounds - self._joined_round >= JOIN_ROUNDS:
            claimed = await self._claim(snap)
            if self.rebalance and not claimed and self.stats.rounds - self._handed_over_round >= HANDOVER_ROUNDS:
                await self._hand_over(snap)

    async def read(self) -> Snapshot:
        """Read the three buckets (also what the API shows)."""
        s = self.store
        desired, leases, nodes = await asyncio.gather(s.snapshot("streams"), s.snapshot("leases"), s.snapshot("nodes"))
        self.snapshot = Snapshot(_decoded(desired), _decoded(leases), nodes, time.time())
        return self.snapshot

    async def _heartbeat(self) -> None:
        assert self.store.nodes is not None
        streams = {}
        for name in self.leases.held:
            with contextlib.suppress(LookupError):
                st = self.monitor.stream_status(name)
                streams[name] = {k: st.get(k) for k in ("source_state", "state", "max_score", "top_score", "fps",
                                                       "frames", "faces_scored", "running", "tracks", "error",
                                                       "latency_recent_ms")}
        value = {"node": self.name, "instance": self.instance, "api_url": self.api_url,
                 "capacity": self.config.capacity, "streams": streams, "time": _now_iso()}
        with contextlib.suppress(*nats_errors()):
            await self.store.nodes.put(self.name, encode(value))

    async def _reconcile_owned(self, snap: Snapshot) -> None:
        for name in list(self.leases.held):
            entry = snap.desired.get(name)
            gone = entry is None or bool(entry.value.get("done"))
            self._missing[name] = self._missing.get(name, 0) + 1 if gone else 0
            if gone and self._missing[name] >= REMOVED_ROUNDS:
                self._missing.pop(name, None)
                log.info("cluster: %s: removed from the cluster; stopping it", log_text(name))
                await self._stop_now(name, "removed from the cluster")
                self.pinned.discard(name)
                await self.leases.release(name)
                self.stats.released += 1
                continue
            if entry is None:
                continue
            status = self._local_status(name)
            if status is not None and not status.get("running") and status.get("source_state") in ("ended", "failed"):
                await self._mark_done(name, entry, status)

    async def _mark_done(self, name: str, entry: KvEntry, status: dict[str, Any]) -> None:
        assert self.store.desired is not None
        value = dict(entry.value)
        value["done"] = {"node": self.name, "source_state": status.get("source_state"),
                         "worst_state": status.get("worst_state"), "time": _now_iso()}
        with contextlib.suppress(*nats_errors()):
            await self.store.desired.update(name_to_token(name), encode(value), last=entry.revision)
        log.info("cluster: %s: %s here; not restarted elsewhere", log_text(name), status.get("source_state"))
        await self.leases.release(name)
        self.pinned.discard(name)
        self.stats.released += 1
        with contextlib.suppress(LookupError):
            await self.monitor.remove_stream(name)

    async def _forget_orphans(self, snap: Snapshot) -> None:
        """Delete pinned (WHIP) entries whose node left and whose lease expired: their media is gone."""
        assert self.store.desired is not None
        for name, entry in snap.desired.items():
            pin = entry.value.get("pinned")
            if pin and pin != self.name and pin not in snap.nodes and name not in snap.leases:
                with contextlib.suppress(*nats_errors()):
                    await self.store.desired.delete(name_to_token(name), last=entry.revision)
                log.info("cluster: %s: WebRTC stream of node %s, which left; removed", log_text(name), pin)

    def _loads(self, snap: Snapshot) -> tuple[dict[str, int], dict[str, int]]:
        live = {n: e for n, e in snap.nodes.items()}
        loads = dict.fromkeys(live, 0)
        capacity = {n: int(e.value.get("capacity", 0)) for n, e in live.items()}
        loads[self.name] = 0
        capacity[self.name] = self.config.capacity
        for entry in snap.leases.values():
            owner = str(entry.value.get("node"))
            if owner in loads:
                loads[owner] += 1
        loads[self.name] = max(loads[self.name], len(self.leases.held))
        return loads, capacity

    async def _claim(self, snap: Snapshot) -> int:
        """Claim what the assignment gives this node; how many streams it started."""
        unowned = [n for n, e in snap.desired.items()
                   if n not in snap.leases and not e.value.get("done") and not e.value.get("pinned")]
        self._unowned_since = {n: self._unowned_since.get(n, self.stats.rounds) for n in unowned}
        if not unowned:
            return 0
        loads, capacity = self._loads(snap)
        plan = assign(unowned, loads, capacity)
        started = 0
        for name in sorted(unowned):
            if len(self.leases.held) >= self.config.capacity:
                break
            orphaned = self.stats.rounds - self._unowned_since[name] >= ORPHAN_ROUNDS
            if plan.get(name) != self.name and not orphaned:
                continue
            started += await self._claim_one(name, snap.desired[name])
        return started

    async def _claim_one(self, name: str, entry: KvEntry) -> int:
        try:
            config = SourceConfig.model_validate(entry.value.get("source", {}))
        except ValidationError as err:
            log.warning("cluster: %s: the desired entry is not a valid stream config; skipped: %s", log_text(name), err)
            return 0
        lease = await self.leases.claim(name)
        if lease is None:
            return 0
        try:
            await self.monitor.add_source(self.open_stream(config))
        except Exception as err:  # noqa: BLE001 - give the stream back for another node rather than hold it idle
            log.warning("cluster: %s: cannot start here (%s); releasing it", log_text(name), err)
            await self.leases.release(name)
            return 0
        self.stats.claimed += 1
        self._unowned_since.pop(name, None)
        log.info("cluster: %s: claimed (lease revision %d)", log_text(name), lease.revision)
        return 1

    async def _hand_over(self, snap: Snapshot) -> None:
        loads, capacity = self._loads(snap)
        if not surplus(self.name, loads, capacity):
            return
        movable = sorted(n for n in self.leases.held if n not in self.pinned)
        if not movable:
            return
        name = movable[-1]
        log.info("cluster: %s: handing over to even the load (%d streams here)", log_text(name), loads[self.name])
        await self._stop_now(name, "handed over to another node")
        await self.leases.release(name)
        self.stats.handed_over += 1
        self._handed_over_round = self.stats.rounds

    # -- stopping --------------------------------------------------------------------------------------
    def _local_status(self, name: str) -> dict[str, Any] | None:
        try:
            return self.monitor.stream_status(name)
        except LookupError:
            return None

    def _stop(self, name: str, reason: str) -> None:
        """Stop a stream now without waiting (fencing must not wait on a slow close)."""
        if name not in self._stops:
            task = asyncio.create_task(self._stop_now(name, reason), name=f"cluster-stop-{name}")
            self._stops[name] = task
            task.add_done_callback(lambda _t: self._stops.pop(name, None))

    async def _stop_now(self, name: str, reason: str) -> None:
        try:
            await self.monitor.remove_stream(name)
        except LookupError:
            return
        except Exception as err:  # noqa: BLE001
            log.warning("cluster: %s: stopping (%s) failed: %s", log_text(name), reason, err)

    # -- what the API calls ----------------------------------------------------------------------------
    async def add_desired(self, config: SourceConfig, *, added_by: str = "api") -> str:
        """Put a stream into the desired set; StreamExists when a live (not done) one has that name."""
        name = config.resolved_name
        await self._put_desired(name, config.model_dump(mode="json", exclude_none=True) | {"name": name}, added_by)
        return name

    async def _put_desired(self, name: str, source: dict[str, Any], added_by: str, *, pinned: bool = False) -> None:
        import nats.js.errors

        assert self.store.desired is not None
        value: dict[str, Any] = {"source": source, "added_by": added_by, "added_at": _now_iso(), "via": self.name}
        if pinned:
            value["pinned"] = self.name
        token = name_to_token(name)
        try:
            await self.store.desired.create(token, encode(value))
        except nats.js.errors.KeyWrongLastSequenceError:
            current = await self.store.desired.get(token)
            if not json.loads(current.value or b"{}").get("done"):
                raise StreamExists(f"name: a stream named {name!r} already runs in the cluster") from None
            await self.store.desired.update(token, encode(value), last=current.revision)
        except nats_errors() as err:
            raise ClusterUnavailable(f"the cluster did not answer: {err or type(err).__name__}") from None

    async def remove_desired(self, name: str) -> bool:
        """Take a stream out of the desired set (its owner stops it within a round); False if unknown."""
        import nats.js.errors

        assert self.store.desired is not None
        try:
            await self.store.desired.get(name_to_token(name))
        except nats.js.errors.KeyNotFoundError:
            return False
        except nats_errors() as err:
            raise ClusterUnavailable(f"the cluster did not answer: {err or type(err).__name__}") from None
        await self.store.desired.delete(name_to_token(name))
        return True

    async def pin_local(self, name: str, url: str) -> bool:
        """A WebRTC stream accepted here: hold its lease and list it, pinned to this node. False when the
        name is owned elsewhere in the cluster."""
        lease = await self.leases.claim(name)
        if lease is None:
            return False
        try:
            await self._put_desired(name, {"name": name, "url": url, "kind": "webrtc"}, "whip", pinned=True)
        except (StreamExists, ClusterUnavailable):
            await self.leases.release(name)
            return False
        self.pinned.add(name)
        return True

    async def unpin_local(self, name: str) -> None:
        """The WebRTC session ended: drop the stream from the cluster."""
        if name in self.pinned:
            self.pinned.discard(name)
            with contextlib.suppress(*nats_errors()):
                await self.remove_desired(name)
            await self.leases.release(name)

    def streams_view(self) -> list[dict[str, Any]]:
        """Every stream of the cluster with its owner node and the owner's last reported status."""
        snap = self.snapshot
        out = []
        for name in sorted(snap.desired):
            entry = snap.desired[name].value
            owner = snap.owner(name)
            status: dict[str, Any] | None = None
            if owner == self.name:
                status = self._local_status(name)
            elif owner is not None and owner in snap.nodes:
                status = snap.nodes[owner].value.get("streams", {}).get(name)
            source = entry.get("source", {})
            try:
                url: str | None = SourceConfig.model_validate(source).masked_url
            except ValidationError:  # a pinned WebRTC stream: its URL names the session, no secret
                url = source.get("url") if entry.get("pinned") else None
            out.append({
                "name": name, "url": url, "node": owner, "local": owner == self.name,
                "assigned": owner is not None, "pinned": entry.get("pinned"), "done": entry.get("done"),
                "added_by": entry.get("added_by"), "added_at": entry.get("added_at"),
                "status": status,
            })
        return out

    def nodes_view(self) -> list[dict[str, Any]]:
        snap = self.snapshot
        loads: dict[str, int] = {}
        for entry in snap.leases.values():
            owner = str(entry.value.get("node"))
            loads[owner] = loads.get(owner, 0) + 1
        return [{"node": n, "api_url": e.value.get("api_url"), "capacity": e.value.get("capacity"),
                 "streams": loads.get(n, 0), "seen": e.value.get("time"), "self": n == self.name}
                for n, e in sorted(snap.nodes.items())]

    def status(self) -> dict[str, Any]:
        return {"node": self.name, "connected": self.store.connected,
                "urls": [mask_url(u) for u in self.config.urls],
                "leases": sorted(self.leases.held), "pinned": sorted(self.pinned),
                "stats": self.stats.__dict__.copy(), "nodes": self.nodes_view(),
                "snapshot_age_s": round(time.time() - self.snapshot.taken_at, 2) if self.snapshot.taken_at else None}
