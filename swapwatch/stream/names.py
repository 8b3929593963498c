"""Stream names: the one rule every stream name follows, wherever it comes from.

A name is 1-128 ASCII characters: letters, digits and `.`, `_`, `-`, `:`, `@`, starting with a letter
or a digit. That keeps every name

- addressable: it is one path segment of `/api/streams/{name}` and `/whip/{name}` (no `/`, no
  whitespace or control character that a request line cannot carry, and far below aiohttp's 8 KB
  request-line limit);
- safe as a folder name (evidence): no `/`, and never `.`, `..` or a hidden `.name`;
- readable in logs, metrics labels and events (no control characters, no look-alike Unicode letters).

`StreamName` validates it in pydantic models (source configs); `check_stream_name` is the same check
for plain code (WHIP); `to_stream_name` turns any text (a file stem, a URL's host and path) into a
valid name, so names derived from URLs always pass.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

STREAM_NAME_MAX = 128
"""Longest stream name, in characters."""

STREAM_NAME_RULE = (
    f"1-{STREAM_NAME_MAX} characters: ASCII letters, digits, '.', '_', '-', ':' or '@', starting with a letter "
    "or a digit"
)
"""The rule, as error messages state it."""

_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{STREAM_NAME_MAX - 1}}}")
_NOT_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:@-]+")


def is_stream_name(text: str) -> bool:
    """True when `text` is a valid stream name."""
    return _NAME.fullmatch(text) is not None


def check_stream_name(text: str) -> str:
    """`text` when it is a valid stream name; ValueError stating the rule otherwise."""
    if not is_stream_name(text):
        shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
        raise ValueError(f"stream name {shown}: use {STREAM_NAME_RULE}")
    return text


def to_stream_name(text: str, fallback: str = "stream") -> str:
    """A valid stream name made from `text`: each run of other characters becomes `_`, leading symbols
    are dropped and the result is cut to STREAM_NAME_MAX; `fallback` when nothing usable is left."""
    name = _NOT_NAME_CHARS.sub("_", text).lstrip("._:@-")[:STREAM_NAME_MAX].rstrip("_")
    return name if is_stream_name(name) else check_stream_name(fallback)


StreamName = Annotated[str, AfterValidator(check_stream_name)]
"""A validated stream name (see the module docstring) for pydantic models."""
