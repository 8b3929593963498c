"""The aiohttp application that hosts the monitor: API, live feed, dashboard, metrics, health and WHIP.

    async with serve_monitor(load_monitor_config("monitor.yaml"), token=os.environ["SWAPWATCH_TOKEN"]) as served:
        print(served.base_url)             # http://127.0.0.1:8080
        await served.wait()                # until monitor.stop() (SIGINT/SIGTERM in `swapwatch serve`)

`create_app(monitor, config, feed=..., token=...)` builds the `web.Application` for a monitor that runs
(or is about to run) in serve mode; `serve_monitor` is the whole lifecycle: the feed sink, the monitor
(engine and detector load once and stay warm), the app on a TCP site, and an orderly stop.

Middleware, outermost first, and why in this order:

1. metrics: counts every request, including the ones refused below;
2. unexpected errors: an exception no handler expected is logged with its traceback and a short
   reference, and answered with a JSON 500 that carries the reference, never the traceback;
3. loopback only, when authentication is off (`--no-auth`): a request whose Host header is not a
   loopback name (localhost, 127.0.0.0/8, [::1], any port) gets 403, preflights included, so a web page
   that points its own name at 127.0.0.1 (DNS rebinding) cannot use the API; a POST/DELETE/PATCH from
   a foreign Origin gets 403 too (browsers send simple cross-site POSTs without a preflight). With a
   token neither can happen: a page cannot send the token it does not have;
4. CORS: answers preflights itself (browsers send no credentials on them), 403 for origins not in
   `server.cors_origins`; adds `Access-Control-Allow-Origin` for allowed cross-origin requests;
5. size: refuses a declared body over `server.max_body_bytes` with 413 before anything reads it
   (chunked bodies hit the same limit through the application's `client_max_size`);
6. auth: the bearer token on /api/, /whip, /offer (and /metrics unless `public_metrics`); the feed
   endpoints also take a ticket (auth.py). `/`, /static/ and /healthz are public: the dashboard
   holds no data until it has a token, and a health probe must not need one;
7. errors: any error under /api/ comes back as JSON `{"error": ...}`.

`/healthz` is 200 while the monitor is ready (engine, detector, batcher and sinks up, not stopping) and
the event loop keeps time (lag under `server.healthz_max_lag_ms`, measured every 0.5 s); 503 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from swapwatch.errors import SwapwatchError
from swapwatch.stream.config import MonitorConfig
from swapwatch.stream.pipeline import (
    Monitor,
    MonitorReport,
    MonitorStoppedError,
    StreamLimitError,
    StreamNotFoundError,
)
from swapwatch.stream.redact import log_text
from swapwatch.stream.server.api import (
    STATE,
    ServerState,
    add_api_routes,
    status_snapshot,
)
from swapwatch.stream.server.auth import (
    RedactingAccessLogger,
    TokenAuth,
    auth_middleware,
)
from swapwatch.stream.server.config import ServerConfig, is_loopback
from swapwatch.stream.server.feed import FeedSink
from swapwatch.stream.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from swapwatch.stream.cluster.store import ClusterStore
    from swapwatch.stream.sources.base import Source

log = logging.getLogger(__name__)
access_log = logging.getLogger("swapwatch.access")

STATIC_DIR = Path(str(resources.files("swapwatch.stream.server") / "static"))
LAG_PROBE_S = 0.5
ALLOW_METHODS = "GET, POST, DELETE, PATCH, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, If-Match, Last-Event-ID"
EXPOSE_HEADERS = "Location, ETag, Link, Accept-Post"
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_security(server: ServerConfig, token: str | None) -> None:
    """Refuse settings that would expose the API: ConfigError naming the field.

    - auth off (`--no-auth`) is only for a loopback host;
    - auth on needs a token (from --token, SWAPWATCH_TOKEN or server.token).
    """
    from swapwatch.errors import ConfigError
    from swapwatch.stream.server.config import ENV_TOKEN

    if not server.auth:
        if not is_loopback(server.host):
            raise ConfigError(
                f"server.auth: authentication can be switched off only on a loopback host (127.0.0.1, ::1, "
                f"localhost), not {server.host!r}: drop --no-auth (server.auth: false) and set a token "
                f"({ENV_TOKEN} or --token) to listen there"
            )
        return
    if not token:
        where = "" if is_loopback(server.host) else f" (required to listen on {server.host!r})"
        raise ConfigError(
            f"server.token: no API token{where}: set {ENV_TOKEN}, pass --token, or, for local use on a "
            "loopback host only, --no-auth"
        )
    if len(token) < 16:
        raise ConfigError("server.token: too short; use at least 16 characters (e.g. `openssl rand -hex 24`)")


# --- middleware -------------------------------------------------------------------------------------------


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource if request.match_info.route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def _metrics_middleware(metrics: ServerMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.requests.labels(request.method, _route_label(request), str(status)).inc()

    return middleware


def _origin_allowed(request: web.Request, origin: str, origins: frozenset[str]) -> bool:
    """A listed origin (`server.cors_origins`) or the server's own (scheme and Host of the request)."""
    return origin.lower() in origins or origin.lower() == f"{request.scheme}://{request.host}".lower()


def host_header_is_loopback(value: str | None) -> bool:
    """True when an HTTP Host header names a loopback host: localhost, 127.0.0.0/8 or [::1], with or
    without a port (`localhost:8080`, `127.0.0.1`, `[::1]:8080`); False for anything else or none."""
    if not value:
        return False
    host = value.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        port = rest[1:]
    else:
        name, _, port = host.partition(":")
        name = name.removesuffix(".")  # "localhost." is the same name
    if port and not (port.isascii() and port.isdigit()):
        return False
    return bool(name) and is_loopback(name)


def _loopback_only_middleware(origins: frozenset[str]) -> Middleware:
    """Authentication off: answer only requests addressed to a loopback name, and let no other web page
    change anything. Without a token, the Host header and the Origin are all that tell a local client
    from a page on the web: a page whose name resolves to 127.0.0.1 (DNS rebinding) sends its own name
    as Host, and a page on another origin can send a simple POST without any preflight."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if not host_header_is_loopback(host):
            return web.json_response({"error": (
                f"Host {(host or '')[:200]!r} is not a loopback name: with authentication off (--no-auth) this server "
                "answers only requests addressed to localhost, 127.0.0.1 or [::1], so that a web page cannot reach "
                "it under its own name (DNS rebinding); open http://127.0.0.1:PORT/, or run with a token "
                "(SWAPWATCH_TOKEN) to serve other names"
            )}, status=403)
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and request.method not in ("GET", "HEAD", "OPTIONS") \
                and not _origin_allowed(request, origin, origins):
            return web.json_response({"error": (
                f"origin {origin[:200]!r} may not change anything here: with authentication off (--no-auth) requests "
                "from other web pages are refused; list the origin in server.cors_origins, or run with a token"
            )}, status=403, headers={"Vary": "Origin"})
        return await handler(request)

    return middleware


@web.middleware
async def unexpected_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An exception a handler did not expect: logged with its traceback and a reference, answered with a
    JSON 500 that carries the reference and nothing of the traceback."""
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionResetError):  # an answer, or a client that went away
        raise
    except Exception:
        ref = secrets.token_hex(4)
        log.exception("%s %s: unexpected error (ref %s)", log_text(request.method, 16), log_text(request.path), ref)
        return web.json_response(
            {"error": f"internal error (ref {ref}): the server could not handle this request; its log has the "
                      "details under this reference"},
            status=500,
        )


def _cors_middleware(origins: frozenset[str]) -> Middleware:
    def allowed(request: web.Request, origin: str) -> bool:
        return _origin_allowed(request, origin, origins)

    def decorate(headers: Any, origin: str) -> None:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        headers.add("Vary", "Origin")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            if not allowed(request, origin):
                return web.json_response(
                    {"error": f"origin {origin!r} is not allowed (server.cors_origins)"}, status=403,
                    headers={"Vary": "Origin"},
                )
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Expose-Headers": EXPOSE_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            })
        cross = origin is not None and allowed(request, origin)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if cross:
                decorate(exc.headers, origin)  # type: ignore[arg-type]
            raise
        if cross and not response.prepared:
            decorate(response.headers, origin)  # type: ignore[arg-type]
        return response

    return middleware


def _size_middleware(limit: int) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > limit:
            return web.json_response(
                {"error": f"request body of {length} bytes is over the limit of {limit} bytes (server.max_body_bytes)"},
                status=413,
            )
        return await handler(request)

    return middleware


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        message = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
        return web.json_response({"error": message}, status=exc.status, headers=headers)


def _protected(public_metrics: bool) -> Callable[[web.Request], bool]:
    def protected(request: web.Request) -> bool:
        path = request.path
        if path.startswith(("/api/", "/whip")) or path == "/offer":
            return True
        return path == "/metrics" and not public_metrics

    return protected


def _ticket_ok(request: web.Request) -> bool:
    return request.method == "GET" and request.path in ("/api/events/stream", "/api/ws")


# --- plain routes -------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    monitor = state.monitor
    lag_ms = state.loop_lag_ms
    stale = time.monotonic() - state.loop_checked > 10 * LAG_PROBE_S + 1.0
    reasons = []
    if not monitor.ready:
        reasons.append("monitor stopping" if monitor.stopping else "monitor not ready")
    if lag_ms > state.server.healthz_max_lag_ms or stale:
        reasons.append(f"event loop lagging ({lag_ms:.0f} ms)")
    body: dict[str, object] = {
        "status": "ok" if not reasons else "unavailable",
        "streams": sum(1 for n in monitor.stream_names() if monitor.stream_status(n).get("running")),
        "engine": monitor.engine.name if monitor.engine is not None else None,
        "loop_lag_ms": round(lag_ms, 2),
    }
    if state.cluster is not None:  # reported, not judged: a node cut off from NATS still serves its API
        body["cluster"] = {"node": state.cluster.name, "connected": state.cluster.store.connected,
                           "leases": len(state.cluster.leases.held)}
    if reasons:
        body["reasons"] = reasons
    return web.json_response(body, status=200 if not reasons else 503, headers={"Cache-Control": "no-store"})


async def metrics_handler(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    state = request.app[STATE]
    parts = []
    monitor_metrics = state.monitor.metrics
    if monitor_metrics is not None:
        parts.append(monitor_metrics.render()[0])
    parts.append(state.metrics.render())
    response = web.Response(body=b"".join(parts))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={
        "Content-Security-Policy": DASHBOARD_CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    })


# --- background tasks ---------------------------------------------------------------------------------------


async def _watch_loop(state: ServerState) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(LAG_PROBE_S)
        state.loop_lag_ms = max(0.0, (loop.time() - t0 - LAG_PROBE_S) * 1e3)
        state.loop_checked = time.monotonic()
        state.metrics.loop_lag.set(state.loop_lag_ms / 1e3)


async def _push_status(state: ServerState) -> None:
    while True:
        await asyncio.sleep(state.server.status_interval_s)
        if state.feed.wants_status:
            try:
                state.feed.broadcast_status(status_snapshot(state))
            except Exception:  # a snapshot bug must not end the pushes for good
                log.exception("status snapshot failed")


async def _background(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    tasks = [asyncio.create_task(_watch_loop(state), name="swapwatch-loop-lag"),
             asyncio.create_task(_push_status(state), name="swapwatch-status-push")]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the app ------------------------------------------------------------------------------------------------


def create_app(
    monitor: Monitor,
    config: MonitorConfig,
    *,
    feed: FeedSink,
    token: str | None,
    whip: bool = True,
) -> web.Application:
    """The application for `monitor` (which must have `feed` among its extra sinks).

    `token=None` switches authentication off (only after `check_security` allowed it). `whip=False`
    leaves the WebRTC routes out (no aiortc import).
    """
    server = config.server
    namespace = config.sinks.metrics.namespace if config.sinks.metrics is not None else "swapwatch"
    metrics = ServerMetrics(namespace)
    feed.on_drop = lambda kind: metrics.feed_dropped.labels(kind).inc()
    auth = TokenAuth(token if server.auth else None, server.ticket_ttl_s)
    state = ServerState(monitor=monitor, config=config, feed=feed, auth=auth, metrics=metrics)
    app = web.Application(
        client_max_size=server.max_body_bytes,
        middlewares=[
            _metrics_middleware(metrics),
            unexpected_errors,
            *([] if auth.enabled else [_loopback_only_middleware(frozenset(server.cors_origins))]),
            _cors_middleware(frozenset(server.cors_origins)),
            _size_middleware(server.max_body_bytes),
            auth_middleware(auth, protected=_protected(server.public_metrics), ticket_ok=_ticket_ok,
                            on_failure=lambda _r: metrics.auth_failures.inc()),
            _api_errors,
        ],
    )
    app[STATE] = state
    add_api_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/", dashboard)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    if whip:
        _add_whip(app, monitor, server)
    app.cleanup_ctx.append(_background)

    async def end_feeds(_: web.Application) -> None:  # open SSE/WebSocket handlers return, shutdown is quick
        await feed.aclose()

    app.on_shutdown.append(end_feeds)
    return app


def _add_whip(app: web.Application, monitor: Monitor, server: ServerConfig) -> None:
    from swapwatch.errors import ConfigError
    from swapwatch.stream.server.whip import StreamRejected, add_whip_routes

    async def on_source(source: Source) -> str:
        cluster = app[STATE].cluster
        name = str(source.name)
        if cluster is not None and not await cluster.pin_local(name, source.url):
            raise StreamRejected(f"name: a stream named {name!r} runs elsewhere in the cluster", 409)
        try:
            return await monitor.add_source(source, limit=server.max_streams)
        except ConfigError as err:  # the name is taken by a running stream
            raise StreamRejected(str(err), 409) from None
        except StreamLimitError as err:  # API and WHIP streams share server.max_streams
            raise StreamRejected(str(err), 429) from None
        except MonitorStoppedError as err:  # stopping: the publisher should come back later
            raise StreamRejected(str(err), 503) from None
        finally:
            if cluster is not None and name not in monitor.stream_names():
                await cluster.unpin_local(name)

    async def on_end(name: str) -> None:
        with contextlib.suppress(StreamNotFoundError):  # already removed through the API
            await monitor.remove_stream(name)
        cluster = app[STATE].cluster
        if cluster is not None:
            await cluster.unpin_local(name)

    ingest = add_whip_routes(app, on_source=on_source, on_end=on_end, config=server.whip_config())
    # A signal or --duration stops the monitor before the app shuts down: end the sessions first, so their
    # streams end with "the server is shutting down" (docs/webrtc.md) rather than the monitor's "closed".
    monitor.on_stopping.append(ingest.close_all)


# --- the lifecycle ------------------------------------------------------------------------------------------


@dataclass
class Served:
    """A running monitor and its app, as `serve_monitor` yields them."""

    monitor: Monitor
    app: web.Application
    feed: FeedSink
    host: str
    port: int
    run_task: asyncio.Task[MonitorReport]

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def wait(self) -> MonitorReport:
        """Until the monitor stops (stop(), a signal, its duration); returns its report."""
        return await asyncio.shield(self.run_task)


@contextlib.asynccontextmanager
async def serve_monitor(
    config: MonitorConfig,
    *,
    token: str | None,
    duration_s: float | None = None,
    whip: bool = True,
    ready_timeout_s: float = 120.0,
    **monitor_kwargs: Any,
) -> AsyncIterator[Served]:
    """Start the monitor in serve mode and its app on `config.server.host:port`; stop both on exit.

    The listening socket opens only once the monitor is ready (engine, detector and batcher warm), so a
    client never meets a half-started server. Raises what the monitor raised if it cannot start,
    ConfigError for unsafe security settings, OSError when the port cannot be bound.
    """
    server = config.server
    check_security(server, token)
    feed = FeedSink(recent=server.recent_events, queue_size=server.feed_queue, max_clients=server.feed_max_clients)
    extra = [*monitor_kwargs.pop("extra_sinks", ()), feed]
    monitor_config = config
    store: ClusterStore | None = None
    if config.cluster is not None:  # connect first: an unreachable cluster fails before the engine loads
        from swapwatch.stream.cluster.config import default_node_name
        from swapwatch.stream.cluster.membership import connect_cluster

        if "node" not in config.cluster.model_fields_set:  # stable across restarts: host and port
            config = config.model_copy(update={"cluster": config.cluster.model_copy(
                update={"node": default_node_name(server.port)})})

        store, cluster_sink = await connect_cluster(config)
        extra.append(cluster_sink)
        monitor_config = config.model_copy(update={"sources": []})  # they go to the cluster, not straight here
    try:
        async with _served(config, Monitor(monitor_config, extra_sinks=extra, **monitor_kwargs), feed, store,
                           token=token, whip=whip, duration_s=duration_s, ready_timeout_s=ready_timeout_s) as served:
            yield served
    finally:
        if store is not None:
            await store.close()


@contextlib.asynccontextmanager
async def _served(
    config: MonitorConfig, monitor: Monitor, feed: FeedSink, store: ClusterStore | None, *,
    token: str | None, whip: bool, duration_s: float | None, ready_timeout_s: float,
) -> AsyncIterator[Served]:
    server = config.server
    run_task = asyncio.create_task(monitor.run(duration_s, serve=True), name="swapwatch-monitor")
    ready = asyncio.create_task(monitor.wait_ready())
    await asyncio.wait({run_task, ready}, timeout=ready_timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        if run_task.done():
            await run_task  # raises why it could not start
            raise RuntimeError("the monitor stopped before it was ready")
        monitor.stop("start-up timed out")
        await asyncio.gather(run_task, return_exceptions=True)
        raise TimeoutError(f"the monitor was not ready within {ready_timeout_s:g} s")
    runner: web.AppRunner | None = None
    try:
        app = create_app(monitor, config, feed=feed, token=token, whip=whip)
        runner = web.AppRunner(
            app,
            access_log=access_log if server.access_log else None,
            access_log_class=RedactingAccessLogger,
            handle_signals=False,
            shutdown_timeout=5.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, server.host, server.port)
        try:
            await site.start()
        except OSError as err:
            raise SwapwatchError(f"server.port: cannot listen on {server.host}:{server.port}: {err.strerror or err}") from None
        port = _bound_port(runner, server.port)
        log.info("serve: listening on %s:%d (auth %s)", server.host, port, "on" if token and server.auth else "OFF")
        served = Served(monitor, app, feed, server.host, port, run_task)
        async with contextlib.AsyncExitStack() as stack:
            if store is not None:
                from swapwatch.stream.cluster.event_log import ClusterEventSink
                from swapwatch.stream.cluster.membership import membership

                node = await stack.enter_async_context(membership(config, store, monitor, feed, served.base_url))
                app[STATE].cluster = node
                sink = monitor.sinks.get(ClusterEventSink) if monitor.sinks is not None else None
                app[STATE].metrics.watch_cluster(node, (lambda: sink.depth) if sink is not None else (lambda: 0))
            yield served
    finally:
        if runner is not None:
            # WHIP sessions end (on_shutdown) while the monitor still runs, so their streams end cleanly.
            await runner.cleanup()
        monitor.stop("server stopped")
        await asyncio.gather(run_task, return_exceptions=True)


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return requested
