"""The event record: JSON round trip, the exported JSON Schema, and the DESIGN.md contract fields."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from swapwatch.stream.events import (
    Event,
    ModelInfo,
    event_schema,
    state_event,
    stream_event,
    summary_event,
)
from swapwatch.stream.temporal import StreamVerdict, TrackState

CONTRACT = ("time", "stream", "track", "state", "score", "raw_score", "box", "frame_pts", "latency_ms")


def validate(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$") -> list[str]:
    """A small JSON Schema checker for the keywords pydantic emits here (no jsonschema dependency)."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        return validate(instance, root["$defs"][name], root, path)
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            if not validate(instance, option, root, path):
                return []
        return [f"{path}: matches none of anyOf"]
    errors: list[str] = []
    kinds = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }
    if "type" in schema and not kinds[schema["type"]](instance):
        return [f"{path}: not {schema['type']}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not in {schema['enum']}")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: {instance!r} != {schema['const']!r}")
    if "minimum" in schema and instance < schema["minimum"]:
        errors.append(f"{path}: below minimum")
    if "maximum" in schema and instance > schema["maximum"]:
        errors.append(f"{path}: above maximum")
    if schema.get("format") == "date-time":
        try:
            if datetime.fromisoformat(instance).tzinfo is None:
                errors.append(f"{path}: date-time without a timezone")
        except ValueError:
            errors.append(f"{path}: not an ISO 8601 date-time")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        errors += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in instance]
        for key, value in instance.items():
            if key in props:
                errors += validate(value, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(value, schema["additionalProperties"], root, f"{path}.{key}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0) or len(instance) > schema.get("maxItems", len(instance)):
            errors.append(f"{path}: wrong length {len(instance)}")
        if "items" in schema:
            for i, v in enumerate(instance):
                errors += validate(v, schema["items"], root, f"{path}[{i}]")
    return errors


TS = TrackState(
    track=3, t=12.5, raw_score=0.91, score=0.87, state="alert", previous="suspicious", changed=True, since=12.5,
    window=30, reason="score >= alert_enter",
)  # fmt: skip
VERDICT = StreamVerdict("cam-1", 13.0, "alert", 0.87, 2, {"clear": 1, "suspicious": 0, "alert": 1}, worst_track=3)
MODEL = ModelInfo(
    name="default.onnx", method="masm", sha256="ab" * 32, precision="fp32", thresholds={"alert_enter": 0.8}
)

EVENTS = {
    "state": state_event("cam-1", TS, box=[10, 20.25, 110, 140], frame_pts=12.5, latency_ms=41.7, model=MODEL),
    "state ended": state_event(
        "cam-1",
        TrackState(3, 20.0, None, 0.5, "clear", "alert", True, 20.0, 0, ended=True, reason="lost"),
        frame_pts=None,
    ),
    "summary": summary_event(VERDICT, fps=29.8, frame_pts=13.0, latency_ms=38.0),
    "stream": stream_event("cam-1", "reconnecting", "server closed the connection"),
}


@pytest.mark.parametrize("name", list(EVENTS))
def test_round_trip_and_schema(name: str) -> None:
    event = EVENTS[name]
    text = event.to_json()
    assert "\n" not in text
    data = json.loads(text)
    assert Event.from_json(text) == event
    assert validate(data, event_schema()) == []
    assert set(CONTRACT) <= set(data)  # every contract field, null where it does not apply
    assert data["time"].endswith("Z") and datetime.fromisoformat(data["time"]).tzinfo is not None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"state": "live"}, "$.state"),
        ({"type": "alarm"}, "$.type"),
        ({"box": [1, 2, 3]}, "$.box"),
        ({"score": 1.5}, "$.score"),
        ({"time": "yesterday"}, "$.time"),
        ({"extra": 1}, "$.extra"),
        (
            {"model": {"name": "m", "method": None, "sha256": None, "precision": None, "thresholds": {"a": "x"}}},
            "$.model",
        ),
    ],
)
def test_schema_rejects_bad_events(change: dict[str, Any], problem: str) -> None:
    data = json.loads(EVENTS["state"].to_json())
    data.update(change)
    errors = validate(data, event_schema())
    assert errors and all(e.startswith(problem) for e in errors), errors
    with pytest.raises(ValidationError):
        Event.model_validate_json(json.dumps(data))


def test_missing_field_fails_schema() -> None:
    data = json.loads(EVENTS["stream"].to_json())
    del data["latency_ms"]
    assert validate(data, event_schema()) == ["$.latency_ms: required"]


def test_schema_lists_contract_fields_as_required() -> None:
    schema = event_schema()
    assert set(CONTRACT) <= set(schema["required"])
    assert schema["properties"]["state"]["enum"] == ["clear", "suspicious", "alert"]
    assert schema["additionalProperties"] is False
    json.dumps(schema)  # serialisable as is


@pytest.mark.parametrize(
    ("given", "written"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "2026-01-02T03:04:05.678Z"),
        (datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))), "2026-01-02T03:04:05.000Z"),
    ],
)
def test_time_is_utc_milliseconds(given: datetime, written: str) -> None:
    event = stream_event("s", "live", time=given)
    assert json.loads(event.to_json())["time"] == written


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValidationError):
        stream_event("s", "live", time=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("state", {"type": "state", "track": 3, "state": "alert", "previous_state": "suspicious", "score": 0.87,
                   "raw_score": 0.91, "box": [10.0, 20.25, 110.0, 140.0], "frame_pts": 12.5, "latency_ms": 41.7}),
        ("state ended", {"ended": True, "state": "clear", "previous_state": "alert", "raw_score": None}),
        ("summary", {"type": "summary", "state": "alert", "track": 3, "score": 0.87, "tracks": 2, "fps": 29.8,
                     "counts": {"clear": 1, "suspicious": 0, "alert": 1}}),
        ("stream", {"type": "stream", "state": "clear", "source_state": "reconnecting", "track": None, "score": None,
                    "reason": "server closed the connection"}),
    ],
)  # fmt: skip
def test_builders_fill_fields(event: str, expected: dict[str, Any]) -> None:
    data = EVENTS[event].to_dict()
    assert {k: data[k] for k in expected} == expected


def test_ids_are_unique() -> None:
    assert len({stream_event("s", "live").id for _ in range(50)}) == 50


def test_docs_schema_matches_code() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    section = text.split("## JSON Schema of the event", 1)[1]
    block = section.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(block) == event_schema()
    for name in CONTRACT:
        assert f"| `{name}` |" in text  # every contract field has a row in the field table
