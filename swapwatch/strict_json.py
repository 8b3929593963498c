"""Values made fit for strict JSON, for every report and API response the project writes, and JSON
read from callers with its nesting bounded (`loads_request_json`)."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_REQUEST_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a request body; the project's own bodies nest 3 deep."""


class JsonBodyError(ValueError):
    """A request body that is not acceptable JSON; the message says why (for a 400). `parse_error` is
    the parser's own message when the body is not JSON at all (None when it only nests too deeply)."""

    def __init__(self, message: str, parse_error: str | None = None) -> None:
        super().__init__(message)
        self.parse_error = parse_error


def loads_request_json(body: bytes | str, *, max_depth: int = MAX_REQUEST_JSON_DEPTH) -> Any:
    """Parse a request body as JSON; JsonBodyError when it is not UTF-8, not JSON, or nests deeper than
    `max_depth` (an empty body is None).

    Python's parser recurses once per level and raises RecursionError near 1000 levels, which would
    otherwise escape as a 500; bodies under that still go through the depth check, so the handlers
    and pydantic behind them only ever see shallow data.
    """
    try:
        data = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JsonBodyError(f"not valid JSON: {err}", str(err)) from None
    except RecursionError:
        raise JsonBodyError(f"JSON nested too deeply: at most {max_depth} levels of arrays and objects") from None
    if _depth_over(data, max_depth):
        raise JsonBodyError(f"JSON nested too deeply: at most {max_depth} levels of arrays and objects")
    return data


def _depth_over(data: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > max_depth:
                return True
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


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
