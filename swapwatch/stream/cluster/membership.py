"""A server's membership in the cluster, start to end: what `serve_monitor` does with `cluster:` set.

    store, sink = await connect_cluster(config)          # before the monitor: fail fast, sink ready
    ... the monitor runs with `sink` among its sinks; its configured sources stay out of it ...
    async with membership(config, store, monitor, feed, base_url) as node:
        ...                                              # the node claims, renews, serves the API

Order on the way out: the node releases its leases and stops its streams (others take them over at
once), the monitor then stops and the event sink flushes into the durable stream, and the connection
closes last (`store.close()`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from swapwatch.stream.cluster.event_log import ClusterEventSink, default_outbox_path
from swapwatch.stream.cluster.node import ClusterNode
from swapwatch.stream.cluster.store import ClusterStore
from swapwatch.stream.events import Event
from swapwatch.stream.sources.config import mask_url

if TYPE_CHECKING:
    from swapwatch.stream.config import MonitorConfig
    from swapwatch.stream.pipeline import Monitor
    from swapwatch.stream.server.feed import FeedSink

log = logging.getLogger(__name__)


async def connect_cluster(config: MonitorConfig) -> tuple[ClusterStore, ClusterEventSink]:
    """Connect to NATS, set up the buckets and the events stream, and make the event sink."""
    assert config.cluster is not None
    store = ClusterStore(config.cluster)
    await store.connect()
    assert store.js is not None
    events_path = config.sinks.jsonl.path if config.sinks.jsonl is not None else None
    sink = ClusterEventSink(config.cluster, store.js, default_outbox_path(config.cluster, events_path))
    return store, sink


@contextlib.asynccontextmanager
async def membership(
    config: MonitorConfig, store: ClusterStore, monitor: Monitor, feed: FeedSink, api_url: str
) -> AsyncIterator[ClusterNode]:
    """Run the node for `monitor`; the other nodes' events also go into this server's live feed."""
    assert config.cluster is not None and store.nc is not None
    cluster = config.cluster
    node = ClusterNode(cluster, store, monitor, api_url=api_url)

    async def from_other_node(msg: object) -> None:
        try:
            event = Event.from_json(msg.data)  # type: ignore[attr-defined]
        except ValueError:
            return
        if event.node != cluster.node:  # this node's own events reach the feed directly
            feed.publish_sync(event)

    sub = await store.nc.subscribe(f"{cluster.events_subject}.>", cb=from_other_node)
    await node.start(config.sources)
    log.info("cluster: node %s joined (%s)", cluster.node, ", ".join(mask_url(u) for u in cluster.urls))
    try:
        yield node
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await node.close()
