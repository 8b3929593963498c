"""A cluster of monitors coordinated through NATS JetStream (`swapwatch serve --cluster nats://...`).

    config.py      the `cluster:` config section
    keys.py        stream names as KV keys and subject tokens
    store.py       the connection, the three KV buckets and the events stream
    leases.py      one node's leases: claim, renew, release, fenced by revision
    assign.py      which node takes which unowned stream (pure functions)
    event_log.py   events into the durable stream (message id = event id), and read back for the API
    node.py        the node: heartbeats, claims by load, stops what it no longer owns, the cluster view
    membership.py  what `serve` does with a `cluster:` section, start to end

docs/cluster.md has the topology, the failure modes and what each guarantees.
"""
