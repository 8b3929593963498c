"""The REST API, auth, limits, CORS, /metrics, /healthz and the logs, against one real server.

The server is `serve_monitor` (the same lifecycle `swapwatch serve` runs) on a free loopback port with
the enrolled-identity reference model; streams are real clips read by the real file/RTSP sources.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapwatch.stream.bench.demo_clip import DemoClip
from tests.stream.server.conftest import LOOPBACK_NETWORKS, TOKEN, ServerThread, free_port, server_config

ORIGIN = "https://desk.example"


@pytest.fixture(scope="module")
def srv(reference_model: Path, swap_clip: DemoClip, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("api")
    # The streams below are the test clip and RTSP servers on this machine: allow exactly those.
    cfg = server_config(reference_model, tmp, cors_origins=[ORIGIN], max_body_bytes=4096, recent_events=500,
                        file_roots=[str(swap_clip.path.parent)], allowed_networks=LOOPBACK_NETWORKS)
    with ServerThread(cfg) as server:
        yield server


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.1)


# --- authentication -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "challenge"),
    [
        ("GET", "/api/streams", {}, 401, 'Bearer realm="swapwatch"'),
        ("GET", "/api/streams", {"Authorization": "Bearer wrong-token-wrong-token"}, 401, 'error="invalid_token"'),
        ("GET", "/api/streams", {"Authorization": f"Basic {TOKEN}"}, 401, 'error="invalid_token"'),
        ("GET", f"/api/streams?token={TOKEN}", {}, 401, 'Bearer realm="swapwatch"'),  # never in a query string
        ("GET", "/api/streams", {"Authorization": f"Bearer {TOKEN}"}, 200, None),
        ("GET", "/api/config", {}, 401, "Bearer"),
        ("POST", "/api/ticket", {}, 401, "Bearer"),
        ("GET", "/metrics", {}, 401, "Bearer"),
        ("POST", "/whip", {"Content-Type": "application/sdp"}, 401, "Bearer"),
        ("POST", "/offer", {"Content-Type": "application/json"}, 401, "Bearer"),
        ("GET", "/healthz", {}, 200, None),
        ("GET", "/", {}, 200, None),
        ("GET", "/static/dashboard.js", {}, 200, None),
    ],
)
def test_auth(srv: ServerThread, method: str, path: str, headers: dict[str, str], status: int,
              challenge: str | None) -> None:
    reply = srv.http(method, path, headers=headers, token=None, body=b"" if method == "POST" else None)
    assert reply.status == status, reply.text
    if challenge is not None:
        assert challenge in reply.headers.get("WWW-Authenticate", "")
        assert "error" in reply.json()


def test_feed_tickets_open_only_the_feed(srv: ServerThread) -> None:
    ticket = srv.http("POST", "/api/ticket").json()["ticket"]
    assert srv.http("GET", f"/api/streams?ticket={ticket}", token=None).status == 401
    forged = ticket[:-4] + ("AAAA" if not ticket.endswith("AAAA") else "BBBB")
    assert srv.http("GET", f"/api/events/stream?ticket={forged}", token=None).status == 401
    # A valid ticket opens the SSE feed; read its first bytes and leave.
    import urllib.request

    with urllib.request.urlopen(f"{srv.base}/api/events/stream?ticket={ticket}", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.readline().startswith(b"retry:")


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"),
    [
        ("POST", "/api/streams", {"body": b"x" * 5000, "headers": {"Content-Type": "application/json"}}, 413,
         "over the limit of 4096 bytes"),
        ("POST", "/api/streams", {"body": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
         "not valid JSON"),
        ("POST", "/api/streams", {"json_body": ["a.mp4"]}, 400, "expected a JSON object"),
        ("POST", "/api/streams", {"body": b"url=a.mp4", "headers": {"Content-Type": "text/plain"}}, 415,
         "application/json"),
        ("POST", "/api/streams", {"json_body": {"urll": "a.mp4"}}, 422, "urll"),
        ("POST", "/api/streams", {"json_body": {"url": "a.mp4", "reconnect": {"initial_s": -1}}}, 422,
         "reconnect.initial_s"),
        ("POST", "/api/streams", {"json_body": {"url": "rtmp://h/live"}}, 422, "url: unsupported URL scheme"),
        ("POST", "/api/streams", {"json_body": {"url": "/dev/video0"}}, 422, "kind"),
        ("POST", "/api/streams", {"json_body": {"url": "a.mp4", "queue_size": 0}}, 422, "queue_size"),
        ("GET", "/api/streams/nope", {}, 404, "'nope': no such stream"),
        ("DELETE", "/api/streams/nope", {}, 404, "'nope': no such stream"),
        ("GET", "/api/events?state=purple", {}, 400, "state"),
        ("GET", "/api/events?limit=0", {}, 400, "limit"),
        ("GET", "/api/events?since=yesterday", {}, 400, "since"),
        ("GET", "/api/events?type=state,nope", {}, 400, "type"),
        ("GET", "/api/events/stream?backlog=-3", {}, 400, "backlog"),
        ("GET", "/api/nothing-here", {}, 404, "Not Found"),
    ],
)
def test_bad_requests_get_specific_errors(srv: ServerThread, method: str, path: str, kwargs: dict[str, Any],
                                          status: int, needle: str) -> None:
    reply = srv.http(method, path, **kwargs)
    assert reply.status == status, reply.text
    assert needle in reply.json()["error"] or any(needle in f["field"] for f in reply.json().get("fields", []))


def test_a_bad_field_is_named_in_fields(srv: ServerThread) -> None:
    reply = srv.http("POST", "/api/streams", json_body={"url": "a.mp4", "reconnect": {"max_s": 1, "initial_s": 5}})
    assert reply.status == 422
    fields = reply.json()["fields"]
    assert [f["field"] for f in fields] == ["reconnect"] and "max_s" in fields[0]["message"]


# --- streams ------------------------------------------------------------------------------------------------------


def test_add_list_status_duplicate_and_remove(srv: ServerThread, swap_clip: DemoClip) -> None:
    reply = srv.http("POST", "/api/streams", json_body={"url": str(swap_clip.path), "name": "api-a"})
    assert reply.status == 201 and reply.headers["Location"] == "/api/streams/api-a"
    assert reply.json()["name"] == "api-a" and reply.json()["running"]
    dup = srv.http("POST", "/api/streams", json_body={"url": str(swap_clip.path), "name": "api-a"})
    assert dup.status == 409 and "already running" in dup.json()["error"]

    wait_for(lambda: srv.http("GET", "/api/streams/api-a").json()["faces_scored"] >= 5)
    status = srv.http("GET", "/api/streams/api-a").json()
    assert status["source_state"] == "live" and status["tracks"] and status["latency_ms"]["p50"] > 0
    assert "api-a" in [s["name"] for s in srv.http("GET", "/api/streams").json()["streams"]]

    removed = srv.http("DELETE", "/api/streams/api-a")
    assert removed.status == 200 and removed.json()["report"]["frames"] > 0
    assert srv.http("GET", "/api/streams/api-a").status == 404
    events = srv.http("GET", "/api/events?stream=api-a&type=stream").json()["events"]
    assert [e["source_state"] for e in events][-1] == "ended"


def test_unreachable_rtsp_reconnects_while_another_stream_scores(srv: ServerThread, swap_clip: DemoClip) -> None:
    dead = f"rtsp://cam:secret-pw@127.0.0.1:{free_port()}/live"
    reply = srv.http("POST", "/api/streams", json_body={
        "url": dead, "name": "dead-cam", "open_timeout_s": 1, "reconnect": {"initial_s": 0.2, "max_s": 0.5}})
    assert reply.status == 201
    assert "secret-pw" not in reply.text and "cam:***@127.0.0.1" in reply.json()["url"]
    assert srv.http("POST", "/api/streams", json_body={"url": str(swap_clip.path), "name": "good"}).status == 201

    wait_for(lambda: srv.http("GET", "/api/streams/dead-cam").json()["source_state"] == "reconnecting")
    attempts = srv.http("GET", "/api/streams/dead-cam").json()["source"]["attempts"]
    scored = srv.http("GET", "/api/streams/good").json()["faces_scored"]

    def both_go_on() -> bool:  # the dead camera tries again, and the good stream scores more faces meanwhile
        dead, good = srv.http("GET", "/api/streams/dead-cam").json(), srv.http("GET", "/api/streams/good").json()
        return dead["source"]["attempts"] > attempts and good["faces_scored"] > scored

    wait_for(both_go_on)
    dead_status, good = srv.http("GET", "/api/streams/dead-cam").json(), srv.http("GET", "/api/streams/good").json()
    assert dead_status["source_state"] == "reconnecting" and dead_status["running"]
    assert good["source_state"] == "live" and good["running"]  # unaffected, still scoring
    reasons = [e["reason"] for e in srv.http("GET", "/api/events?stream=dead-cam&type=stream").json()["events"]]
    assert any("refused" in (r or "").lower() or "unreachable" in (r or "").lower() for r in reasons), reasons
    assert all("secret-pw" not in (r or "") for r in reasons)
    for name in ("dead-cam", "good"):
        assert srv.http("DELETE", f"/api/streams/{name}").status == 200


# --- config, metrics, health, CORS, logs -------------------------------------------------------------------------


def test_config_is_redacted(srv: ServerThread) -> None:
    reply = srv.http("GET", "/api/config")
    assert reply.status == 200 and TOKEN not in reply.text
    cfg = reply.json()
    assert cfg["server"]["token"] == "**********" and cfg["server"]["cors_origins"] == [ORIGIN]


def test_metrics_have_the_per_stage_and_server_series(srv: ServerThread, swap_clip: DemoClip) -> None:
    srv.http("POST", "/api/streams", json_body={"url": str(swap_clip.path), "name": "metered", "realtime": False})
    wait_for(lambda: srv.http("GET", "/api/streams/metered").json()["faces_scored"] >= 5)
    text = srv.http("GET", "/metrics").text
    for needle in ('swapwatch_stage_latency_seconds_count{stage="detect"}',
                   'swapwatch_stage_latency_seconds_count{stage="infer"}',
                   'swapwatch_frame_latency_seconds_count{stream="metered"}',
                   'swapwatch_frames_total{stream="metered"}',
                   "swapwatch_http_requests_total{", "swapwatch_feed_clients{", "swapwatch_event_loop_lag_seconds"):
        assert needle in text, needle
    srv.http("DELETE", "/api/streams/metered")


def test_healthz(srv: ServerThread) -> None:
    reply = srv.http("GET", "/healthz", token=None)
    assert reply.status == 200 and reply.json()["status"] == "ok" and reply.json()["engine"]


@pytest.mark.parametrize(
    ("method", "origin", "status", "allowed"),
    [
        ("OPTIONS", ORIGIN, 204, True),
        ("OPTIONS", "https://evil.example", 403, False),
        ("GET", ORIGIN, 200, True),
        ("GET", "https://evil.example", 200, False),  # served (token-checked), but the browser may not read it
    ],
)
def test_cors(srv: ServerThread, method: str, origin: str, status: int, allowed: bool) -> None:
    headers = {"Origin": origin}
    if method == "OPTIONS":
        headers |= {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    reply = srv.http(method, "/api/streams", headers=headers, token=None if method == "OPTIONS" else TOKEN)
    assert reply.status == status
    assert (reply.headers.get("Access-Control-Allow-Origin") == origin) is allowed
    if method == "OPTIONS" and allowed:
        assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]
        assert "POST" in reply.headers["Access-Control-Allow-Methods"]


def test_secrets_never_reach_the_logs(srv: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ticket = srv.http("POST", "/api/ticket").json()["ticket"]
    srv.http("GET", "/api/streams")
    srv.http("GET", "/api/streams", token="a-wrong-token-that-is-long")
    srv.http("GET", f"/api/streams?token={TOKEN}", token=None)
    srv.http("GET", f"/api/events/stream?ticket={ticket}&backlog=x", token=None)
    srv.http("POST", "/api/streams", json_body={"url": "rtsp://u:hunter2-pw@127.0.0.1:1/x", "name": "pw"})
    srv.http("DELETE", "/api/streams/pw")
    # the access log line is written after the response: wait for the last request's
    wait_for(lambda: any("DELETE /api/streams/pw" in r.getMessage() for r in caplog.records))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api/streams" in text  # the access log is on
    for secret in (TOKEN, ticket, "a-wrong-token-that-is-long", "hunter2-pw"):
        assert secret not in text, secret
