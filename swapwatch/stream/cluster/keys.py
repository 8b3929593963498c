"""Stream names as NATS KV keys and subject tokens, and back.

Stream names (swapwatch/stream/names.py) may hold `.`, `:` and `@`; KV keys allow only letters, digits
and `-_/=.`, and in a subject `.` separates tokens. So those three characters are written as `=2E`,
`=3A` and `=40` (`=` never occurs in a stream name, so the mapping is reversible), and one stream is
one key and one subject token.
"""

from __future__ import annotations

_ESCAPES = {".": "=2E", ":": "=3A", "@": "=40"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def name_to_token(name: str) -> str:
    """A stream name as one KV key / subject token."""
    return "".join(_ESCAPES.get(ch, ch) for ch in name)


def token_to_name(token: str) -> str:
    """The stream name a token stands for (ValueError on a malformed escape)."""
    out: list[str] = []
    i = 0
    while i < len(token):
        if token[i] == "=":
            code = token[i : i + 3]
            if code not in _UNESCAPES:
                raise ValueError(f"{token!r}: unknown escape {code!r}")
            out.append(_UNESCAPES[code])
            i += 3
        else:
            out.append(token[i])
            i += 1
    return "".join(out)
