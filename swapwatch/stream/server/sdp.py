"""SDP for WHIP: checks an offer must pass before aiortc parses it, and the edits made to the answer.

Plain text functions on the SDP (no aiortc objects), so they are tested on their own and reused by the
WHIP ingest (whip.py) and its clients.
"""

from __future__ import annotations

import re


class OfferError(ValueError):
    """An SDP offer the server refuses (HTTP 400); the message says why."""


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([A-Za-z0-9-]+)/90000", re.IGNORECASE)
_VIDEO_CODECS = {"vp8", "vp9", "h264", "av1", "h265"}


def check_offer(sdp: str) -> None:
    """Raise OfferError unless `sdp` looks like an SDP offer with a video section (before aiortc parses it)."""
    lines = [line.strip() for line in sdp.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("v="):
        raise OfferError("not an SDP offer: it must start with 'v=0'")
    media = [line for line in lines if line.startswith("m=")]
    if not media:
        raise OfferError("not an SDP offer: no media section (m= line)")
    if not any(line.startswith("m=video ") for line in media):
        kinds = ", ".join(sorted({line[2:].split(" ", 1)[0] for line in media}))
        raise OfferError(f"no video in the offer (it has {kinds}): swapwatch watches video")
    check_mids(lines)


def check_mids(lines: list[str]) -> None:
    """Each media section has at most one a=mid, mids are unique, and a BUNDLE group names only them.

    aiortc accepts offers that break these and then fails while answering (an AttributeError deep in its
    transport setup), so they are refused here with the reason.
    """
    sections: list[list[str]] = []
    session_attrs: list[str] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        elif line.startswith("a=mid:") and sections:
            sections[-1].append(line[len("a=mid:"):].strip())
        elif not sections:
            session_attrs.append(line)
    if any(len(mids) > 1 for mids in sections):
        raise OfferError("malformed SDP offer: a media section has more than one a=mid line")
    mids = [m[0] for m in sections if m]
    if len(set(mids)) != len(mids):
        raise OfferError("malformed SDP offer: two media sections share one a=mid")
    for line in session_attrs:
        if line.startswith("a=group:"):
            named = line.split()[1:]
            missing = [m for m in named if m not in mids]
            if missing:
                raise OfferError(f"malformed SDP offer: its group names media ids it does not have ({', '.join(missing)})")


def answer_video_codec(sdp: str) -> str | None:
    """The codec of the first payload type of the first video section (what the sender will use), e.g. 'VP8'."""
    first: str | None = None
    in_video = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            if first is not None:
                break
            in_video = line.startswith("m=video ")
            parts = line.split()
            first = parts[3] if in_video and len(parts) > 3 else None
        elif in_video and first is not None and line.startswith(f"a=rtpmap:{first} "):
            return line.split(" ", 1)[1].split("/", 1)[0]
    return None


def add_bitrate_hints(sdp: str, *, start_kbps: int | None, min_kbps: int | None, max_kbps: int | None) -> str:
    """The SDP with Chrome's x-google bitrate parameters on every video codec's fmtp line (added when missing).

    Retransmission (rtx), FEC and other non-codec payload types are left alone.
    """
    params = [
        f"x-google-{key}-bitrate={value}"
        for key, value in (("start", start_kbps), ("min", min_kbps), ("max", max_kbps))
        if value is not None
    ]
    if not params:
        return sdp
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    out: list[str] = []
    in_video = False
    codec_pts: set[str] = set()
    fmtp_seen: set[str] = set()
    pending: list[tuple[int, str]] = []  # (index in out after the rtpmap, payload type) needing a new fmtp line

    def flush() -> None:
        for index, pt in reversed(pending):
            if pt not in fmtp_seen:
                out.insert(index, f"a=fmtp:{pt} {';'.join(params)}")
        pending.clear()

    for line in lines:
        if line.startswith("m="):
            flush()
            in_video = line.startswith("m=video ")
            codec_pts.clear()
            fmtp_seen.clear()
        elif in_video:
            m = _RTPMAP.match(line)
            if m and m.group(2).lower() in _VIDEO_CODECS:
                codec_pts.add(m.group(1))
                out.append(line)
                pending.append((len(out), m.group(1)))
                continue
            if line.startswith("a=fmtp:"):
                pt, _, rest = line[len("a=fmtp:"):].partition(" ")
                if pt in codec_pts:
                    fmtp_seen.add(pt)
                    kept = [p for p in rest.split(";") if p and not p.strip().startswith("x-google-")]
                    line = f"a=fmtp:{pt} {';'.join(kept + params)}"
        out.append(line)
    flush()
    return eol.join(out)
