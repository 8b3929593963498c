"""Values made fit for strict JSON, for every report and API response the project writes."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None, through dicts, lists and tuples.

    Strict JSON has neither, and other tools reject them: a percentile of no samples (a batcher before
    its first batch, a stream with no scored frame) is NaN.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
