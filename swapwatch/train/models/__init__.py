"""Trainable detectors and the factory that builds one from its config.

`ModelConfig` is a pydantic discriminated union on `method` ("masm" | "airl"). AIRL lives in
`swapwatch.train.models.airl` and is imported lazily (on first use of `ModelConfig`, `AIRLConfig`,
`AIRLDetector` or `build_model` with method "airl"), so importing this package never pulls in one
method's dependencies for another, and airl.py may import from this package's submodules without an
import cycle.

Until airl.py exists in a checkout, `ModelConfig` degrades to MASMConfig alone (a logged warning); any
other import error from airl.py propagates.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, TypeAdapter

from swapwatch.config import format_validation_error
from swapwatch.errors import ConfigError
from swapwatch.train.models.base import Detector, DetectorOutput, ScoreModel
from swapwatch.train.models.masm import MASMConfig, MASMDetector

if TYPE_CHECKING:  # pragma: no cover
    from swapwatch.train.models.airl import AIRLConfig, AIRLDetector

    ModelConfig = Annotated[Union[MASMConfig, AIRLConfig], Field(discriminator="method")]

__all__ = [
    "Detector",
    "DetectorOutput",
    "ScoreModel",
    "MASMConfig",
    "MASMDetector",
    "AIRLConfig",
    "AIRLDetector",
    "ModelConfig",
    "build_model",
    "parse_model_config",
]

log = logging.getLogger(__name__)
_cache: dict[str, Any] = {}


def _airl_module() -> Any | None:
    try:
        from swapwatch.train.models import airl
    except ModuleNotFoundError as err:
        if err.name != "swapwatch.train.models.airl":
            raise
        return None
    return airl


def _model_config_type() -> Any:
    if "ModelConfig" not in _cache:
        airl = _airl_module()
        if airl is None:
            log.warning("swapwatch.train.models.airl is missing: ModelConfig accepts method 'masm' only")
            _cache["ModelConfig"] = MASMConfig
        else:
            _cache["ModelConfig"] = Annotated[
                Union[MASMConfig, airl.AIRLConfig], Field(discriminator="method")
            ]
    return _cache["ModelConfig"]


def __getattr__(name: str) -> Any:  # PEP 562: lazy AIRL symbols
    if name == "ModelConfig":
        return _model_config_type()
    if name in ("AIRLConfig", "AIRLDetector"):
        airl = _airl_module()
        if airl is None:
            raise AttributeError(f"{name}: swapwatch.train.models.airl is not available")
        return getattr(airl, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_model_config(data: dict[str, Any], source: str = "<model config>") -> Any:
    """Validate a `model:` mapping into MASMConfig or AIRLConfig (by `method`), else ConfigError."""
    from pydantic import ValidationError

    try:
        return TypeAdapter(_model_config_type()).validate_python(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def build_model(cfg: "ModelConfig") -> Detector:
    """Instantiate the detector a validated model config describes."""
    if isinstance(cfg, MASMConfig):
        return MASMDetector(cfg)
    if getattr(cfg, "method", None) == "airl":
        airl = _airl_module()
        if airl is None:
            raise ConfigError("model.method 'airl': swapwatch.train.models.airl is not available")
        return airl.AIRLDetector(cfg)
    raise ConfigError(f"model.method {getattr(cfg, 'method', None)!r}: expected 'masm' or 'airl'")
