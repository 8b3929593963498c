"""Property-based fuzzing of what callers send that is not an API body: SDP offers (against the real
server's WHIP and /offer routes), YAML configs and the event decoder.

The rule in each case: a malformed input gets its specific error (a 4xx with a reason, ConfigError,
a pydantic ValidationError), never a 500, a traceback or another exception type. Examples are bounded
for CI; `bench/reliability.py` runs the same strategies much longer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from swapwatch.errors import ConfigError
from swapwatch.stream.config import load_monitor_config
from swapwatch.stream.events import Event
from tests.fuzzing import examples
from tests.stream.server.conftest import ServerThread, server_config

FUZZ = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- SDP offers -------------------------------------------------------------------------------------------


def real_offer() -> str:
    """A real aiortc offer with video and audio (the seed every mutation starts from)."""
    from aiortc import RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


OFFER_LINES = real_offer().splitlines()


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    """A real offer with lines dropped, duplicated, truncated, swapped for garbage or reordered."""
    lines = list(OFFER_LINES)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "cut", "garbage", "swap", "number"]))
        if op == "drop" and len(lines) > 1:
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, max(0, len(lines[i]) - 1)))]
        elif op == "garbage":
            lines[i] = draw(st.text(max_size=80))
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "number":
            lines[i] = lines[i].replace("9", str(draw(st.integers(-(2**63), 2**64))), 1)
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture(scope="module")
def srv(reference_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    cfg = server_config(reference_model, tmp_path_factory.mktemp("fuzz"), whip={"negotiate_timeout_s": 5.0})
    with ServerThread(cfg) as server:
        yield server


def _hang_up(srv: ServerThread, reply: Any) -> None:
    """End a session that a (surprisingly valid) fuzzed offer opened, so examples stay independent."""
    location = reply.headers.get("Location")
    if location:
        srv.http("DELETE", location)


@FUZZ
@given(offer=st.one_of(mutated_offers(), st.text(max_size=2000)))
def test_whip_offers_never_get_a_500(srv: ServerThread, offer: str) -> None:
    reply = srv.http("POST", "/whip/fuzz", body=offer.encode("utf-8", "surrogatepass"),
                     headers={"Content-Type": "application/sdp"})
    assert reply.status < 500 or reply.status in (503, 504), (reply.status, reply.text)
    if reply.status == 201:
        _hang_up(srv, reply)
    else:
        assert reply.text.strip(), "a refusal says why"


@FUZZ
@given(offer=mutated_offers(), extra=st.dictionaries(st.text(max_size=10), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8), max_size=3))
def test_json_offers_never_get_a_500(srv: ServerThread, offer: str, extra: dict[str, Any]) -> None:
    body = {"sdp": offer, "type": "offer", **extra}
    reply = srv.http("POST", "/offer", json_body=body)
    assert reply.status < 500 or reply.status in (503, 504), (reply.status, reply.text)
    if reply.status in (200, 201):
        _hang_up(srv, reply)


def test_the_server_is_left_clean_by_the_fuzzing(srv: ServerThread) -> None:
    """Runs after the fuzz tests above (file order): no session or stream is left behind by any example."""
    from swapwatch.stream.server.whip import WHIP_INGEST

    ingest = srv.served.app[WHIP_INGEST]
    assert srv.call(asyncio.sleep(0, result=len(ingest.sessions))) == 0
    assert srv.http("GET", "/api/streams").json()["streams"] == [] or all(
        not s["running"] for s in srv.http("GET", "/api/streams").json()["streams"]
    )


# --- YAML configs -----------------------------------------------------------------------------------------

KEYS = ["sources", "url", "name", "engine", "model", "backend", "batcher", "max_batch", "sinks", "jsonl", "path",
        "webhook", "smoothing", "server", "port", "token", "faces", "detect_every", "whip", "x", ""]

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@settings(max_examples=examples(150), deadline=None)
@given(data=st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=5))
def test_any_config_mapping_loads_or_names_what_is_wrong(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("cfg") / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_monitor_config(path, env={})
    except ConfigError as err:
        assert str(err).strip()


@settings(max_examples=examples(150), deadline=None)
@given(text=st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_any_config_text_loads_or_names_what_is_wrong(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("cfg") / "monitor.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_monitor_config(path, env={})
    except ConfigError as err:
        assert str(path) in str(err) or str(err).strip()


# --- the event decoder ------------------------------------------------------------------------------------

A_REAL_EVENT: dict[str, Any] = json.loads(
    Event(type="state", stream="cam1", track=3, state="alert", previous_state="suspicious", score=0.97,
          raw_score=0.99, box=[1.0, 2.0, 30.0, 40.0], latency_ms=42.0).model_dump_json()
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=examples(300), deadline=None)
@given(changes=st.dictionaries(st.sampled_from([*A_REAL_EVENT, "extra"]), json_values, max_size=4),
       dropped=st.sets(st.sampled_from(list(A_REAL_EVENT)), max_size=3))
def test_the_event_decoder_accepts_or_rejects_with_a_validation_error(changes: dict[str, Any], dropped: set[str]) -> None:
    doc = {k: v for k, v in {**A_REAL_EVENT, **changes}.items() if k not in dropped}
    try:
        event = Event.from_json(json.dumps(doc))
    except ValidationError:
        return
    encoded = event.model_dump_json()
    assert Event.from_json(encoded).model_dump_json() == encoded  # what decodes, re-encodes stably


@settings(max_examples=examples(200), deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_the_event_decoder_rejects_arbitrary_bytes_cleanly(raw: bytes) -> None:
    try:
        Event.from_json(raw)
    except ValidationError:
        pass
