"""Trainable detectors and the factory that builds one from its config.

`ModelConfig` is a pydantic union discriminated by `method`: "masm" (MASMConfig) or "airl" (AIRLConfig).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from swapwatch.config import format_validation_error
from swapwatch.errors import ConfigError
from swapwatch.train.models.airl import AIRLConfig, AIRLDetector
from swapwatch.train.models.base import Detector, DetectorOutput, ScoreModel
from swapwatch.train.models.masm import MASMConfig, MASMDetector

ModelConfig = Annotated[MASMConfig | AIRLConfig, Field(discriminator="method")]

__all__ = [
    "AIRLConfig",
    "AIRLDetector",
    "Detector",
    "DetectorOutput",
    "MASMConfig",
    "MASMDetector",
    "ModelConfig",
    "ScoreModel",
    "build_model",
    "parse_model_config",
]


def parse_model_config(data: dict[str, Any], source: str = "<model config>") -> MASMConfig | AIRLConfig:
    """Validate a `model:` mapping into MASMConfig or AIRLConfig (by `method`), else ConfigError."""
    try:
        return TypeAdapter(ModelConfig).validate_python(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def build_model(cfg: MASMConfig | AIRLConfig) -> Detector:
    """Instantiate the detector a validated model config describes."""
    if isinstance(cfg, MASMConfig):
        return MASMDetector(cfg)
    if isinstance(cfg, AIRLConfig):
        return AIRLDetector(cfg)
    raise ConfigError(f"model.method {getattr(cfg, 'method', None)!r}: expected 'masm' or 'airl'")
