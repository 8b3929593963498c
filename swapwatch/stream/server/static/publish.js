// swapwatch publish page: this browser's camera -> the monitor, over WebRTC with WHIP (RFC 9725).
//
// Flow: getUserMedia -> RTCPeerConnection (no ICE servers: host candidates only, like the server) ->
// sendonly video transceiver -> createOffer -> wait for ICE gathering to complete (the server does not
// take trickled candidates) -> POST the SDP to /whip or /whip/NAME with `Authorization: Bearer TOKEN` ->
// 201 with the SDP answer and a Location -> setRemoteDescription. Stop sends DELETE to that Location.
//
// The token is typed once and kept in sessionStorage under the dashboard's key (gone when the tab
// closes); it is only ever sent in the Authorization header, never in a URL.
// `degradationPreference = "maintain-resolution"` asks the browser to drop frames rather than
// resolution when bandwidth is short: the detector needs pixels on the face more than it needs 30 fps.
// The page's state is mirrored on <body data-state> (idle, connecting, live, stopped, error) so tests
// and scripts can wait for it.
"use strict";

const TOKEN_KEY = "swapwatch.token";
const GATHER_TIMEOUT_MS = 5000;
const $ = (sel) => document.querySelector(sel);

let pc = null;
let media = null;
let location_ = null;
let statsTimer = null;
let lastBytes = null;

function setState(state, detail = "") {
  document.body.dataset.state = state;
  $("#status").dataset.state = state;
  $("#status").textContent = state;
  $("#detail").textContent = detail;
  $("#start").disabled = state === "connecting" || state === "live";
  $("#stop").disabled = !(state === "connecting" || state === "live");
}

function showError(message) {
  $("#error").textContent = message;
  setState("error", "");
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

function waitForGathering(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (peer.iceGatheringState === "complete") {
        peer.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    peer.addEventListener("icegatheringstatechange", done);
    // Some networks never finish gathering (an unreachable interface): go with what we have.
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

function refusal(status, body) {
  const detail = body.trim().split("\n")[0];
  const hints = {
    401: "the server refused the token",
    409: "a stream of this name is already being published",
    413: "the offer is larger than the server accepts",
    415: "the server did not take the offer's content type",
    503: "the server is full or shutting down; try again later",
  };
  return `${hints[status] || "the server refused the offer"} (HTTP ${status}${detail ? ": " + detail : ""})`;
}

async function start(event) {
  event.preventDefault();
  $("#error").textContent = "";
  const typed = $("#token").value.trim();
  if (typed) sessionStorage.setItem(TOKEN_KEY, typed);
  $("#token").value = "";
  const name = $("#stream").value.trim();
  const [width, height] = $("#size").value.split("x").map(Number);
  const endpoint = new URL(name ? "/whip/" + encodeURIComponent(name) : "/whip", window.location.href);
  setState("connecting", "opening the camera");
  try {
    media = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 30 } },
      audio: false,
    });
  } catch (err) {
    showError("camera: " + (err.message || err.name));
    return;
  }
  $("#preview").srcObject = media;
  const track = media.getVideoTracks()[0];
  track.contentHint = "detail";
  pc = new RTCPeerConnection({ iceServers: [] });
  pc.addEventListener("connectionstatechange", onConnectionState);
  const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
  try {
    const params = transceiver.sender.getParameters();
    params.degradationPreference = "maintain-resolution";
    await transceiver.sender.setParameters(params);
  } catch (err) {
    // Not every browser takes it before negotiation; the bitrate hints in the answer still help.
  }
  try {
    setState("connecting", "gathering network candidates");
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    setState("connecting", "sending the offer");
    const response = await fetch(endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...authHeaders() },
      body: pc.localDescription.sdp,
    });
    const body = await response.text();
    if (response.status !== 201) throw new Error(refusal(response.status, body));
    const where = response.headers.get("Location");
    if (!where) throw new Error("the server answered without a Location header");
    location_ = new URL(where, endpoint).href;
    await pc.setRemoteDescription({ type: "answer", sdp: body });
    $("#n-session").textContent = location_;
    $("#n-stream").textContent = name || "(named by the server)";
    setState("connecting", "connecting media");
    statsTimer = setInterval(updateStats, 1000);
  } catch (err) {
    await teardown(false);
    showError(err.message || String(err));
  }
}

function onConnectionState() {
  if (!pc) return;
  const state = pc.connectionState;
  if (state === "connected") setState("live", "publishing");
  else if (state === "failed") {
    teardown(true).then(() => showError("the WebRTC connection failed (network or firewall)"));
  } else if (state === "disconnected") setState("connecting", "connection interrupted");
}

async function updateStats() {
  if (!pc) return;
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      $("#n-frames").textContent = s.framesSent ?? s.framesEncoded ?? 0;
      if (s.frameWidth) $("#n-size").textContent = `${s.frameWidth}x${s.frameHeight} at ${Math.round(s.framesPerSecond || 0)} fps`;
      if (lastBytes !== null && s.bytesSent >= lastBytes) {
        $("#n-bitrate").textContent = `${Math.round(((s.bytesSent - lastBytes) * 8) / 1000)} kbit/s`;
      }
      lastBytes = s.bytesSent;
    }
  });
}

async function teardown(sendDelete) {
  clearInterval(statsTimer);
  statsTimer = null;
  lastBytes = null;
  const where = location_;
  location_ = null;
  if (sendDelete && where) {
    try {
      await fetch(where, { method: "DELETE", headers: authHeaders() });
    } catch (err) {
      // The server is gone: nothing to end there.
    }
  }
  if (pc) pc.close();
  pc = null;
  if (media) media.getTracks().forEach((t) => t.stop());
  media = null;
  $("#preview").srcObject = null;
}

async function stop() {
  await teardown(true);
  setState("stopped", "the session was ended");
}

document.addEventListener("DOMContentLoaded", () => {
  $("#publish").addEventListener("submit", start);
  $("#stop").addEventListener("click", stop);
  const params = new URLSearchParams(window.location.search);
  if (params.get("stream")) $("#stream").value = params.get("stream");
  if (params.get("size")) $("#size").value = params.get("size");
  if (sessionStorage.getItem(TOKEN_KEY)) $("#token").placeholder = "(token remembered for this tab)";
  setState("idle");
});

// Closing the tab: end the session on the server too (keepalive lets the request outlive the page).
window.addEventListener("pagehide", () => {
  if (location_) fetch(location_, { method: "DELETE", headers: authHeaders(), keepalive: true });
});
