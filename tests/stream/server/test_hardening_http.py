"""Hardening of the HTTP side, against real servers on loopback (`serve_monitor`, the reference model).

- `--no-auth` answers only requests addressed to a loopback name (DNS rebinding), preflights included,
  and lets no foreign page change anything;
- `/api/config` and `--print-config` redact the TURN credential, webhook URL tokens and header secrets;
- caller text (a `%0A` in a path, a newline in a stream name or URL) cannot forge a log line;
- no malformed request gets a 500: non-UTF-8 `Authorization` bytes are a 401, JSON that nests too deep
  a 400 (API and `/offer`), random bodies and headers never a 500 (hypothesis); an exception no handler
  expected is a JSON 500 with a reference and no traceback;
- a WHIP stream ends with "the server is shutting down" when the monitor is stopped (SIGTERM).

Requests with headers urllib would not send (raw bytes, a forged Host) go over a plain socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.bench.whip_client import FileTrack, publish
from swapwatch.stream.pipeline import StreamNotFoundError
from swapwatch.stream.server.app import unexpected_errors
from tests.fuzzing import examples
from tests.stream.conftest import run_async
from tests.stream.server.conftest import (
    TOKEN,
    ServerThread,
    free_port,
    running_server,
    server_config,
    wait_until,
)
from tests.stream.server.test_whip import loopback_ice  # noqa: F401 - the fixture
from tests.stream.test_pipeline import monitor_config, read_events

ORIGIN = "https://desk.example"
TURN_SECRET = "turn-credential-s3cret"
HOOK_QUERY_SECRET = "hook-query-s3cret"
HOOK_USER_SECRET = "hookusers3cret"
HOOK_HEADER_SECRET = "hook-header-s3cret"
HOOK_HMAC_SECRET = "hook-hmac-s3cret"


# --- servers ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_srv(reference_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Authentication off (`--no-auth`), on 127.0.0.1."""
    cfg = server_config(reference_model, tmp_path_factory.mktemp("noauth"), auth=False, token=None,
                        cors_origins=[ORIGIN])
    with ServerThread(cfg, token=None) as server:
        yield server


@pytest.fixture(scope="module")
def srv(reference_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Token auth, with a TURN server and a webhook whose URL and headers hold secrets."""
    tmp = tmp_path_factory.mktemp("guarded")
    hook = f"https://{HOOK_USER_SECRET}@127.0.0.1:{free_port()}/in?token={HOOK_QUERY_SECRET}"
    cfg = monitor_config(
        [], reference_model, tmp,
        server={"port": 0, "token": TOKEN, "cors_origins": [ORIGIN], "whip": {"ice_servers": [
            {"urls": ["turn:turn.example:3478"], "username": "turn-user", "credential": TURN_SECRET}]}},
        sinks={"jsonl": {"path": str(tmp / "events.jsonl")}, "metrics": {},
               "webhooks": [{"url": hook, "types": ["state"], "headers": {"X-Api-Key": HOOK_HEADER_SECRET},
                             "secret_env": "HOOK_HMAC"}]},
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOOK_HMAC", HOOK_HMAC_SECRET)  # the webhook sink reads it when it starts
        with ServerThread(cfg) as server:
            yield server


def raw_http(base: str, method: str, path: str, headers: Sequence[tuple[str, bytes | str]],
             body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request over a plain socket, headers sent byte for byte (Host included: set it in `headers`)."""
    parts = urlsplit(base)
    lines = [f"{method} {path} HTTP/1.1".encode()]
    for key, value in [*headers, ("Content-Length", str(len(body))), ("Connection", "close")]:
        lines.append(key.encode() + b": " + (value if isinstance(value, bytes) else value.encode("latin-1")))
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    reply_headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split(" ", 2)[1]), reply_headers, payload


def host_of(server: ServerThread) -> str:
    return urlsplit(server.base).netloc


# --- --no-auth: loopback Host only, no foreign page -----------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}  # what a cross-site form or fetch sends without a preflight


@pytest.mark.parametrize(
    ("method", "path", "host", "headers", "status"),
    [
        # DNS rebinding: the page's own name as Host, its own origin as Origin.
        ("POST", "/api/streams", "evil.example:{port}", {"Origin": "http://evil.example:{port}", **JSON}, 403),
        ("OPTIONS", "/api/streams", "evil.example:{port}", {"Origin": "http://evil.example:{port}", **PREFLIGHT}, 403),
        ("GET", "/api/streams", "evil.example", {}, 403),
        ("GET", "/api/config", "rebind.evil.example:{port}", {}, 403),
        ("GET", "/", "evil.example:{port}", {}, 403),
        ("GET", "/healthz", "127.0.0.1.evil.example", {}, 403),
        ("GET", "/api/streams", "localhost.evil.example:{port}", {}, 403),
        ("GET", "/api/streams", "0.0.0.0:{port}", {}, 403),
        ("GET", "/api/streams", "[::]:{port}", {}, 403),
        ("GET", "/api/streams", "10.0.0.1", {}, 403),
        # Loopback names and addresses, with or without a port.
        ("GET", "/api/streams", "localhost", {}, 200),
        ("GET", "/api/streams", "LOCALHOST:{port}", {}, 200),
        ("GET", "/api/streams", "127.0.0.1:{port}", {}, 200),
        ("GET", "/api/streams", "127.3.4.5", {}, 200),
        ("GET", "/api/streams", "[::1]", {}, 200),
        ("GET", "/api/streams", "[::1]:{port}", {}, 200),
        ("GET", "/healthz", "localhost:{port}", {}, 200),
        # A loopback Host, but a foreign page: a simple POST needs no preflight, so the Origin decides.
        ("POST", "/api/streams", "127.0.0.1:{port}", {"Origin": "https://evil.example", **TEXT}, 403),
        ("POST", "/api/streams", "127.0.0.1:{port}", {"Origin": "null", **TEXT}, 403),
        ("DELETE", "/api/streams/x", "127.0.0.1:{port}", {"Origin": "https://evil.example"}, 403),
        ("OPTIONS", "/api/streams", "127.0.0.1:{port}", {"Origin": "https://evil.example", **PREFLIGHT}, 403),
        # Listed and same-origin pages, and clients that send no Origin (curl), reach the handler (422: bad body).
        ("POST", "/api/streams", "127.0.0.1:{port}", {"Origin": ORIGIN, **JSON}, 422),
        ("POST", "/api/streams", "127.0.0.1:{port}", {"Origin": "http://127.0.0.1:{port}", **JSON}, 422),
        ("POST", "/api/streams", "localhost:{port}", JSON, 422),
        ("DELETE", "/api/streams/x", "localhost:{port}", {}, 404),
        ("OPTIONS", "/api/streams", "127.0.0.1:{port}", {"Origin": ORIGIN, **PREFLIGHT}, 204),
    ],
)
def test_no_auth_serves_only_loopback_hosts_and_local_pages(
    open_srv: ServerThread, method: str, path: str, host: str, headers: dict[str, str], status: int
) -> None:
    port = str(urlsplit(open_srv.base).port)
    sent = [("Host", host.replace("{port}", port))] + [(k, v.replace("{port}", port)) for k, v in headers.items()]
    body = b'{"urll": "a.mp4"}' if method == "POST" else b""
    got, reply_headers, payload = raw_http(open_srv.base, method, path, sent, body)
    assert got == status, payload
    if status == 403:
        assert "access-control-allow-origin" not in reply_headers
        error = json.loads(payload)["error"]
        assert ("loopback" in error and "--no-auth" in error) or "origin" in error, error
    assert not open_srv.monitor.stream_names()  # nothing was added, whatever got through


# --- secrets in the shown config ------------------------------------------------------------------------------


def test_api_config_redacts_every_secret(srv: ServerThread) -> None:
    reply = srv.http("GET", "/api/config")
    assert reply.status == 200
    for secret in (TOKEN, TURN_SECRET, HOOK_QUERY_SECRET, HOOK_USER_SECRET, HOOK_HEADER_SECRET, HOOK_HMAC_SECRET):
        assert secret not in reply.text, secret
    cfg = reply.json()
    turn = cfg["server"]["whip"]["ice_servers"][0]
    assert turn == {"urls": ["turn:turn.example:3478"], "username": "turn-user", "credential": "***"}
    hook = cfg["sinks"]["webhooks"][0]
    assert hook["url"].startswith("https://***@127.0.0.1:") and hook["url"].endswith("/in?token=***")
    assert hook["headers"] == {"X-Api-Key": "***"} and hook["secret_env"] == "HOOK_HMAC"
    assert cfg["server"]["token"] == "**********" and cfg["server"]["auth"] is True


@pytest.mark.parametrize(
    ("setting", "secret", "shown"),
    [
        ("server.whip.ice_servers=[{urls: ['turn:t.example'], username: u1, credential: " + TURN_SECRET + "}]",
         TURN_SECRET, "credential: '***'"),
        (f"sinks.webhooks=[{{url: 'https://h.example/in?token={HOOK_QUERY_SECRET}', headers: {{Authorization: "
         f"'Bearer {HOOK_HEADER_SECRET}'}}}}]", HOOK_HEADER_SECRET, "Authorization: '***'"),
        (f"sinks.webhooks=[{{url: 'https://h.example/in?token={HOOK_QUERY_SECRET}'}}]", HOOK_QUERY_SECRET,
         "token=***"),
    ],
)
def test_print_config_redacts_like_the_api(setting: str, secret: str, shown: str) -> None:
    out = subprocess.run([sys.executable, "-m", "swapwatch", "serve", "--no-auth", "--print-config", "--set", setting],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert secret not in out.stdout and shown in out.stdout, out.stdout


# --- caller text in the logs ----------------------------------------------------------------------------------


def forged(records: list[logging.LogRecord]) -> list[str]:
    """Messages in which a caller's text started a new line."""
    return [m for r in records if "\nFORGED" in (m := r.getMessage()) or "\rFORGED" in m or "\x00FORGED" in m]


@pytest.mark.parametrize(
    ("method", "path", "body", "needle"),
    [
        ("GET", "/api/streams/cam%0AFORGED%20200%20GET%20/admin", None, "cam\\nFORGED"),
        ("GET", "/api/nothing%0D%0AFORGED", None, "nothing\\r\\nFORGED"),
        ("DELETE", "/api/streams/x%00FORGED", None, "x\\x00FORGED"),
        ("POST", "/api/streams", {"url": "/nonexistent/cam.mp4", "name": "cam\nFORGED line"}, None),
        ("POST", "/api/streams", {"url": "/nonexistent/a\nFORGED.mp4", "name": "nl-url"}, None),
    ],
)
def test_caller_text_cannot_forge_log_lines(srv: ServerThread, caplog: pytest.LogCaptureFixture, method: str,
                                            path: str, body: dict[str, str] | None, needle: str | None) -> None:
    caplog.set_level(logging.INFO)
    reply = srv.http(method, path, json_body=body)
    assert reply.status < 500, reply.text
    if reply.status == 201:
        srv.call(_settle(srv, reply.json()["name"]))
    time.sleep(0.3)  # the access log line is written after the response
    assert not forged(caplog.records), forged(caplog.records)
    if needle is not None:
        assert any(needle in r.getMessage() for r in caplog.records if r.name == "swapwatch.access"), \
            [r.getMessage() for r in caplog.records]


async def _settle(srv: ServerThread, name: str) -> None:
    """Let an added stream fail or end (its state changes get logged), then remove it."""
    for _ in range(100):
        if not srv.monitor.stream_status(name).get("running"):
            break
        await asyncio.sleep(0.05)
    await srv.monitor.remove_stream(name)


# --- malformed requests: never a 500 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe\xfd", b"\xc3\x28", ("Bearer " + TOKEN).encode() + b"\xff", b"Bearer \xe2\x82"],
)
def test_non_utf8_authorization_is_a_401(srv: ServerThread, authorization: bytes) -> None:
    status, headers, body = raw_http(srv.base, "GET", "/api/streams", [("Host", host_of(srv)),
                                                                       ("Authorization", authorization)])
    assert status == 401, body
    assert "Bearer" in headers["www-authenticate"] and "error" in json.loads(body)


DEEP = 60_000  # past Python's recursion limit, under /offer's 64 KiB body limit


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/api/streams", b"[" * DEEP, "nested too deeply"),
        ("/api/streams", b'{"url": "a.mp4", "reconnect": ' + b"[" * DEEP + b"]" * DEEP + b"}", "nested too deeply"),
        ("/api/streams", b'{"url": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", "nested too deeply"),
        ("/api/streams", b'{"url": "\xff\xfe"}', "not valid JSON"),
        ("/offer", b'{"sdp": ' + b"[" * DEEP, "nested too deeply"),
        ("/offer", b"[" * 40 + b"]" * 40, "nested too deeply"),
        ("/offer", b'{"sdp": "\xff"}', "not JSON"),
    ],
)
def test_json_that_nests_too_deep_or_is_not_json_is_a_400(srv: ServerThread, path: str, body: bytes,
                                                          needle: str) -> None:
    status, _, payload = raw_http(srv.base, "POST", path, [
        ("Host", host_of(srv)), ("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json")], body)
    assert status == 400, payload[:500]
    assert needle in payload.decode(), payload[:500]
    assert b"Traceback" not in payload


def test_an_unexpected_exception_is_a_json_500_with_a_reference(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(_: web.Request) -> web.Response:
        raise ZeroDivisionError("a bug in a handler: secret-internal-detail")

    async def scenario() -> tuple[int, str, Any]:
        app = web.Application(middlewares=[unexpected_errors])
        app.router.add_get("/boom", broken)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/boom") as r:
                return r.status, r.content_type, await r.json()
        finally:
            await runner.cleanup()

    caplog.set_level(logging.ERROR)
    status, content_type, body = run_async(scenario())
    assert status == 500 and content_type == "application/json"
    assert "internal error (ref " in body["error"]
    assert "secret-internal-detail" not in body["error"] and "Traceback" not in body["error"]
    ref = body["error"].split("(ref ", 1)[1].split(")", 1)[0]
    logged = [r for r in caplog.records if ref in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "/boom" in logged[0].getMessage()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
BODIES = st.one_of(
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"url": st.text(max_size=24)},
                          optional={"name": st.text(max_size=16), "kind": st.text(max_size=8), "reconnect": JSONISH,
                                    "sdp": st.text(max_size=24), "type": st.text(max_size=8)}
                          ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=120),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * (n // 2)),
)
HEADER_BYTES = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
CONTENT_TYPES = st.sampled_from([b"application/json", b"text/json", b"application/sdp", b"text/plain", b""]) \
    | HEADER_BYTES
AUTHORIZATION = st.sampled_from([f"Bearer {TOKEN}".encode(), b"Bearer nope", None]) | HEADER_BYTES


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(path=st.sampled_from(["/api/streams", "/api/ticket", "/offer", "/whip", "/whip/fuzz", "/api/streams/x"]),
       method=st.sampled_from(["POST", "POST", "DELETE", "PATCH"]), body=BODIES, content_type=CONTENT_TYPES,
       authorization=AUTHORIZATION, origin=st.none() | HEADER_BYTES)
def test_random_requests_never_get_a_500(srv: ServerThread, path: str, method: str, body: bytes,
                                         content_type: bytes, authorization: bytes | None,
                                         origin: bytes | None) -> None:
    headers: list[tuple[str, bytes | str]] = [("Host", host_of(srv)), ("Content-Type", content_type)]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    if origin is not None:
        headers.append(("Origin", origin))
    status, _, payload = raw_http(srv.base, method, path, headers, body)
    assert status != 500 and b"Traceback" not in payload, (status, payload[:500])
    for name in srv.monitor.stream_names():  # a valid random stream: take it away again
        with contextlib.suppress(Exception):
            srv.call(srv.monitor.remove_stream(name))


# --- WHIP streams on SIGTERM ----------------------------------------------------------------------------------


def test_whip_stream_ends_with_the_shutdown_reason_when_the_monitor_stops(
    loopback_ice: None, reference_model: Path, swap_clip: DemoClip, tmp_path: Path  # noqa: F811
) -> None:
    async def scenario() -> None:
        cfg = server_config(reference_model, tmp_path)
        async with running_server(cfg) as srv:

            def status() -> dict[str, Any]:
                try:
                    return srv.monitor.stream_status("sigterm-cam")
                except StreamNotFoundError:  # removed once its WHIP session ended
                    return {}

            session = await publish(srv.url("/whip/sigterm-cam"), FileTrack(swap_clip.path, loop=True), token=TOKEN)
            try:
                await session.wait_connected()
                await wait_until(lambda: status().get("frames", 0) > 3, timeout=30)  # really live
                srv.monitor.stop("SIGTERM")  # what `swapwatch serve`'s signal handler does
                # The monitor ends the stream itself, before the app shuts down (which would end it anyway).
                await wait_until(lambda: not status().get("running"), timeout=30)
            finally:
                with contextlib.suppress(Exception):
                    await session.close()

    run_async(scenario(), timeout=180)
    ends = [e for e in read_events(tmp_path / "events.jsonl")
            if e.stream == "sigterm-cam" and e.type == "stream" and e.source_state in ("ended", "failed")]
    assert [e.reason for e in ends] == ["the server is shutting down"], [(e.source_state, e.reason) for e in ends]
