"""Stream URLs as a closed contract, what API callers may add, and stream names (issue 10, "Hardening").

- The URL decides the kind; `kind` may only repeat it. Only file paths/file://, rtsp(s)://, http(s)://
  and the webcam forms are read: every other FFmpeg protocol is refused, naming `url`.
- API callers set no raw FFmpeg option by default and never a dangerous one; network sources may not
  reach loopback, private or link-local addresses unless the server's config makes an exception; files
  only under `server.file_roots`, and outside them one answer whatever is (or is not) on the disk.
- One stream-name rule for configs, the API and WHIP; derived names always follow it; evidence folders
  never leave their parent.

Real parts: the source config model, the real resolver, FFmpeg (PyAV) for the protocol whitelist, and a
real `serve_monitor` app on a loopback port with the reference model, talked to over TCP.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.names import STREAM_NAME_MAX, is_stream_name, to_stream_name
from swapwatch.stream.server.api import _validation_fields
from swapwatch.stream.server.config import ServerConfig
from swapwatch.stream.server.source_access import OUTSIDE_FILE_ROOTS, SourceRefused, check_api_source
from swapwatch.stream.sinks.evidence import safe_name
from swapwatch.stream.sources import SourceConfig, build_options, open_source
from tests.fuzzing import examples
from tests.stream.conftest import collect, run_async
from tests.stream.server.conftest import ServerThread, server_config

PUBLIC_IP = "203.0.113.7"
"""TEST-NET-3: a public address that routes nowhere, so nothing is ever reached."""


def refused_fields(data: dict[str, Any]) -> list[str]:
    """The fields the API names for an invalid source config ([] when it is valid)."""
    try:
        SourceConfig.model_validate(data)
    except ValidationError as err:
        return [f["field"] for f in _validation_fields(err)]
    return []


def api_check(data: dict[str, Any], **server: Any) -> SourceConfig:
    """check_api_source on a valid config, with a server config built from `server`."""
    return asyncio.run(check_api_source(SourceConfig.model_validate(data), ServerConfig(**server)))


def api_refusal(data: dict[str, Any], **server: Any) -> SourceRefused:
    with pytest.raises(SourceRefused) as info:
        api_check(data, **server)
    return info.value


# --- the URL decides the kind --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "resolved"),
    [
        ("clip.mp4", None, "file"),
        ("clip.mp4", "file", "file"),
        ("./cam:1.mp4", None, "file"),
        ("file:///videos/a.mp4", "file", "file"),
        ("file://localhost/videos/a.mp4", None, "file"),
        ("rtsp://cam/live", "rtsp", "rtsp"),
        ("rtsps://cam/live", "rtsp", "rtsp"),
        ("http://cdn.example/live.m3u8", None, "http"),
        ("https://cdn.example/a.mp4", "http", "http"),
        ("/dev/video0", "webcam", "webcam"),
        ("0", None, "webcam"),
        ("v4l2:///dev/v4l/by-id/usb-cam-video-index0", "webcam", "webcam"),
    ],
)
def test_a_kind_that_agrees_with_the_url_is_accepted(url: str, kind: str | None, resolved: str) -> None:
    assert SourceConfig.model_validate({"url": url, "kind": kind}).resolved_kind == resolved


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("clip.mp4", "rtsp"),
        ("/etc/passwd", "http"),
        ("file:///etc/passwd", "http"),
        ("file:///etc/passwd", "rtsp"),
        ("rtsp://cam/live", "file"),
        ("http://cdn.example/a.mp4", "rtsp"),
        ("/dev/video0", "file"),
        ("/etc/passwd", "webcam"),
        ("webrtc://cam", "webrtc"),
    ],
)
def test_a_kind_can_never_widen_what_the_url_says(url: str, kind: str) -> None:
    assert refused_fields({"url": url, "kind": kind}) == ["kind"]


DANGEROUS_URLS = [
    "tcp://127.0.0.1:6379",
    "udp://0.0.0.0:1234?listen=1",
    "concat:/etc/passwd|/etc/hosts",
    "concatf:/tmp/list.txt",
    "subfile,,start,0,end,100,,:/etc/passwd",
    "pipe:0",
    "fd:3",
    "data:video/mp4;base64,AAAA",
    "crypto:file:///etc/passwd",
    "crypto+http://cdn.example/x.ts",
    "file:/etc/passwd",
    "cache:http://cdn.example/x.mp4",
    "async:file:/etc/passwd",
    "tee:/tmp/out",
    "hls+http://cdn.example/x.m3u8",
    "tls://cdn.example:443",
    "unix:///run/docker.sock",
    "gopher://cdn.example/",
    "ftp://cdn.example/a.mp4",
    "rtmp://cdn.example/live",
    "srt://cdn.example:9000",
    "rtp://239.0.0.1:5004",
    "rtsp:/cam/live",
    "https:cdn.example/a.mp4",
    "v4l2:///etc/passwd",
    "v4l2:///dev/../etc/passwd",
    "file://etc/passwd",
    "rtsp:///live",
    "http://cdn.example:99999/a.mp4",
    "rtsp://cam/live\n",
    "http://127.0.0.1\t.cdn.example/a.mp4",
    "clip\x00.mp4",
]


@pytest.mark.parametrize("url", DANGEROUS_URLS)
def test_only_known_schemes_are_read(url: str) -> None:
    assert refused_fields({"url": url}) == ["url"]
    assert refused_fields({"url": url, "kind": "file"}) == ["url"]  # no kind opens what the URL may not


@pytest.mark.parametrize("url", ["concat:{clip}|{clip}", "subfile,,start,0,end,0,,:{clip}"])
def test_ffmpeg_itself_opens_only_the_kinds_protocols(swap_clip: DemoClip, url: str) -> None:
    """The second wall: what a file source hands FFmpeg carries the file kind's protocol whitelist."""
    target = url.format(clip=swap_clip.path)
    with av.open(target) as container:  # without the whitelist, FFmpeg reads the protocol
        assert container.streams.video
    with pytest.raises(av.error.FFmpegError):
        av.open(target, options=build_options(SourceConfig(url=str(swap_clip.path))))


def test_a_file_named_like_a_protocol_is_read_as_a_file(
    swap_clip: DemoClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path("./pipe:0.mp4") prints as "pipe:0.mp4", which FFmpeg alone would read as stdin: it gets file:pipe:0.mp4.
    shutil.copy(swap_clip.path, tmp_path / "pipe:0.mp4")
    monkeypatch.chdir(tmp_path)
    frames, err = run_async(collect(open_source("./pipe:0.mp4", realtime=False)))
    assert err is None and len(frames) == swap_clip.frames


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"protocol_whitelist": "file,http,tcp,concat"}, "set by swapwatch"),
        ({"protocol_blacklist": ""}, "set by swapwatch"),
        ({"": "x"}, "not an FFmpeg option name"),
        ({"user agent": "x"}, "not an FFmpeg option name"),
        ({"user_agent": "a\x00b"}, "NUL"),
    ],
)
def test_no_config_may_set_the_pinned_options(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SourceConfig.model_validate({"url": "rtsp://cam/live", "ffmpeg_options": options})


# --- names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("cam1", True),
        ("lobby.cam_2-east", True),
        ("10.0.0.5:554_live", True),
        ("door@site-b", True),
        ("a..b", True),
        ("x" * STREAM_NAME_MAX, True),
        ("", False),
        (".", False),
        ("..", False),
        (".hidden", False),
        ("-rf", False),
        ("a/b", False),
        ("/etc", False),
        ("a\\b", False),
        ("cam\n", False),
        ("a\nb", False),
        ("a\x00b", False),
        ("a\tb", False),
        ("a b", False),
        ("caf\u00e9", False),
        ("a%2Fb", False),
        ("x" * (STREAM_NAME_MAX + 1), False),
        ("x" * 200, False),
        ("x" * 9000, False),
    ],
)
def test_stream_names(name: str, valid: bool) -> None:
    assert is_stream_name(name) is valid
    assert refused_fields({"url": "clip.mp4", "name": name}) == ([] if valid else ["name"])


@pytest.mark.parametrize(
    "url",
    [
        "/data/lobby cam.mp4",
        "/data/\u00fcber uns.mkv",
        "/data/.hidden.mp4",
        "/data/..mp4",
        "/data/-x.mp4",
        "/",
        "file:///",
        "rtsp://u:pw@10.0.0.5:554/live/cam 1?x=1",
        "rtsp://[::1]:554/a/b",
        "http://cdn.example/",
        "http://cdn.example/" + "x/" * 300 + "a.m3u8",
        "v4l2:///dev/v4l/by-path/pci-0000:00:14.0-usb-0:1:1.0-video-index0",
    ],
)
def test_derived_names_are_valid(url: str) -> None:
    cfg = SourceConfig(url=url)
    assert is_stream_name(cfg.resolved_name), cfg.resolved_name
    assert "pw" not in cfg.resolved_name


@settings(max_examples=examples(200), deadline=None, database=None)
@given(st.text(max_size=300))
def test_any_text_makes_a_valid_name(text: str) -> None:
    assert is_stream_name(to_stream_name(text))


@pytest.mark.parametrize("name", ["..", ".", "a/../../b", "/etc/passwd", "../x", "a\x00b", "", "x" * 300, "\u00e9/.."])
def test_evidence_folders_stay_inside(tmp_path: Path, name: str) -> None:
    folder = safe_name(name)
    assert folder not in ("", ".", "..") and "/" not in folder and "\x00" not in folder and len(folder) <= 128
    assert (tmp_path / folder).resolve().parent == tmp_path.resolve()


# --- what API callers may add: FFmpeg options, hosts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ({"probesize": "32"}, []),
        ({"headers": "X-Forwarded-For: 1\r\n"}, []),
        ({"user_agent": "x"}, ["probesize"]),
        ({"probesize": "32\r\nX: 1"}, ["probesize"]),
    ],
)
def test_api_ffmpeg_options_need_the_servers_allow_list(options: dict[str, str], allowed: list[str]) -> None:
    refusal = api_refusal({"url": f"http://{PUBLIC_IP}/a.m3u8", "ffmpeg_options": options}, api_ffmpeg_options=allowed)
    assert refusal.field == "ffmpeg_options"


def test_an_allow_listed_option_passes() -> None:
    cfg = api_check({"url": f"http://{PUBLIC_IP}/a.m3u8", "ffmpeg_options": {"probesize": "32"}},
                    api_ffmpeg_options=["probesize"])
    assert cfg.ffmpeg_options == {"probesize": "32"}


@pytest.mark.parametrize("name", ["headers", "method", "post_data", "listen", "rtsp_flags", "user_agent",
                                  "protocol_whitelist", "http_proxy", "localport"])
def test_the_server_cannot_allow_dangerous_options(name: str) -> None:
    with pytest.raises(ValidationError, match=name):
        ServerConfig(api_ffmpeg_options=[name])


DENIED_HOSTS = [
    "127.0.0.1", "127.1", "2130706433", "0x7f000001", "localhost", "LOCALHOST.", "[::1]", "0.0.0.0", "0", "[::]",
    "10.1.2.3", "172.16.0.1", "192.168.1.10", "100.64.0.1", "169.254.169.254", "224.0.0.1", "255.255.255.255",
    "[fc00::1]", "[fd12:3456::1]", "[fe80::1]", "[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]", "[::ffff:7f00:1]",
]


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
@pytest.mark.parametrize("host", DENIED_HOSTS)
def test_internal_addresses_are_denied_by_default(scheme: str, host: str) -> None:
    refusal = api_refusal({"url": f"{scheme}://{host}:554/live"})
    assert refusal.field == "url" and "server.denied_networks" in refusal.message


@pytest.mark.parametrize(
    ("host", "server", "allowed"),
    [
        (PUBLIC_IP, {}, True),
        ("[2001:db8::1]", {}, True),
        ("127.0.0.1", {"allowed_networks": ["127.0.0.0/8"]}, True),
        ("[::1]", {"allowed_networks": ["127.0.0.0/8"]}, False),
        ("[::ffff:127.0.0.1]", {"allowed_networks": ["127.0.0.0/8"]}, True),
        ("localhost", {"allowed_networks": ["127.0.0.0/8", "::1/128"]}, True),
        ("localhost", {"allowed_hosts": ["localhost"]}, True),
        ("10.1.2.3", {"allowed_networks": ["10.1.2.0/24"]}, True),
        ("10.1.3.3", {"allowed_networks": ["10.1.2.0/24"]}, False),
        ("cam1.lan", {"allowed_hosts": ["*.lan"]}, True),
        ("cam1.lan.evil.example", {"allowed_hosts": ["*.lan"]}, False),
        ("192.168.1.10", {"denied_networks": []}, True),
        (PUBLIC_IP, {"denied_networks": ["0.0.0.0/0", "::/0"], "allowed_networks": ["10.0.0.0/8"]}, False),
        ("no-such-host.invalid", {}, False),
    ],
)
def test_exceptions_come_from_the_servers_config(host: str, server: dict[str, Any], allowed: bool) -> None:
    data = {"url": f"rtsp://{host}:554/live"}
    if allowed:
        assert api_check(data, **server).url == data["url"]
    else:
        assert api_refusal(data, **server).field == "url"


def test_network_lists_are_validated() -> None:
    with pytest.raises(ValidationError, match="allowed_networks"):
        ServerConfig(allowed_networks=["10.0.0.1/8"])  # host bits set: a typo, not a network


# --- through the real API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(swap_clip: DemoClip, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A file root with the test clip in it, and things outside it: a video, a text file, a folder, a symlink."""
    base = tmp_path_factory.mktemp("roots")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    (outside / "folder").mkdir(parents=True)
    shutil.copy(swap_clip.path, root / "clip.mp4")
    shutil.copy(swap_clip.path, outside / "clip.mp4")
    (outside / "notes.txt").write_text("not a video")
    (root / "escape.mp4").symlink_to(outside / "clip.mp4")
    (root / "alias.mp4").symlink_to(root / "clip.mp4")
    return {"root": root, "outside": outside}


@pytest.fixture(scope="module")
def srv(reference_model: Path, files: dict[str, Path],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server with the default network policy and one file root."""
    cfg = server_config(reference_model, tmp_path_factory.mktemp("contract"), file_roots=[str(files["root"])])
    with ServerThread(cfg) as server:
        yield server


def post(srv: ServerThread, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    reply = srv.http("POST", "/api/streams", json_body=body)
    return reply.status, reply.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "rtsp://cam.example/live", "ffmpeg_options": {"rtsp_flags": "listen"}}, "ffmpeg_options"),
        ({"url": "http://cam.example/a", "ffmpeg_options": {"listen": "1"}}, "ffmpeg_options"),
        ({"url": f"http://{PUBLIC_IP}/a", "ffmpeg_options": {"method": "POST", "post_data": "x"}}, "ffmpeg_options"),
        ({"url": f"http://{PUBLIC_IP}/a", "ffmpeg_options": {"headers": "Host: redis\r\n"}}, "ffmpeg_options"),
        ({"url": f"http://{PUBLIC_IP}/a", "ffmpeg_options": {"user_agent": "x\r\nX-Forged: 1"}}, "ffmpeg_options"),
        ({"url": f"http://{PUBLIC_IP}/a", "ffmpeg_options": {"protocol_whitelist": "file,http"}}, "ffmpeg_options"),
        ({"url": f"rtsp://{PUBLIC_IP}/a", "ffmpeg_options": {"probesize": "32"}}, "ffmpeg_options"),
        ({"url": "/etc/passwd", "kind": "rtsp"}, "kind"),
        ({"url": "file:///etc/passwd", "kind": "http"}, "kind"),
        ({"url": "/dev/video0"}, "kind"),
        ({"url": "rtsp://127.0.0.1:554/live"}, "url"),
        ({"url": "http://localhost:6379/"}, "url"),
        ({"url": "rtsp://[::ffff:127.0.0.1]/live"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "url"),
        ({"url": "clip.mp4", "name": "a\nb"}, "name"),
        ({"url": "clip.mp4", "name": "x" * 200}, "name"),
        ({"url": "clip.mp4", "name": ".."}, "name"),
        *[({"url": url}, "url") for url in DANGEROUS_URLS],
    ],
)
def test_the_api_refuses_and_names_the_field(srv: ServerThread, body: dict[str, Any], field: str) -> None:
    status, reply = post(srv, body)
    assert status == 422, reply
    assert [f["field"] for f in reply["fields"]] == [field]


OUTSIDE_CASES = {
    "a video outside": "{outside}/clip.mp4",
    "a text file": "{outside}/notes.txt",
    "a folder": "{outside}/folder",
    "a missing file": "{outside}/missing.mp4",
    "up and out": "{root}/../outside/clip.mp4",
    "up and out, missing": "{root}/sub/../../outside/missing.mp4",
    "a symlink out": "{root}/escape.mp4",
    "a file URL": "file://{outside}/clip.mp4",
    "a system file": "/etc/passwd",
    "a system folder": "/etc",
    "a device": "/dev/zero",
    "nothing at all": "/no/such/path.mp4",
    "relative": "outside/clip.mp4",
}


def test_files_outside_the_roots_all_get_one_answer(srv: ServerThread, files: dict[str, Path]) -> None:
    replies = {}
    for case, url in OUTSIDE_CASES.items():
        reply = srv.http("POST", "/api/streams", json_body={"url": url.format(**files), "name": "outside"})
        replies[case] = (reply.status, reply.text)
    assert len(set(replies.values())) == 1, replies
    status, text = next(iter(replies.values()))
    assert status == 422 and OUTSIDE_FILE_ROOTS in text


@pytest.mark.parametrize("url", ["{root}/clip.mp4", "{root}/sub/../clip.mp4", "file://{root}/alias.mp4"])
def test_files_inside_the_roots_are_added(srv: ServerThread, files: dict[str, Path], url: str) -> None:
    status, reply = post(srv, {"url": url.format(**files), "name": "inside", "realtime": False})
    assert status == 201, reply
    assert reply["url"] == str((files["root"] / "clip.mp4").resolve())  # opened by its resolved path
    assert srv.http("DELETE", "/api/streams/inside").status == 200


def test_whip_names_follow_the_same_rule(srv: ServerThread) -> None:
    for path in ("/whip/cam%0A", "/whip/..%2F..", "/whip/" + "x" * 200, "/whip/.hidden"):
        reply = srv.http("POST", path, body="v=0\r\n", headers={"Content-Type": "application/sdp"})
        assert reply.status == 400 and "stream name" in reply.text, (path, reply.status, reply.text)


names = st.one_of(
    st.text(max_size=STREAM_NAME_MAX + 20),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,140}", fullmatch=True),
)


@settings(max_examples=examples(50), deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
def test_a_name_is_refused_or_reachable_through_the_api(srv: ServerThread, files: dict[str, Path], name: str) -> None:
    # A missing file inside the root: the stream is added, fails at once (nothing to decode), and stays listed.
    status, reply = post(srv, {"url": str(files["root"] / "missing.mp4"), "name": name})
    if not is_stream_name(name):
        assert status == 422 and [f["field"] for f in reply["fields"]] == ["name"], reply
        return
    assert status == 201, reply
    fetched = srv.http("GET", "/api/streams/" + quote(name, safe=""))
    assert fetched.status == 200 and fetched.json()["name"] == name
    assert srv.http("DELETE", "/api/streams/" + quote(name, safe="")).status == 200
