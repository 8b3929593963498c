"""The event record every output carries (JSONL, webhooks, API, console, metrics, evidence).

One flat record for three kinds of event, told apart by `type`:

* `state`: a face track changed state (clear / suspicious / alert), or ended (`ended: true`);
* `summary`: a periodic per-stream summary (worst state among live tracks, top score, counts, fps);
* `stream`: the source changed state (connecting / live / reconnecting / failed / ended), with a reason.

The DESIGN.md contract fields (`time`, `stream`, `track`, `state`, `score`, `raw_score`, `box`,
`frame_pts`, `latency_ms`) are present in every event, `null` where they do not apply, so a consumer can
read any line with the same code. `state` is always one of clear / suspicious / alert, also in `stream`
events (it is then the stream's current verdict): the source's own condition goes in `source_state`, so
filtering on `state == "alert"` never meets an unexpected value.

A flat record, not a tagged union of three models: it keeps one JSON schema, one parser and one table
in the docs, at the price of fields that are null for some types (the schema says which).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer, field_validator

from swapwatch.stream.temporal import State, StreamVerdict, TrackState

EventType = Literal["state", "summary", "stream"]
SourceState = Literal["connecting", "live", "reconnecting", "failed", "ended"]
SCHEMA_ID = "https://swapwatch.invalid/schemas/event-1.json"
SCHEMA_VERSION: Final = 1


def utc_now() -> datetime:
    """The wall clock, timezone-aware UTC."""
    return datetime.now(UTC)


class ModelInfo(BaseModel):
    """Which detector produced the scores (optional on every event)."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    name: str = Field(..., description="Model file name, e.g. default.onnx.")
    method: str | None = Field(None, description="Detector family from the sidecar: masm | airl.")
    sha256: str | None = Field(None, description="SHA-256 of the model file (first 12 hex digits are enough to tell).")
    precision: str | None = Field(None, description="fp32 | fp16 | int8.")
    thresholds: dict[str, float] | None = Field(
        None, description="The smoother's thresholds on the raw score: suspicious_enter/exit, alert_enter/exit."
    )


class Event(BaseModel):
    """One event. Serialise with `to_json()`; parse with `Event.from_json()`."""

    # Serialisation writes every field, so the schema marks every field required.
    model_config = ConfigDict(extra="forbid", title="swapwatch event", json_schema_serialization_defaults_required=True)

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Version of this record's layout.")
    id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        description="Unique id of this event (webhook receivers can use it to drop retried duplicates).",
    )
    type: EventType = Field(
        ...,
        description="state: a track changed state; summary: periodic per-stream summary; "
        "stream: the source changed state.",
    )
    time: AwareDatetime = Field(
        default_factory=utc_now,
        description="Wall-clock time the event was made, ISO 8601 UTC with milliseconds.",
        json_schema_extra={"format": "date-time"},
    )
    stream: str = Field(..., description="Stream name.")
    track: int | None = Field(
        None,
        description="Face track id within the stream "
        "(state: the track; summary: the worst live track, or null; stream: null).",
    )
    state: State = Field(
        ...,
        description="clear | suspicious | alert. state events: the track's new state; summary and stream events: "
        "the worst state among the stream's live tracks.",
    )
    previous_state: State | None = Field(None, description="The track's state before this change (state events).")
    score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Smoothed score on the raw-score scale (state: the track's; summary: the highest live track's).",
    )
    raw_score: float | None = Field(None, ge=0.0, le=1.0, description="The model's score for this frame's crop.")
    probability: float | None = Field(
        None, ge=0.0, le=1.0, description="The smoothed score through the model's calibration map, when known."
    )
    box: list[float] | None = Field(
        None, min_length=4, max_length=4, description="Face box [x1, y1, x2, y2] in source-frame pixels."
    )
    frame_pts: float | None = Field(
        None, description="Presentation time of the frame on the stream clock, seconds; null when the source has none."
    )
    latency_ms: float | None = Field(
        None, ge=0.0, description="Glass-to-score latency of that frame (frame received -> score smoothed), ms."
    )
    since_pts: float | None = Field(None, description="Stream time the track entered `state`, seconds (state events).")
    ended: bool = Field(False, description="The track is over (face lost for max_gap_s, or the stream ended).")
    reason: str | None = Field(None, description="Why the state changed, in words.")
    source_state: SourceState | None = Field(
        None, description="stream events: connecting | live | reconnecting | failed | ended."
    )
    tracks: int | None = Field(None, ge=0, description="summary events: live face tracks in the stream.")
    counts: dict[str, int] | None = Field(
        None, description="summary events: live tracks per state, e.g. {'clear': 2, 'suspicious': 0, 'alert': 1}."
    )
    fps: float | None = Field(None, ge=0.0, description="summary events: frames per second processed lately.")
    model: ModelInfo | None = Field(None, description="The detector that produced the scores.")
    node: str | None = Field(
        None, description="The cluster node that made the event (`serve --cluster`); null outside a cluster."
    )

    @field_validator("time")
    @classmethod
    def _to_utc(cls, v: datetime) -> datetime:
        v = v.astimezone(UTC)
        return v.replace(microsecond=v.microsecond // 1000 * 1000)  # what the JSON keeps: milliseconds

    @field_serializer("time")
    def _iso_time(self, v: datetime) -> str:
        return v.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def to_json(self) -> str:
        """One compact JSON line (no newline); every field present, null where it does not apply."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict `to_json` writes."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        return cls.model_validate_json(text)


def event_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `Event`, as written into docs/alerts.md and checked by tests."""
    schema = Event.model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def _box(box: Any) -> list[float] | None:
    if box is None:
        return None
    values = [float(v) for v in list(box)]
    return [round(v, 2) for v in values]


def _clip01(x: float | None) -> float | None:
    return None if x is None else min(max(float(x), 0.0), 1.0)


def state_event(
    stream: str,
    ts: TrackState,
    *,
    box: Any = None,
    frame_pts: float | None = None,
    latency_ms: float | None = None,
    probability: float | None = None,
    model: ModelInfo | None = None,
    time: datetime | None = None,
) -> Event:
    """A `state` event from a smoother's TrackState (changed or ended)."""
    return Event(
        type="state",
        time=time or utc_now(),
        stream=stream,
        track=ts.track,
        state=ts.state,
        previous_state=ts.previous,
        score=_clip01(ts.score),
        raw_score=_clip01(ts.raw_score),
        probability=_clip01(probability),
        box=_box(box),
        frame_pts=frame_pts,
        latency_ms=latency_ms,
        since_pts=ts.since,
        ended=ts.ended,
        reason=ts.reason,
        model=model,
    )


def summary_event(
    verdict: StreamVerdict,
    *,
    fps: float | None = None,
    frame_pts: float | None = None,
    latency_ms: float | None = None,
    model: ModelInfo | None = None,
    time: datetime | None = None,
) -> Event:
    """A periodic `summary` event from a stream's verdict."""
    return Event(
        type="summary",
        time=time or utc_now(),
        stream=verdict.stream,
        track=verdict.worst_track,
        state=verdict.state,
        score=_clip01(verdict.max_score),
        frame_pts=frame_pts,
        latency_ms=latency_ms,
        tracks=verdict.tracks,
        counts=dict(verdict.counts),
        fps=fps,
        model=model,
    )


def stream_event(
    stream: str,
    source_state: SourceState,
    reason: str | None = None,
    *,
    state: State = "clear",
    frame_pts: float | None = None,
    time: datetime | None = None,
) -> Event:
    """A `stream` event: the source is connecting / live / reconnecting / failed / ended."""
    return Event(
        type="stream",
        time=time or utc_now(),
        stream=stream,
        state=state,
        source_state=source_state,
        reason=reason,
        frame_pts=frame_pts,
    )


@dataclass(frozen=True)
class FrameTrack:
    """One track as the frame sinks (annotated video, evidence) see it on one frame.

    box: x1, y1, x2, y2 in source-frame pixels; score: smoothed; raw_score: this frame's model score
    (None when the track was not scored on this frame).
    """

    track: int
    box: tuple[float, float, float, float]
    state: State
    score: float | None = None
    raw_score: float | None = None
