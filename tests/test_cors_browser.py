"""CORS as a browser enforces it: a page served from another origin (another port of 127.0.0.1)
plays an avatar straight from its worker and through the manager's relay, makes it speak and asks
whether it speaks; with API_TOKEN set and that origin not listed, the browser refuses the page's
calls to both."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from harness.browser import chromium, screenshot, watch_video
from harness.processes import wait_for

PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>another site</title>
<video id="relay" autoplay playsinline muted></video>
<video id="direct" autoplay playsinline muted></video>
<script>
async function post(url, body) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body)});
  return {status: response.status, body: await response.json()};
}
// LiveTalking's client in a few lines: offer, answer, play.
async function connect(base, id) {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.addTransceiver("audio", {direction: "recvonly"});
  const video = document.getElementById(id);
  pc.ontrack = (event) => {
    if (!video.srcObject) video.srcObject = new MediaStream();
    video.srcObject.addTrack(event.track);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    setTimeout(resolve, 5000);
    if (pc.iceGatheringState === "complete") resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
  });
  const answer = await post(base + "/offer", {sdp: pc.localDescription.sdp, type: "offer"});
  if (answer.status !== 200) throw new Error(JSON.stringify(answer));
  await pc.setRemoteDescription({sdp: answer.body.sdp, type: answer.body.type});
  (window.peers = window.peers || []).push(pc);
  return answer.body.sessionid;
}
// What a fetch with the token gets: a status, or the browser's refusal.
async function attempt(url, token) {
  try {
    const response = await fetch(url, {headers: {Authorization: "Bearer " + token}});
    return "status " + response.status;
  } catch (error) {
    return error.name + ": " + error.message;
  }
}
</script>
"""


@pytest.fixture
def other_site():
    """http://127.0.0.1:PORT/ serving PAGE: an origin of its own (another port is another origin)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def call(browser, script: str, *args):
    """Run an async page function: `script` is an expression of a promise over args[0..]."""
    result = browser.execute_async_script(
        f"const done = arguments[arguments.length - 1]; const args = arguments;"
        f"({script}).then(done, (error) => done('error: ' + error.message));", *args)
    assert not (isinstance(result, str) and result.startswith("error: ")), result
    return result


def test_a_page_of_another_origin_plays_and_drives_an_avatar_directly_and_through_the_relay(fleet, other_site):
    m = fleet()
    relayed = m.url + "/avatar/demo"
    with chromium() as browser:
        browser.get(other_site + "/")
        sessions = {"relay": call(browser, "connect(args[0], 'relay')", relayed)}   # starts the avatar too
        direct = f"http://127.0.0.1:{m.info('demo')['port']}"
        sessions["direct"] = call(browser, "connect(args[0], 'direct')", direct)
        for element, base in (("relay", relayed), ("direct", direct)):
            seen = watch_video(browser, element)
            assert seen["width"] == 512 and seen["frames"] >= 20, (element, seen)
            said = call(browser, "post(args[0] + '/human', {sessionid: args[1], text: 'Hello from elsewhere.'})",
                        base, sessions[element])
            assert said == {"status": 200, "body": {"code": 0, "msg": "ok"}}
            wait_for(lambda: call(browser, "post(args[0] + '/is_speaking', {sessionid: args[1]})", base,
                                  sessions[element])["body"]["data"] is True, 10, f"the {element} session to speak")
        screenshot(browser, "cors_other_origin")
        # The relayed session holds its connection; an offer made to the worker itself is not counted.
        assert m.info("demo")["connections"] == 1


def test_with_a_token_an_unlisted_origin_is_refused_by_the_browser(fleet, other_site):
    m = fleet(API_TOKEN="s3cret")
    started = m.start_avatar("demo_user_1", "demo")
    worker = f"http://127.0.0.1:{started.json()['data']['port']}"
    with chromium() as browser:
        browser.get(other_site + "/")
        for url in (m.url + "/avatar/list", m.url + "/avatar/demo/is_speaking", worker + "/health"):
            assert call(browser, "attempt(args[0], args[1])", url, "s3cret") == "TypeError: Failed to fetch", url
        logs = " ".join(e["message"] for e in browser.get_log("browser"))
        assert "blocked by CORS policy" in logs
    # Not a dead server: the same call from outside a browser is answered.
    assert requests.get(m.url + "/avatar/list", headers=m.headers, timeout=10).status_code == 200
    assert requests.get(worker + "/health", timeout=10).status_code == 200


def test_with_a_token_a_listed_origin_is_let_in(fleet, other_site):
    m = fleet(API_TOKEN="s3cret", CORS_ORIGINS=other_site)
    worker = f"http://127.0.0.1:{m.start_avatar('demo_user_1', 'demo').json()['data']['port']}"
    with chromium() as browser:
        browser.get(other_site + "/")
        assert call(browser, "attempt(args[0], args[1])", m.url + "/avatar/list", "s3cret") == "status 200"
        assert call(browser, "attempt(args[0], args[1])", m.url + "/avatar/list", "wrong") == "status 401"
        assert call(browser, "attempt(args[0], args[1])", worker + "/health", "s3cret") == "status 200"
