"""The monitor's config (`swapwatch watch --config monitor.yaml`): sources, faces, engine, batcher, smoothing, sinks,
and the `server` section that `swapwatch serve` reads.

One YAML file, validated strictly (`StrictModel`: an unknown or misspelt key is an error naming it), in
the sections of the path of one frame (DESIGN.md). Every section has working defaults, so an empty file
(or no file) plus a SOURCE on the command line is a complete config; `configs/monitor.yaml` is the
documented default.

How the effective config is put together (`load_monitor_config`), later steps winning:

1. the model defaults;
2. the YAML file, with `${VAR}` / `${VAR:-default}` in any string replaced from the environment (so an
   RTSP password or a webhook URL holding a token never has to be written into the file);
3. environment overrides for secrets: `SWAPWATCH_WEBHOOK_URL` adds (or replaces the URL of) the first
   webhook, and `SWAPWATCH_WEBHOOK_SECRET` / `SWAPWATCH_WEBHOOK_TOKEN`, when set, become the
   `secret_env` / `token_env` of every webhook that names none. Only the variable's *name* enters the
   config; the webhook sink reads the value when it starts, so `--print-config` cannot leak it;
4. `overrides`: dotted keys from the command line (`--events`, `--annotate`, `--set a.b=value`).

Trade-off: interpolation happens on the raw YAML values, before validation, so `${PORT}` can fill an
integer field (validation converts it) but a variable holding YAML structure is taken as a plain string.

The smoothing section holds only what the user changes: thresholds left unset come from the model's
score calibration (`SmoothingConfig.from_calibration`) once the engine is open, so a recalibrated model
moves the thresholds without touching the config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, create_model, model_validator

from swapwatch.config import StrictModel, load_yaml, parse_config
from swapwatch.engine.batcher_config import BatcherConfig
from swapwatch.engine.metadata import ScoreCalibration
from swapwatch.engine.select import EngineConfig
from swapwatch.errors import ConfigError
from swapwatch.stream.cluster.config import ClusterConfig
from swapwatch.stream.faces.config import DetectorConfig
from swapwatch.stream.redact import redact_secrets
from swapwatch.stream.server.config import ServerConfig
from swapwatch.stream.sinks import SinksConfig
from swapwatch.stream.sinks.console import ConsoleConfig
from swapwatch.stream.sources.config import SourceConfig
from swapwatch.stream.temporal import SmoothingConfig
from swapwatch.stream.tracker import TrackerConfig

ENV_WEBHOOK_URL = "SWAPWATCH_WEBHOOK_URL"
ENV_WEBHOOK_SECRET = "SWAPWATCH_WEBHOOK_SECRET"
ENV_WEBHOOK_TOKEN = "SWAPWATCH_WEBHOOK_TOKEN"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

LIVE_DETECT_EVERY = 3
"""Detector cadence of the live monitor (sooner when a face appears or is lost; the tracker carries faces
between). Lower than a scan's `SCAN_DETECT_EVERY`: a live frame is scored as it arrives, with no later
detection to interpolate towards, so the tracker extrapolates, and that drifts sooner."""


class FacesConfig(StrictModel):
    """Face detection, tracking and alignment, per stream."""

    detector: DetectorConfig = Field(
        default_factory=DetectorConfig, description="Which face detector runs (default: the embedded RetinaFace)."
    )
    detect_every: int = Field(
        LIVE_DETECT_EVERY,
        ge=1,
        le=300,
        description="Run the detector on every Nth frame and track in between (sooner when a face appears or is "
        "lost). 1 detects on every frame: best recall, the most CPU.",
    )
    size: int | None = Field(
        None,
        ge=16,
        description="Aligned crop side in pixels. null: the model's input size (from its sidecar); a value that "
        "differs from the model's is refused at start, since the model only reads its own size.",
    )
    margin: float | None = Field(
        None,
        ge=0.0,
        lt=0.5,
        description="Context around the template face, as a fraction of the crop. null: the model's (from its sidecar).",
    )
    tracker: TrackerConfig = Field(
        default_factory=TrackerConfig, description="How faces keep their identity between detections."
    )


def _optional_fields(model: type[StrictModel]) -> dict[str, Any]:
    """Each field of `model` as optional (default None), keeping its type, bounds and description."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        base = info.annotation
        assert base is not None  # pydantic sets the annotation of every field of a model class
        annotated = Annotated[base, *info.metadata] if info.metadata else base
        fields[name] = (annotated | None, Field(None, description=info.description))
    return fields


_SmoothingBase = create_model(
    "_SmoothingBase", __base__=StrictModel, **_optional_fields(SmoothingConfig)
)


class SmoothingOverrides(_SmoothingBase):
    """The per-track smoother's knobs (see swapwatch.stream.temporal.SmoothingConfig for each one).

    Every field is optional: unset thresholds come from the model's calibration (fpr_0.01 -> suspicious,
    fpr_0.001 -> alert, on the raw score), an enter threshold set without its exit re-derives the exit,
    and the other knobs keep the smoother's defaults.
    """

    def resolve(self, calibration: ScoreCalibration | None = None) -> SmoothingConfig:
        """The full SmoothingConfig for a model with score calibration `calibration` (ConfigError if inconsistent)."""
        values = self.model_dump(exclude_none=True)
        try:
            return SmoothingConfig.from_calibration(calibration, **values)
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            raise ConfigError(f"smoothing: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # pydantic: "1 validation error for X\n  Value error, <message> [type=...]"
    for ln in lines[1:]:
        if ln.startswith("Value error,"):
            return ln.removeprefix("Value error,").split(" [type=")[0].strip()
    return lines[-1] if lines else type(err).__name__


class MonitorConfig(StrictModel):
    """Everything `swapwatch watch` and `swapwatch demo` run with."""

    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Video sources (files, rtsp://, http(s)://, webcams). SOURCE arguments on the command line "
        "replace this list.",
    )
    faces: FacesConfig = Field(default_factory=FacesConfig, description="Face detection, tracking and alignment.")
    engine: EngineConfig = Field(
        default_factory=EngineConfig, description="The deepfake detector: model file and backend (default: embedded)."
    )
    batcher: BatcherConfig = Field(
        default_factory=BatcherConfig,
        description="Crops from all tracks of all streams go through one micro-batcher; unset sizes come from a "
        "short profile of the engine measured at start.",
    )
    smoothing: SmoothingOverrides = Field(
        default_factory=SmoothingOverrides,
        description="Per-track smoothing and hysteresis; unset thresholds come from the model's calibration.",
    )
    sinks: SinksConfig = Field(
        default_factory=lambda: SinksConfig(console=ConsoleConfig()),
        description="Outputs: events file, webhooks, metrics, console, annotated video, evidence clips.",
    )
    summary_interval_s: float = Field(
        5.0, gt=0.0, description="Seconds between periodic per-stream summary events (worst state, top score, fps)."
    )
    stop_timeout_s: float = Field(
        10.0,
        gt=0.0,
        description="At shutdown, seconds the stream tasks get to finish their current frame before they are "
        "cancelled (the sinks then get their own drain/close timeouts).",
    )
    server: ServerConfig = Field(
        default_factory=ServerConfig,
        description="`swapwatch serve` only: listen address, API token and limits, live feed, dashboard.",
    )
    cluster: ClusterConfig | None = Field(
        None, description="`swapwatch serve` only: join a cluster of monitors through NATS JetStream (docs/cluster.md)."
    )

    @model_validator(mode="after")
    def _unique_stream_names(self) -> MonitorConfig:
        seen: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            name = source.resolved_name
            if name in seen:
                raise ValueError(
                    f"sources.{i}.name: stream name {name!r} is also used by sources.{seen[name]}; "
                    "give the sources distinct `name`s"
                )
            seen[name] = i
        return self


# --- loading ----------------------------------------------------------------------------------------------


def interpolate_env(data: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of `data` (nested dicts and lists).

    Raises ConfigError naming the field and the variable when a variable without default is unset.
    `$${` is not special; write values containing a literal `${` through an environment variable.
    """
    if isinstance(data, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where or '<config>'}: environment variable {name} is not set (used as ${{{name}}})")

        return _VAR.sub(sub, data)
    if isinstance(data, dict):
        return {k: interpolate_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate_env(v, env, f"{where}.{i}" if where else str(i)) for i, v in enumerate(data)]
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `data["a"]["b"]["c"] = value` for key "a.b.c", creating mappings on the way.

    A numeric part indexes a list (`sources.0.name`). Raises ConfigError naming the key when the path
    runs into something that is not a mapping or list, or an index is out of range.
    """
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise ConfigError(f"override {key!r}: empty key")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: no such list item (the list has {len(node)})")
            if last:
                node[int(part)] = value
            else:
                if node[int(part)] is None:
                    node[int(part)] = {}
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"{where}: cannot set a field inside a {type(node).__name__}")


def parse_set_option(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML: numbers, booleans, null, lists, strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. smoothing.alert_enter=0.9")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _apply_secret_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    sinks = data.get("sinks")
    if sinks is None:
        sinks = data["sinks"] = {"console": {}}
    if not isinstance(sinks, dict):
        return  # validation will name it
    hooks = sinks.get("webhooks")
    url = env.get(ENV_WEBHOOK_URL)
    if url:
        if not hooks:
            hooks = sinks["webhooks"] = [{"url": url}]
        elif isinstance(hooks, list) and isinstance(hooks[0], dict):
            hooks[0]["url"] = url
    if not isinstance(hooks, list):
        return
    for hook in hooks:
        if not isinstance(hook, dict):
            continue
        if env.get(ENV_WEBHOOK_SECRET) and not hook.get("secret_env"):
            hook["secret_env"] = ENV_WEBHOOK_SECRET
        if env.get(ENV_WEBHOOK_TOKEN) and not hook.get("token_env"):
            hook["token_env"] = ENV_WEBHOOK_TOKEN


def monitor_config_from_dict(
    data: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
) -> MonitorConfig:
    """Validate a config mapping after env interpolation, secret env overrides and dotted `overrides`.

    An empty `sinks` section in the mapping keeps the console on only when the mapping does not mention
    `sinks` at all (the default); a file that lists its sinks gets exactly those.
    """
    env = os.environ if env is None else env
    raw = interpolate_env(dict(data or {}), env)
    _apply_secret_env(raw, env)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return parse_config(MonitorConfig, raw, source=source)


def load_monitor_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> MonitorConfig:
    """The effective monitor config: defaults, the YAML at `path` (if any), environment, then `overrides`.

    `overrides` maps dotted keys to values, e.g. {"sinks.jsonl.path": "out.jsonl", "sources": [...]}.
    Raises ConfigError (exit 2) naming the file and every bad field.
    """
    data = load_yaml(path) if path is not None else {}
    return monitor_config_from_dict(data, overrides, env=env, source=str(path) if path is not None else "<defaults>")


def effective_config_dict(cfg: MonitorConfig) -> dict[str, Any]:
    """The config as JSON-ready data (`GET /api/config`), through `redact_secrets`: URL credentials
    masked, the server token shown as `**********`, TURN credentials, header values and any other
    secret-named field as `***`, secrets that come from the environment only as variable names."""
    data: dict[str, Any] = redact_secrets(cfg.model_dump(mode="json", by_alias=False))
    return data


def effective_config_yaml(cfg: MonitorConfig) -> str:
    """The config as YAML for `--print-config`: every field with its value, secrets redacted as in
    `effective_config_dict`.

    Paths print as strings; secrets that come from the environment appear only as variable names.
    """
    return yaml.safe_dump(effective_config_dict(cfg), sort_keys=False, default_flow_style=False, width=120)
