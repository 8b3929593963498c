"""What is safe to show: configs with their secrets masked, and caller-sent text escaped for log lines.

    redact_secrets({"username": "u", "credential": "pw", "url": "rtsp://a:b@cam/x"})
    # {"username": "u", "credential": "***", "url": "rtsp://a:***@cam/x"}
    log.info("api: stream %s added", log_text(name))   # 'cam\\nFORGED' stays on one line

`redact_secrets` is the one redaction every shown config goes through (`GET /api/config`,
`--print-config`, the `config` a log line might quote):

- a value under a key that names a secret is masked whole: `token`, `secret`, `password`, `passwd`,
  `pwd`, `credential(s)`, `key` (so `api_key`, `X-Api-Key`), `auth`, `authorization`, `cookie`,
  `signature`. Keys are split on `_` and `-` and compared part by part, so `keyframe` or `tokens_per_s`
  are not secrets. Booleans and nulls stay (`server.auth: true` says nothing secret);
- a key ending in `_env` holds the *name* of an environment variable, not its value (how webhook
  tokens and HMAC secrets are configured), so it stays readable;
- any other string that is a URL with credentials (`user:pw@`, a bare `TOKEN@`, `?token=...`) gets
  them masked by `mask_url`, whatever its key: a webhook URL, a header value, an FFmpeg option;
- user names (TURN `username`, the user of an RTSP URL) are shown: they tell which account is meant,
  and without the password they open nothing;
- a value masked already (`**********`, how pydantic dumps a `SecretStr`) is left as it is.

`log_text` is for text a caller chose (request paths and headers, stream names, URLs, SDP fields)
on its way into a log line: backslashes and every non-printable character (newline, CR, NUL, ESC,
bidi overrides, the surrogates that non-UTF-8 bytes decode to) are written as Python escapes, and the
text is cut to `limit` characters with a count of what was left out. So a `%0A` in a path or a
newline in a stream name cannot forge a log line, and a megabyte header cannot flood the log.
"""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY_PARTS: frozenset[str] = frozenset(
    {"token", "secret", "password", "passwd", "pwd", "credential", "credentials", "key", "apikey", "auth",
     "authorization", "cookie", "signature"}
)
"""Parts of a key (split on `_` and `-`, case-insensitive) that make its value a secret."""

LOG_TEXT_LIMIT = 200
"""Characters of caller text a log line keeps by default."""

_KEY_SPLIT = re.compile(r"[_\-\s.]+")


def is_secret_key(key: object) -> bool:
    """True for a config/header key whose value is a secret (see the module docstring); False for `*_env`."""
    parts = [p for p in _KEY_SPLIT.split(str(key).lower()) if p]
    if not parts or parts[-1] == "env":
        return False
    return any(p in SECRET_KEY_PARTS for p in parts)


def _masked_already(value: str) -> bool:
    return bool(value) and set(value) == {"*"}


def _mask_all(value: Any, mask: str) -> Any:
    if isinstance(value, dict):
        return {k: _mask_all(v, mask) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_all(v, mask) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and (not value or _masked_already(value)):
        return value
    return mask


def redact_secrets(data: Any) -> Any:
    """`data` (JSON-like: dicts, lists, scalars) with secrets masked; a new object, `data` is not changed."""
    # Imported here: the sources package logs through log_text, so this module must not import it at load.
    from swapwatch.stream.sources.config import MASK, mask_url, url_secrets

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _mask_all(v, MASK) if is_secret_key(k) else walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, str) and "://" in value and url_secrets(value):
            return mask_url(value)
        return value

    return walk(data)


def log_text(value: object, limit: int = LOG_TEXT_LIMIT) -> str:
    """`value` as text fit for one log line: non-printable characters and backslashes escaped, at most
    `limit` characters of it kept (the rest counted)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if "\\" in text or not text.isprintable():
        text = "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
                       for c in text)
    return text + (f"...(+{cut} chars)" if cut > 0 else "")
