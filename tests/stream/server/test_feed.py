"""The live feed: SSE and WebSocket clients of a real server see a real stream's events (an alert on the
swapped face of the demo clip) and status snapshots; slow clients lose their oldest messages, never the
pipeline's time; filters and tickets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.events import Event, stream_event
from swapwatch.stream.server.auth import TokenAuth, redact_query
from swapwatch.stream.server.feed import BadParameter, EventFilter, FeedSink
from tests.stream.conftest import run_async
from tests.stream.server.conftest import TOKEN, running_server, server_config


async def read_sse(resp: aiohttp.ClientResponse, out: list[tuple[str, Any]], stop: asyncio.Event) -> None:
    """Parse `event:`/`data:` blocks into (kind, data) until `stop` or the end of the stream."""
    kind, data = "message", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif not line and data:
            out.append((kind, json.loads(data)))
            kind, data = "message", ""
        if stop.is_set():
            return


async def read_ws(ws: aiohttp.ClientWebSocketResponse, out: list[tuple[str, Any]], stop: asyncio.Event) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        body = json.loads(msg.data)
        out.append((body["kind"], body["data"]))
        if stop.is_set():
            return


def alerts(messages: list[tuple[str, Any]], stream: str) -> list[dict[str, Any]]:
    return [d for k, d in messages if k == "event" and d["stream"] == stream and d["type"] == "state"
            and d["state"] == "alert"]


def test_sse_and_websocket_see_the_alert_and_the_end(reference_model: Path, swap_clip: DemoClip, tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        cfg = server_config(reference_model, tmp_path, status_interval_s=0.3, file_roots=[str(swap_clip.path.parent)])
        async with running_server(cfg) as srv:
            s = srv.session
            ticket = (await (await s.post(srv.url("/api/ticket"), headers=srv.auth)).json())["ticket"]
            sse_msgs: list[Any] = []
            ws_msgs: list[Any] = []
            stop = asyncio.Event()
            sse = await s.get(srv.url(f"/api/events/stream?ticket={ticket}"))
            assert sse.status == 200
            ws = await s.ws_connect(srv.url("/api/ws"), headers=srv.auth)  # header auth works for WS too
            readers = [asyncio.create_task(read_sse(sse, sse_msgs, stop)), asyncio.create_task(read_ws(ws, ws_msgs, stop))]

            added = await s.post(srv.url("/api/streams"), headers=srv.auth,
                                 json={"url": str(swap_clip.path), "name": "call", "realtime": True})
            assert added.status == 201
            deadline = asyncio.get_running_loop().time() + 30
            while not (alerts(sse_msgs, "call") and alerts(ws_msgs, "call")):
                assert asyncio.get_running_loop().time() < deadline, "no alert on the feed"
                await asyncio.sleep(0.1)
            # The dashboard's status snapshot shows the alerting face while it lasts.
            snapshots = [d for k, d in sse_msgs if k == "status" and "call" in d["streams"]]
            assert snapshots and any(t["score"] is not None for t in snapshots[-1]["streams"]["call"]["tracks"])

            removed = await s.delete(srv.url("/api/streams/call"), headers=srv.auth)
            assert removed.status == 200
            await asyncio.sleep(0.5)
            stop.set()
            await ws.close()
            sse.close()
            for r in readers:
                r.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            recent = await (await s.get(srv.url("/api/events?stream=call&limit=1000"), headers=srv.auth)).json()
            return sse_msgs, ws_msgs, recent["events"]

    sse_msgs, ws_msgs, recent = run_async(scenario(), timeout=90)
    for messages in (sse_msgs, ws_msgs):
        events = [d for k, d in messages if k == "event" and d["stream"] == "call"]
        states = [d["source_state"] for d in events if d["type"] == "stream"]
        assert states[:2] == ["connecting", "live"] and states[-1] == "ended"
        assert events[-1]["type"] == "stream"  # the end of the stream is the last word about it
        rise = alerts(messages, "call")[0]
        assert rise["previous_state"] == "suspicious" and rise["score"] is not None and rise["latency_ms"] is not None
        assert all(Event.model_validate(d) for d in events)
    # Both feeds and the recent-events ring carry the same events in the same order.
    ids = [d["id"] for k, d in sse_msgs if k == "event" and d["stream"] == "call"]
    assert ids == [d["id"] for k, d in ws_msgs if k == "event" and d["stream"] == "call"]
    assert ids == [e["id"] for e in recent]


def test_feed_filters_backlog_and_last_event_id(reference_model: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(server_config(reference_model, tmp_path)) as srv:
            for i, state in enumerate(["connecting", "live", "reconnecting", "live"]):
                srv.feed.publish_sync(stream_event(f"s{i % 2}", state))  # type: ignore[arg-type]
            first_id = srv.feed.ring[0].id

            async def first_events(path: str, headers: dict[str, str], n: int) -> list[dict[str, Any]]:
                got: list[Any] = []
                async with srv.session.get(srv.url(path), headers={**srv.auth, **headers}) as resp:
                    assert resp.status == 200
                    stop = asyncio.Event()
                    task = asyncio.create_task(read_sse(resp, got, stop))
                    while len([m for m in got if m[0] == "event"]) < n:
                        await asyncio.sleep(0.02)
                    task.cancel()
                return [d for k, d in got if k == "event"]

            only_s1 = await first_events("/api/events/stream?stream=s1&backlog=10", {}, 2)
            assert [e["source_state"] for e in only_s1] == ["live", "live"] and {e["stream"] for e in only_s1} == {"s1"}
            resumed = await first_events("/api/events/stream", {"Last-Event-ID": first_id}, 3)
            assert [e["source_state"] for e in resumed] == ["live", "reconnecting", "live"]

    run_async(scenario(), timeout=60)


def test_a_slow_client_loses_its_oldest_messages_and_never_blocks() -> None:
    async def scenario() -> None:
        drops: list[str] = []
        feed = FeedSink(recent=5, queue_size=4, on_drop=drops.append)
        slow = feed.subscribe(EventFilter(), kind="ws")
        picky = feed.subscribe(EventFilter(streams=frozenset({"b"})), kind="sse")
        events = [stream_event("a" if i % 2 else "b", "live") for i in range(10)]
        for e in events:  # nobody reads: publish must still return at once every time
            await asyncio.wait_for(feed.publish(e), 0.05)
        assert slow.dropped == 6 and drops.count("ws") == 6
        assert [(await slow.next()).id for _ in range(4)] == [e.id for e in events[-4:]]  # type: ignore[union-attr]
        assert picky.dropped == 1  # 5 events for b, 4 places
        assert [e.id for e in feed.recent(EventFilter(limit=100))] == [e.id for e in events[-5:]]
        await feed.aclose()
        assert await slow.next() is None  # the close reaches even a full queue

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, EventFilter()),
        ({"stream": "a,b", "limit": "5"}, EventFilter(streams=frozenset({"a", "b"}), limit=5)),
        ({"type": "state", "state": "alert,suspicious"},
         EventFilter(types=frozenset({"state"}), states=frozenset({"alert", "suspicious"}))),
    ],
)
def test_event_filter_from_query(query: dict[str, str], expected: EventFilter) -> None:
    assert EventFilter.from_query(query) == expected


@pytest.mark.parametrize(
    ("query", "param"),
    [({"limit": "ten"}, "limit"), ({"limit": "100000"}, "limit"), ({"state": "red"}, "state"),
     ({"type": "alert"}, "type"), ({"since": "last week"}, "since")],
)
def test_event_filter_names_the_bad_parameter(query: dict[str, str], param: str) -> None:
    with pytest.raises(BadParameter) as err:
        EventFilter.from_query(query)
    assert err.value.param == param and str(err.value).startswith(f"{param}:")


@pytest.mark.parametrize(
    ("header", "verdict"),
    [(None, None), ("", None), (f"Bearer {TOKEN}", True), (f"bearer  {TOKEN} ", True), (f"Bearer {TOKEN}x", False),
     (f"Basic {TOKEN}", False), ("Bearer", False)],
)
def test_bearer_header(header: str | None, verdict: bool | None) -> None:
    assert TokenAuth(TOKEN).check_header(header) is verdict


@pytest.mark.parametrize(("age_s", "ok"), [(0.0, True), (59.0, True), (61.0, False)])
def test_tickets_expire(age_s: float, ok: bool) -> None:
    auth = TokenAuth(TOKEN, ticket_ttl_s=60)
    ticket, _ = auth.issue_ticket(now=1000.0)
    assert auth.check_ticket(ticket, now=1000.0 + age_s) is ok
    assert not TokenAuth(TOKEN).check_ticket(ticket, now=1000.0)  # another process's key


@pytest.mark.parametrize(
    ("query", "expected"),
    [("backlog=10", "backlog=10"), ("ticket=abc.def.ghi&backlog=1", "ticket=***&backlog=1"),
     ("token=s3cret", "token=***"), ("", "")],
)
def test_access_log_query_redaction(query: str, expected: str) -> None:
    assert redact_query(query) == expected
