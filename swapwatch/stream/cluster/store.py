"""The cluster's state in NATS JetStream: one connection, three KV buckets and one events stream.

    <prefix>-streams   desired streams: key = stream token, value = the SourceConfig JSON plus who added
                       it; no TTL. Any node's API writes here; the owner reads it.
    <prefix>-leases    who runs each stream: value = {"node": ...}; the bucket's max age is the lease TTL,
                       so a lease that is not renewed disappears on the server, whatever the owner's clock.
    <prefix>-nodes     live nodes: heartbeats with capacity, load and a brief status of each owned stream;
                       same TTL, so a dead node drops out by itself.
    <events_stream>    every node's events, subject <events_subject>.<stream token>, de-duplicated by
                       message id (= event id) within `duplicate_window_s`.

Every node creates what is missing with the same settings; a bucket that exists with another TTL, or
an events stream on other subjects, is a config error naming the field: nodes that disagree on the
TTL would not agree on who owns what. (Other settings, e.g. the replica count, are the first node's.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swapwatch.errors import ConfigError, SwapwatchError
from swapwatch.stream.cluster.config import ClusterConfig
from swapwatch.stream.sources.config import mask_url

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


class ClusterUnavailable(SwapwatchError):
    """NATS cannot be reached or did not answer in time (the caller retries or reports 503)."""


@dataclass(frozen=True)
class KvEntry:
    """The latest value of one key, decoded from JSON."""

    key: str
    revision: int
    value: dict[str, Any]


def import_nats() -> Any:
    """The nats package, or a clear error saying how to install it."""
    try:
        import nats
    except ImportError:
        raise SwapwatchError('the cluster needs nats-py: pip install ".[cluster]"') from None
    return nats


def nats_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "NATS did not answer" (as opposed to a refused write)."""
    import nats.errors
    import nats.js.errors

    return (nats.errors.Error, nats.js.errors.Error, TimeoutError, asyncio.TimeoutError, OSError)


class ClusterStore:
    """The connection and the handles of the buckets and the events stream; `connect()` before use."""

    def __init__(self, config: ClusterConfig, *, on_connection: Callable[[bool], None] | None = None) -> None:
        self.config = config
        self._on_connection = on_connection
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.desired: KeyValue | None = None
        self.leases: KeyValue | None = None
        self.nodes: KeyValue | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def bucket_name(self, kind: str) -> str:
        return f"{self.config.bucket_prefix}-{kind}"

    async def connect(self) -> None:
        """Connect (trying every URL), then create or open the buckets and the events stream."""
        nats = import_nats()
        c = self.config

        async def disconnected() -> None:
            if self._closing:
                return
            log.warning("cluster: lost the connection to NATS; leases are renewed again once it is back")
            if self._on_connection is not None:
                self._on_connection(False)

        async def reconnected() -> None:
            log.info("cluster: reconnected to NATS")
            if self._on_connection is not None:
                self._on_connection(True)

        async def error(err: Exception) -> None:
            log.debug("cluster: NATS client error: %s", err)

        try:
            # nats-py keeps retrying the first connection too when reconnects are unlimited: bound it here.
            self.nc = await asyncio.wait_for(nats.connect(
                servers=c.urls, name=f"swapwatch-{c.node}", connect_timeout=c.connect_timeout_s,
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                ping_interval=max(1, int(c.renew_s)), max_outstanding_pings=2,
                disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
            ), c.startup_timeout_s)
        except Exception as err:  # noqa: BLE001 - any failure to connect is the same answer for the operator
            raise ClusterUnavailable(f"cluster.urls: cannot connect to {', '.join(mask_url(u) for u in c.urls)} "
                                     f"within {c.startup_timeout_s:g} s: {err or type(err).__name__}") from None
        assert self.nc is not None
        self.js = self.nc.jetstream(timeout=c.request_timeout_s)
        deadline = time.monotonic() + c.startup_timeout_s
        while True:  # a busy cluster (or one electing a leader) may time out the first requests
            try:
                self.desired = await self._bucket("streams", None, "cluster.bucket_prefix")
                self.leases = await self._bucket("leases", c.lease_ttl_s, "cluster.lease_ttl_s")
                self.nodes = await self._bucket("nodes", c.lease_ttl_s, "cluster.lease_ttl_s")
                await self._events_stream()
                return
            except nats_errors() as err:
                if time.monotonic() > deadline:
                    raise ClusterUnavailable(f"cluster: JetStream did not answer while setting up the buckets "
                                             f"within {c.startup_timeout_s:g} s: {err or type(err).__name__}") from None
                log.info("cluster: JetStream not ready (%s); retrying", err or type(err).__name__)
                await asyncio.sleep(0.5)

    async def _bucket(self, kind: str, ttl: float | None, field: str) -> KeyValue:
        import nats.js.errors

        assert self.js is not None
        name = self.bucket_name(kind)
        try:
            kv = await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            try:
                return await self.js.create_key_value(bucket=name, history=1, ttl=ttl, replicas=self.config.replicas)
            except nats.js.errors.APIError as err:
                raise ConfigError(f"cluster.replicas: cannot create the KV bucket {name} with {self.config.replicas} "
                                  f"replicas: {err.description} (a single NATS server needs replicas: 1)") from None
        info = (await kv.status()).stream_info.config
        have = info.max_age or None
        if (have or None) != (ttl or None) and abs((have or 0.0) - (ttl or 0.0)) > 1e-3:
            raise ConfigError(f"{field}: the cluster's bucket {name} keeps entries for {have or 'ever'} s, this node "
                              f"asks for {ttl or 'ever'}; every node must use the same lease_ttl_s")
        return kv

    async def _events_stream(self) -> None:
        import nats.js.errors
        from nats.js.api import StorageType, StreamConfig

        assert self.js is not None
        c = self.config
        wanted = StreamConfig(
            name=c.events_stream, subjects=[f"{c.events_subject}.>"], max_age=c.events_max_age_s,
            duplicate_window=c.duplicate_window_s, num_replicas=c.replicas, storage=StorageType.FILE,
        )
        try:
            info = await self.js.stream_info(c.events_stream)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(wanted)
            except nats.js.errors.APIError as err:
                raise ConfigError(f"cluster.events_stream: cannot create {c.events_stream}: {err.description}") from None
            return
        if info.config.subjects != wanted.subjects:
            raise ConfigError(f"cluster.events_subject: the stream {c.events_stream} takes {info.config.subjects}, "
                              f"this node publishes to {c.events_subject}.>")

    async def snapshot(self, kind: str) -> dict[str, KvEntry]:
        """Every live key of a bucket ("streams", "leases" or "nodes") with its latest value.

        The bucket stream's info lists its subjects (one per key that has a message: a value or a delete
        marker); each is then read directly. Not nats-py's KV watcher, whose "initial values done" marker
        can come before the values (it reported a full bucket as empty a few times in a thousand reads),
        which would make a node think every stream was removed.
        """
        import nats.js.errors

        kv = {"streams": self.desired, "leases": self.leases, "nodes": self.nodes}[kind]
        assert self.js is not None and kv is not None
        bucket = self.bucket_name(kind)
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=">")
        prefix = f"$KV.{bucket}."
        keys = [subject[len(prefix):] for subject in (info.state.subjects or {}) if subject.startswith(prefix)]

        async def read(key: str) -> KvEntry | None:
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # deleted, or expired since the listing
                return None
            try:
                value = json.loads(entry.value or b"")
            except ValueError:
                log.warning("cluster: %s: key %s holds no JSON; ignored", bucket, key)
                return None
            return KvEntry(key, int(entry.revision or 0), value) if isinstance(value, dict) else None

        entries = await asyncio.gather(*(read(k) for k in keys))
        return {e.key: e for e in entries if e is not None}

    async def close(self) -> None:
        self._closing = True
        nc, self.nc = self.nc, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), self.config.request_timeout_s)
            except Exception:  # noqa: BLE001 - not connected (reconnecting, partitioned): just close
                with contextlib.suppress(Exception):
                    await nc.close()


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
