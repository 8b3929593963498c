"""The REST API under /api/ and the live feed (SSE and WebSocket).

    GET    /api/streams                 every stream's status
    POST   /api/streams                 add one: a SourceConfig as JSON ({"url": ..., "name": ..., ...})
    GET    /api/streams/{name}          one stream's status and counters
    DELETE /api/streams/{name}          remove it (waits for its last scores and `stream ended`)
    GET    /api/events                  recent events; ?stream=&type=&state=&since=&limit=
    GET    /api/events/stream           live feed as Server-Sent Events (same filters, ?backlog=N)
    GET    /api/ws                      live feed as WebSocket messages {"kind", "id", "data"}
    GET    /api/status                  the whole monitor: streams, batcher, model, feed
    GET    /api/config                  the effective config, secrets redacted
    POST   /api/ticket                  a short-lived ticket for opening the feed from a browser

Errors are JSON `{"error": "..."}`; a bad field in a stream config is a 422 whose `fields` list names
each one (`{"field": "reconnect.max_s", "message": ...}`), a bad query parameter a 400 naming it, and
a body that is not JSON or nests deeper than 32 levels a 400 (`strict_json.loads_request_json`, which
the WHIP `/offer` form shares).
What a caller may add (kinds, files, hosts, FFmpeg options) is decided in source_access.py. Stream
names follow swapwatch/stream/names.py (no `/`, so one path segment); URL-encode them in paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from swapwatch.errors import ConfigError
from swapwatch.stream.config import MonitorConfig, effective_config_dict
from swapwatch.stream.pipeline import Monitor, MonitorStoppedError, StreamLimitError, StreamNotFoundError
from swapwatch.stream.redact import log_text
from swapwatch.stream.server.auth import TokenAuth
from swapwatch.stream.server.config import ServerConfig
from swapwatch.stream.server.feed import (
    BadParameter,
    EventFilter,
    FeedClient,
    FeedFull,
    FeedMessage,
    FeedSink,
)
from swapwatch.stream.server.metrics import ServerMetrics
from swapwatch.stream.server.source_access import SourceRefused, check_api_source
from swapwatch.stream.sources import SourceConfig, open_source
from swapwatch.strict_json import JsonBodyError, json_safe, loads_request_json

if TYPE_CHECKING:
    from swapwatch.stream.cluster.node import ClusterNode

log = logging.getLogger(__name__)

MAX_BACKLOG = 1000


@dataclass
class ServerState:
    """What the handlers share (stored on the app under STATE)."""

    monitor: Monitor
    config: MonitorConfig
    feed: FeedSink
    auth: TokenAuth
    metrics: ServerMetrics
    cluster: ClusterNode | None = None
    started: float = field(default_factory=time.time)
    loop_lag_ms: float = 0.0
    loop_checked: float = field(default_factory=time.monotonic)

    @property
    def server(self) -> ServerConfig:
        return self.config.server


STATE = web.AppKey("swapwatch_state", ServerState)


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _state(request: web.Request) -> ServerState:
    return request.app[STATE]


# --- streams --------------------------------------------------------------------------------------------


def _validation_fields(err: ValidationError) -> list[dict[str, str]]:
    out = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "<body>"
        msg = str(item["msg"]).removeprefix("Value error, ")
        # SourceConfig's cross-field checks name their field inside the message ("url: ..."); lift it out.
        head, sep, rest = msg.partition(": ")
        if loc == "<body>" and sep and " " not in head:
            loc, msg = head, rest
        out.append({"field": loc, "message": msg})
    return out


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type not in ("application/json", "text/json", ""):
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": f"Content-Type must be application/json, got {request.content_type}"}),
            content_type="application/json",
        )
    body = await request.read()  # 413 past client_max_size
    try:
        data = loads_request_json(body)
    except JsonBodyError as err:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"body: {err}"}), content_type="application/json") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body: expected a JSON object like {\"url\": \"rtsp://...\", \"name\": \"cam1\"}"}),
            content_type="application/json",
        )
    return data


def stream_path(name: str) -> str:
    return "/api/streams/" + quote(name, safe="")


async def list_streams(request: web.Request) -> web.Response:
    state = _state(request)
    if state.cluster is not None:
        return web.json_response({"node": state.cluster.name, "streams": json_safe(state.cluster.streams_view())})
    monitor = state.monitor
    return web.json_response({"streams": [json_safe(monitor.stream_status(n)) for n in monitor.stream_names()]})


async def add_stream(request: web.Request) -> web.Response:
    state = _state(request)
    data = await _json_body(request)
    try:
        config = SourceConfig.model_validate(data)
    except ValidationError as err:
        fields = _validation_fields(err)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error(422, f"invalid stream: {summary}", fields=fields)
    try:
        config = await check_api_source(config, state.server)
    except SourceRefused as err:
        return error(422, f"invalid stream: {err}", fields=[{"field": err.field, "message": err.message}])
    if state.cluster is not None:
        return await _add_to_cluster(state.cluster, config)
    try:
        name = await state.monitor.add_source(open_source(config), limit=state.server.max_streams)
    except StreamLimitError as err:
        return error(429, f"{err} (server.max_streams)")
    except MonitorStoppedError as err:
        return error(503, str(err))
    except ConfigError as err:
        return error(409, str(err), fields=[{"field": "name", "message": str(err)}])
    log.info("api: stream %s added (%s)", log_text(name), log_text(config.masked_url))
    return web.json_response(json_safe(state.monitor.stream_status(name)), status=201, headers={"Location": stream_path(name)})


async def _add_to_cluster(cluster: ClusterNode, config: SourceConfig) -> web.Response:
    """Cluster mode: the stream goes into the desired set (202); the node the assignment picks starts it."""
    from swapwatch.stream.cluster.node import StreamExists
    from swapwatch.stream.cluster.store import ClusterUnavailable

    try:
        name = await cluster.add_desired(config)
    except StreamExists as err:
        return error(409, str(err), fields=[{"field": "name", "message": str(err)}])
    except ClusterUnavailable as err:
        return error(503, str(err))
    log.info("api: stream %s added to the cluster (%s)", log_text(name), log_text(config.masked_url))
    return web.json_response({"name": name, "url": config.masked_url, "node": None, "assigned": False},
                             status=202, headers={"Location": stream_path(name)})


async def get_stream(request: web.Request) -> web.Response:
    state = _state(request)
    name = request.match_info["name"]
    if state.cluster is not None:
        for entry in state.cluster.streams_view():
            if entry["name"] == name:
                return web.json_response(json_safe(entry))
        return error(404, f"no stream named {name!r} in the cluster")
    try:
        return web.json_response(json_safe(state.monitor.stream_status(name)))
    except StreamNotFoundError as err:
        return error(404, str(err))


async def delete_stream(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    cluster = _state(request).cluster
    if cluster is not None:
        from swapwatch.stream.cluster.store import ClusterUnavailable

        try:
            found = await cluster.remove_desired(name)
        except ClusterUnavailable as err:
            return error(503, str(err))
        if not found:
            return error(404, f"no stream named {name!r} in the cluster")
        log.info("api: stream %s removed from the cluster", log_text(name))
        return web.json_response({"removed": name, "node": cluster.snapshot.owner(name)}, status=202)
    try:
        report = await _state(request).monitor.remove_stream(name)
    except StreamNotFoundError as err:
        return error(404, str(err))
    log.info("api: stream %s removed", log_text(name))
    return web.json_response({"removed": name, "report": json_safe(asdict(report))})


# --- events, status, config ---------------------------------------------------------------------------------


def _filter(request: web.Request, default_limit: int = 100) -> EventFilter:
    try:
        return EventFilter.from_query(request.query, default_limit=default_limit)
    except BadParameter as err:
        raise web.HTTPBadRequest(text=json.dumps({"error": str(err), "param": err.param}),
                                 content_type="application/json") from None


async def get_events(request: web.Request) -> web.Response:
    state = _state(request)
    flt = _filter(request)
    if state.cluster is not None and state.cluster.store.js is not None:
        from swapwatch.stream.cluster.event_log import read_events
        from swapwatch.stream.cluster.store import nats_errors

        try:
            events, scanned = await read_events(state.cluster.store.js, state.cluster.config, flt, limit=flt.limit)
        except nats_errors() as err:  # NATS away: this node's own recent events, and say so
            log.warning("api: the durable events stream did not answer (%s); answering from this node", err)
        else:
            return web.json_response({"count": len(events), "source": "cluster", "scanned": scanned,
                                      "events": [e.to_dict() for e in events]})
    events = state.feed.recent(flt)
    return web.json_response({"count": len(events), "source": "node", "events": [e.to_dict() for e in events]})


def status_snapshot(state: ServerState) -> dict[str, Any]:
    """The monitor's status plus the server's own: what GET /api/status returns and the feed pushes."""
    status: dict[str, Any] = json_safe(state.monitor.status())
    status["server"] = {
        "uptime_s": round(time.time() - state.started, 1),
        "loop_lag_ms": round(state.loop_lag_ms, 2),
        "feed": state.feed.stats(),
        "auth": state.auth.enabled,
    }
    status["time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if state.cluster is not None:
        status["cluster"] = json_safe(state.cluster.status())
        for entry in state.cluster.streams_view():  # the dashboard shows every node's streams
            if not entry["local"]:
                remote = dict(entry["status"] or {})
                status["streams"][entry["name"]] = json_safe(
                    {**remote, "name": entry["name"], "url": entry["url"], "node": entry["node"], "remote": True,
                     "running": bool(remote.get("running")), "source_state": remote.get("source_state", "pending")})
    return status


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(status_snapshot(_state(request)))


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(effective_config_dict(_state(request).config))


async def post_ticket(request: web.Request) -> web.Response:
    state = _state(request)
    ticket, expires = state.auth.issue_ticket()
    return web.json_response({
        "ticket": ticket,
        "expires": datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
        "expires_in": state.auth.ticket_ttl_s,
    })


# --- the live feed ------------------------------------------------------------------------------------------


def _subscribe(request: web.Request, kind: str) -> FeedClient:
    state = _state(request)
    flt = _filter(request)
    backlog_text = request.query.get("backlog", "0")
    try:
        backlog = int(backlog_text)
    except ValueError:
        backlog = -1
    if not 0 <= backlog <= MAX_BACKLOG:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"backlog: must be an integer from 0 to {MAX_BACKLOG}, got {backlog_text!r}",
                             "param": "backlog"}),
            content_type="application/json",
        )
    try:
        client = state.feed.subscribe(flt, kind=kind, backlog=backlog, after=request.headers.get("Last-Event-ID"))
    except FeedFull as err:
        raise web.HTTPServiceUnavailable(text=json.dumps({"error": str(err)}), content_type="application/json") from None
    if flt.accepts_status():
        client.offer(FeedMessage("status", status_snapshot(state)))
    state.metrics.feed_clients.labels(kind).inc()
    return client


def _unsubscribe(state: ServerState, client: FeedClient) -> None:
    state.feed.unsubscribe(client)
    state.metrics.feed_clients.labels(client.kind).dec()


async def events_sse(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `event: event|status|dropped`, `data: <json>`, `id: <event id>` for events.

    A write that does not complete within max(5 s, 2 heartbeats) ends the connection: the client is
    gone or cannot keep up, and the browser's EventSource reconnects with Last-Event-ID.
    """
    state = _state(request)
    client = _subscribe(request, "sse")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
    heartbeat = state.server.heartbeat_s
    write_timeout = max(5.0, 2 * heartbeat)
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        reported = 0
        while True:
            try:
                message = await asyncio.wait_for(client.next(), heartbeat)
            except TimeoutError:
                await asyncio.wait_for(response.write(b": keep-alive\n\n"), write_timeout)
                continue
            if message is None:
                break
            chunk = message.sse()
            if client.dropped != reported:
                reported = client.dropped
                chunk = FeedMessage("dropped", {"dropped": reported}).sse() + chunk
            await asyncio.wait_for(response.write(chunk), write_timeout)
    except (ConnectionResetError, TimeoutError):
        pass  # the client went away or stopped reading
    finally:
        _unsubscribe(state, client)
    return response


async def _ws_reader(ws: web.WebSocketResponse) -> None:
    async for msg in ws:  # control frames are handled by aiohttp; client messages are ignored
        if msg.type == WSMsgType.ERROR:
            break


async def events_ws(request: web.Request) -> web.StreamResponse:
    """WebSocket: one JSON text message per feed message, {"kind", "id", "data"}; pings every heartbeat_s."""
    state = _state(request)
    ws = web.WebSocketResponse(heartbeat=state.server.heartbeat_s, max_msg_size=4096)
    client = _subscribe(request, "ws")
    reader: asyncio.Task[None] | None = None
    try:
        await ws.prepare(request)
        reader = asyncio.create_task(_ws_reader(ws))
        reported = 0
        while not ws.closed:
            getter = asyncio.create_task(client.next())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                await asyncio.gather(getter, return_exceptions=True)
                break
            message = getter.result()
            if message is None:
                break
            if client.dropped != reported:
                reported = client.dropped
                await ws.send_str(FeedMessage("dropped", {"dropped": reported}).envelope_json)
            await ws.send_str(message.envelope_json)
    except ConnectionResetError:
        pass  # the client went away
    finally:
        _unsubscribe(state, client)
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


def add_api_routes(app: web.Application) -> None:
    """Register the /api/ routes on `app` (which must hold a ServerState under STATE)."""
    r = app.router
    r.add_get("/api/streams", list_streams)
    r.add_post("/api/streams", add_stream)
    r.add_get("/api/streams/{name:.+}", get_stream)
    r.add_delete("/api/streams/{name:.+}", delete_stream)
    r.add_get("/api/events", get_events)
    r.add_get("/api/events/stream", events_sse)
    r.add_get("/api/ws", events_ws)
    r.add_get("/api/status", get_status)
    r.add_get("/api/config", get_config)
    r.add_post("/api/ticket", post_ticket)
