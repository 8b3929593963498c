"""The `cluster:` section: which NATS servers to join, as which node, and the lease timing."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from swapwatch.config import StrictModel

_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_BUCKET = re.compile(r"[A-Za-z0-9_-]{1,48}")


def default_node_name(port: int | None = None) -> str:
    """The host name cut to a valid node name (letters, digits, `_`, `-`) and the server's port, which
    together are unique and stable across restarts (so a restarted node finds its event outbox again);
    the process id when the port is picked at random (0)."""
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-_")[:48] or "node"
    return f"{host}-{port}" if port else f"{host}-pid{os.getpid()}"


class ClusterConfig(StrictModel):
    """`swapwatch serve --cluster nats://h1:4222,nats://h2:4222`: join a cluster of monitors."""

    urls: list[str] = Field(..., min_length=1, description="NATS server URLs (nats:// or tls://) of the cluster.")
    node: str = Field(
        default_factory=default_node_name,
        description="This node's name: unique in the cluster, stable across restarts; events carry it "
        "(default: host name and server port).",
    )
    advertise_url: str | None = Field(
        None, description="Where other nodes' dashboards can link to this node's API (default: its listen address)."
    )
    capacity: int = Field(8, ge=0, description="Most streams this node owns at once (0: WHIP only, claims none).")
    lease_ttl_s: float = Field(
        10.0, gt=0.5, description="A lease not renewed for this long expires (enforced by the KV bucket's max age). "
        "Keep it above a NATS leader election (a few seconds) plus stop_margin, or a broker failover pauses streams.",
    )
    renew_s: float = Field(
        2.0, gt=0.05, description="Seconds between renewals and claims; a dead node's streams move within "
        "lease_ttl_s + renew_s.",
    )
    bucket_prefix: str = Field("swapwatch", description="Prefix of the KV buckets (desired streams, leases, nodes).")
    events_stream: str = Field("SWAPWATCH_EVENTS", description="JetStream stream that keeps every node's events.")
    events_subject: str = Field("swapwatch.events", description="Subject prefix; a stream's events go to PREFIX.<stream>.")
    events_max_age_s: float = Field(7 * 86400.0, gt=0, description="How long the durable stream keeps events.")
    duplicate_window_s: float = Field(
        600.0, gt=0, description="The events stream drops a message whose id it saw within this window "
        "(a publish retried after a broker failover or a restart is stored once).",
    )
    replicas: int = Field(3, ge=1, le=5, description="JetStream replicas of the buckets and the events stream.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Per-server connection timeout.")
    startup_timeout_s: float = Field(
        30.0, gt=0, description="At start, how long to try to connect and set up the buckets before giving up."
    )
    request_timeout_s: float = Field(2.0, gt=0, description="Timeout of one KV or publish request.")
    outbox: str | None = Field(
        None, description="SQLite file holding events not yet stored in the durable stream "
        "(default: next to the JSONL events file, else cluster-outbox-<node>.sqlite in the working directory).",
    )

    @field_validator("urls")
    @classmethod
    def _nats_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("nats", "tls") or not parts.hostname:
                raise ValueError(f"{url!r} is not a nats://HOST:PORT or tls://HOST:PORT URL")
        return urls

    @field_validator("node")
    @classmethod
    def _node_name(cls, v: str) -> str:
        if not _NODE.fullmatch(v):
            raise ValueError(f"{v!r}: 1-64 ASCII letters, digits, '_' or '-', starting with a letter or digit")
        return v

    @field_validator("bucket_prefix", "events_stream")
    @classmethod
    def _bucket_name(cls, v: str) -> str:
        if not _BUCKET.fullmatch(v):
            raise ValueError(f"{v!r}: 1-48 ASCII letters, digits, '_' or '-'")
        return v

    @field_validator("events_subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", v):
            raise ValueError(f"{v!r}: dot-separated tokens of ASCII letters, digits, '_' or '-'")
        return v

    @model_validator(mode="after")
    def _timing(self) -> ClusterConfig:
        # Renewals must land well inside the TTL: three tries per TTL tolerate one lost renewal and one slow one.
        if self.renew_s * 3 > self.lease_ttl_s:
            raise ValueError(f"renew_s ({self.renew_s:g}) must be at most lease_ttl_s / 3 ({self.lease_ttl_s / 3:g})")
        if self.request_timeout_s >= self.lease_ttl_s / 2:
            raise ValueError(f"request_timeout_s ({self.request_timeout_s:g}) must be below lease_ttl_s / 2")
        return self

    @property
    def stop_margin_s(self) -> float:
        """A node stops a stream this long before its lease can expire on the server when it cannot renew,
        so the stream has ended here (its last frames scored) before another node may claim it."""
        return min(self.lease_ttl_s / 2, self.renew_s * 1.5)
