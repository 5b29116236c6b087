"""The web console at / in headless Chromium, against a real manager, real workers and a real
voice: what a person sees and hears, checked on real pixels and real audio, not on what the page
says about itself. Each test leaves a screenshot in artifacts/."""
from __future__ import annotations

import time

import numpy as np
import requests
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import ROOT
from harness.avatars import make_avatar
from harness.browser import chromium, fake_microphone, screenshot, watch_video
from harness.processes import wait_for
from harness.speech import speech_wav
from upstreams import CHAT_REPLY, CHAT_REPLY_FA


def js(browser, script: str):
    return browser.execute_script(script)


def until(browser, script: str, timeout: float = 20, what: str = ""):
    """Poll a JavaScript expression until it is truthy; on timeout, say what the page showed."""
    deadline = time.monotonic() + timeout
    while True:
        value = js(browser, f"return ({script})")
        if value:
            return value
        if time.monotonic() > deadline:
            shown = js(browser, "return document.getElementById('notice').innerText + ' | ' "
                                "+ document.getElementById('connection').innerText")
            logs = [e["message"] for e in browser.get_log("browser") if e["level"] != "DEBUG"]
            raise AssertionError(f"timed out waiting for {what or script}; the page shows {shown!r}; console: {logs}")
        time.sleep(0.1)


def connected(browser) -> None:
    until(browser, "document.getElementById('connection').dataset.state === 'connected' "
                   "&& document.getElementById('video').videoWidth > 0", what="the avatar to play")


def level(browser) -> float:
    return float(js(browser, "return document.getElementById('level').value"))


def caption(role: str) -> str:
    """A JavaScript expression: the conversation's newest line of `role` (user or avatar), or undefined."""
    return f"[...document.querySelectorAll('#captions li[data-role={role}]')].at(-1)"


def words(role: str) -> str:
    """A JavaScript expression: the text of that line, without its marks."""
    return f"{caption(role)}?.querySelector('.words').textContent"


def mic_level(browser) -> float:
    return float(js(browser, "return document.getElementById('mic-level').value"))


def connections(m, name: str = "demo") -> int:
    found = m.get(f"/avatar/info/{name}")
    return found.json()["data"]["connections"] if found.status_code == 200 else 0


def test_the_gallery_lists_the_demo_avatar_with_its_preview(fleet):
    m = fleet()
    with chromium() as browser:
        browser.get(m.url + "/")
        until(browser, "document.querySelector('[data-avatar=demo] img')?.naturalWidth > 0", what="the preview")
        screenshot(browser, "console_gallery")
        names = js(browser, "return [...document.querySelectorAll('#gallery .card')].map(c => c.dataset.avatar)")
        assert names == ["demo"]
        assert js(browser, "return document.querySelector('[data-avatar=demo] img').naturalWidth") == 512
        # No LLM_URL: chat is offered but disabled, with the reason.
        chat = browser.find_element(By.CSS_SELECTOR, "#mode option[value=chat]")
        assert not chat.is_enabled() and "LLM_URL" in chat.get_attribute("title")
        # A click starts it: one connection, a RUNNING instance, frames on screen.
        browser.find_element(By.CSS_SELECTOR, "[data-avatar=demo]").click()
        connected(browser)
        assert connections(m) == 1


def test_autostart_plays_real_frames_and_the_closed_page_gives_its_connection_back(fleet):
    m = fleet(IDLE_TIMEOUT="60")
    with chromium() as browser:
        browser.get(m.url + "/?avatar=demo&autostart=1")
        connected(browser)
        seen = watch_video(browser)
        screenshot(browser, "console_autostart")
        assert (seen["width"], seen["height"]) == (512, 512)
        assert seen["frames"] >= 40 and seen["advanced"] > 1.5     # ~25 fps for 2 s, media time moving
        assert 60 < seen["mean"] < 200 and seen["std"] > 30        # the portrait, not a black or flat frame
        assert connections(m) == 1
        assert js(browser, "return document.getElementById('video').paused") is False

        browser.get("about:blank")  # the page closes
        wait_for(lambda: connections(m) == 0, 10, "the closed page to disconnect")
        instance = m.get("/avatar/info/demo").json()["data"]
        assert instance["state"] == "RUNNING"   # warm for IDLE_TIMEOUT, for the next viewer


def test_typed_text_makes_the_avatar_speak_and_interrupt_silences_it(fleet):
    m = fleet()
    with chromium() as browser:
        browser.get(m.url + "/?avatar=demo&autostart=1")
        connected(browser)
        time.sleep(1)
        idle = []
        for _ in range(10):  # a second of the meter while nobody speaks
            idle.append(level(browser))
            time.sleep(0.1)
        assert max(idle) < 0.02, f"the idle avatar is not silent (levels {idle})"

        text = ("Hello, I am the demo avatar. I can say anything you type. "
                "This sentence is long so that there is time to interrupt it before it ends.")
        browser.find_element(By.ID, "text").send_keys(text)
        browser.find_element(By.ID, "speak").click()
        until(browser, "document.getElementById('level').value > 0.1", 10, "the avatar's voice")
        screenshot(browser, "console_speaking")
        assert js(browser, f"return {words('user')}") == text
        until(browser, f"{words('avatar')} === {text!r}", 5, "the line repeated, as it is spoken")
        assert js(browser, "return document.getElementById('text').value") == ""

        browser.find_element(By.ID, "interrupt").click()
        # The level meter falls by itself within ~2 s of silence; the speech had ~8 s left.
        until(browser, "document.getElementById('level').value < 0.02", 4, "silence after the interrupt")
        until(browser, f"{caption('avatar')}.dataset.interrupted === 'true'", 4, "the cut line marked")
        assert js(browser, f"return {caption('avatar')}.querySelector('.cut').textContent") == "interrupted"


def test_chat_mode_speaks_the_llms_answer(fleet, upstream):
    llm = upstream("openai")
    m = fleet(LLM_URL=llm.url + "/v1", LLM_MODEL="tiny-chat")
    with chromium() as browser:
        browser.get(m.url + "/?avatar=demo&autostart=1")
        connected(browser)
        chat = browser.find_element(By.CSS_SELECTOR, "#mode option[value=chat]")
        assert chat.is_enabled()
        chat.click()
        browser.find_element(By.ID, "text").send_keys("What can you do?")
        browser.find_element(By.ID, "speak").click()
        until(browser, "document.getElementById('level').value > 0.1", 10, "the spoken answer")
        asked = requests.get(llm.url + "/last", timeout=5).json()
        assert asked["model"] == "tiny-chat" and asked["messages"][-1] == {"role": "user", "content": "What can you do?"}
        # The answer is shown too, from the worker's events on the session's data channel.
        until(browser, f"{words('avatar')} === {CHAT_REPLY!r} && {caption('avatar')}.dataset.final === 'true'", 10,
              "the reply as text")
        assert js(browser, "return [...document.querySelectorAll('#captions li')].map(li => li.dataset.role)") == \
            ["user", "avatar"]
        assert js(browser, f"return {words('user')}") == "What can you do?"
        assert js(browser, f"return getComputedStyle({caption('avatar')}).direction") == "ltr"
        screenshot(browser, "console_chat_caption")


def test_a_persian_chat_reply_is_shown_right_to_left(fleet, upstream):
    llm = upstream("openai", "--mode", "fa")
    m = fleet(LLM_URL=llm.url + "/v1")
    with chromium() as browser:
        browser.get(m.url + "/?avatar=demo&autostart=1")   # an English page: the direction is the text's own
        connected(browser)
        browser.find_element(By.CSS_SELECTOR, "#mode option[value=chat]").click()
        browser.find_element(By.ID, "text").send_keys("سلام")
        browser.find_element(By.ID, "speak").click()
        until(browser, f"{words('avatar')} === {CHAT_REPLY_FA!r}", 10, "the Persian reply as text")
        assert js(browser, f"return getComputedStyle({caption('avatar')}).direction") == "rtl"
        assert js(browser, "return document.documentElement.dir") == "ltr"
        screenshot(browser, "console_chat_caption_persian")


def test_the_console_in_persian_is_right_to_left_and_speaks_persian(fleet):
    m = fleet()
    with chromium() as browser:
        browser.get(m.url + "/?lang=fa&avatar=demo&autostart=1")
        connected(browser)
        assert js(browser, "return [document.documentElement.dir, document.documentElement.lang]") == ["rtl", "fa"]
        assert browser.find_element(By.CSS_SELECTOR, "nav a[data-tab=talk]").text == "گفتگو"
        assert browser.find_element(By.ID, "speak").text == "بگو"
        text = "سلام، من آواتار نمایشی هستم."
        field = browser.find_element(By.ID, "text")
        field.send_keys(text)
        assert js(browser, "return getComputedStyle(document.getElementById('text')).direction") == "rtl"
        browser.find_element(By.ID, "speak").click()
        until(browser, "document.getElementById('level').value > 0.1", 10, "Persian speech")
        assert js(browser, f"return {words('user')}") == text
        assert js(browser, f"return getComputedStyle({caption('user')}).direction") == "rtl"
        screenshot(browser, "console_persian")

        # Back to English, kept for the next visit.
        browser.find_element(By.CSS_SELECTOR, "#language option[value=en]").click()
        assert js(browser, "return document.documentElement.dir") == "ltr"
        assert browser.find_element(By.ID, "speak").text == "Speak"
        # The page is left-to-right now, yet Persian text in it is not (dir="auto"): the checks
        # above, made in an rtl page, would pass by inheritance alone.
        assert js(browser, f"return getComputedStyle({caption('user')}).direction") == "rtl"
        field.clear()
        field.send_keys(text)
        assert js(browser, "return getComputedStyle(document.getElementById('text')).direction") == "rtl"
        field.clear()
        field.send_keys("Hello")
        assert js(browser, "return getComputedStyle(document.getElementById('text')).direction") == "ltr"


def test_the_operator_view_shows_the_instance_restarts_it_and_a_stop_empties_it(fleet):
    m = fleet()
    started = m.start_avatar("demo_user_1", "demo").json()["data"]
    with chromium() as browser:
        browser.get(m.url + "/#operate")
        row = "document.querySelector('#instances tr[data-avatar=demo]')"
        until(browser, f"{row}?.innerText.includes('RUNNING')", what="the instance's row")
        cells = js(browser, f"return [...{row}.cells].map(c => c.innerText)")
        assert cells[:5] == ["demo", "RUNNING", str(started["port"]), "CPU", "1"]
        assert cells[6] == "0"   # restarts
        assert "espeak" in js(browser, "return document.querySelector('#tts tr[data-model=espeak]').innerText")
        assert "running" in js(browser, "return document.querySelector('#tts tr[data-model=espeak]').innerText")
        assert "No GPU" in browser.find_element(By.ID, "gpus").text
        screenshot(browser, "console_operate")

        js(browser, f"{row}.querySelector('[data-action=restart]').click()")
        until(browser, f"{row}?.cells[6].innerText === '1' && {row}.innerText.includes('RUNNING')", 30,
              "the restart to show")
        assert m.get("/avatar/info/demo").json()["data"]["pid"] != started["pid"]

        js(browser, f"{row}.querySelector('[data-action=stop]').click()")
        alert = browser.switch_to.alert   # it has a connection: the page asks first
        assert "demo" in alert.text
        alert.accept()
        until(browser, "!document.getElementById('no-instances').hidden", 30, "the empty table")
        screenshot(browser, "console_operate_stopped")
        assert m.get("/avatar/list").json()["count"] == 0


def test_an_upload_registers_an_avatar_and_a_bad_picture_gets_its_reasons(fleet, tmp_path):
    m = fleet()
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((480, 480, 3), 128, np.uint8)).save(blank)
    with chromium() as browser:
        browser.get(m.url + "/#add")
        until(browser, "document.querySelectorAll('#voice option').length > 1", what="the voice models")

        browser.find_element(By.ID, "file").send_keys(str(blank))
        browser.find_element(By.ID, "name").send_keys("wall")
        browser.find_element(By.ID, "upload").click()
        until(browser, "!document.getElementById('report').hidden", 30, "the refusal")
        assert "cannot make an avatar" in browser.find_element(By.ID, "report-title").text
        assert "no face" in browser.find_element(By.ID, "report-reasons").text
        screenshot(browser, "console_add_refused")

        browser.find_element(By.ID, "name").clear()
        browser.find_element(By.ID, "file").send_keys(str(ROOT / "assets" / "astronaut.png"))
        browser.find_element(By.ID, "name").send_keys("astronaut")
        browser.find_element(By.NAME, "description").send_keys("Our first astronaut")
        browser.find_element(By.ID, "upload").click()
        until(browser, "document.getElementById('report-title').innerText.includes('astronaut is ready')", 60,
              "the registration")
        until(browser, "document.getElementById('report-preview').naturalWidth > 0", what="the preview")
        assert "good" in browser.find_element(By.ID, "report-title").text
        assert browser.find_element(By.ID, "report-metrics").text  # what was measured
        screenshot(browser, "console_add_registered")

        names = {a["name"]: a for a in m.get("/avatar/avatars").json()["data"]}
        assert names["astronaut"]["registered"] and names["astronaut"]["description"] == "Our first astronaut"
        assert "wall" not in names
        browser.find_element(By.ID, "report-talk").click()
        until(browser, "!document.getElementById('stage').hidden", what="the stage")
        assert browser.find_element(By.ID, "avatar-name").text == "astronaut"


def test_a_full_fleet_and_a_broken_worker_are_explained(fleet):
    m = fleet("other", MAX_AVATARS="1")
    make_avatar(m.data_dir, "broken")  # a config.json and no frames: its worker exits at once
    notice = "document.getElementById('notice')"
    with chromium() as browser:
        browser.get(m.url + "/?avatar=broken&autostart=1")
        until(browser, f"!{notice}.hidden", 30, "the failure")
        assert browser.find_element(By.ID, "notice-title").text == "The avatar could not be started."
        assert js(browser, "return document.querySelector('#notice pre').textContent").startswith(
            "avatar 'broken' failed to start")
        assert js(browser, "return document.getElementById('connection').dataset.state") == "failed"
        screenshot(browser, "console_worker_failed")

        assert m.start_avatar("other_user_1", "other").status_code == 200
        browser.get(m.url + "/?avatar=demo&autostart=1")
        until(browser, f"!{notice}.hidden", 30, "the capacity message")
        assert "All avatar slots are in use" in browser.find_element(By.ID, "notice-title").text
        assert "MAX_AVATARS=1" in js(browser, "return document.querySelector('#notice pre').textContent")
        screenshot(browser, "console_capacity")
    assert [i["real_avatar_name"] for i in m.get("/avatar/list").json()["data"] if i["state"] != "FAILED"] == ["other"]
    assert connections(m, "other") == 1


def test_with_an_api_token_the_page_asks_for_it(fleet):
    m = fleet(API_TOKEN="s3cret")
    with chromium() as browser:
        browser.get(m.url + "/")
        until(browser, "!document.getElementById('token-form').hidden", what="the token form")
        assert js(browser, "return document.querySelectorAll('#gallery .card').length") == 0
        browser.find_element(By.ID, "token").send_keys("s3cret")
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        until(browser, "document.querySelector('[data-avatar=demo] img')?.naturalWidth > 0", what="the gallery")
        assert js(browser, "return document.getElementById('token-form').hidden") is True
        browser.get(m.url + "/?avatar=demo&autostart=1")   # remembered
        connected(browser)
        screenshot(browser, "console_token")


def test_a_network_that_blocks_webrtc_is_explained_and_the_connection_given_back(manager):
    """The fake worker answers the offer with a real SDP answer whose candidates all point at a
    loopback UDP port that reads and never answers: what a browser sees when a firewall drops UDP
    between it and the worker (and no packet leaves this machine)."""
    m = manager(start=False, WORKER_MODULE="tests.fake_worker", WEBRTC_CONNECT_TIMEOUT="3", IDLE_TIMEOUT="60")
    make_avatar(m.data_dir, "walled", fault="unreachable")
    m.start()
    with chromium() as browser:
        browser.get(m.url + "/?avatar=walled&autostart=1")
        until(browser, "document.getElementById('connection').dataset.state === 'connecting'", what="the offer")
        until(browser, "!document.getElementById('notice').hidden", 15, "the WebRTC failure")
        assert browser.find_element(By.ID, "notice-title").text.startswith("The video could not connect.")
        assert js(browser, "return document.getElementById('connection').dataset.state") == "failed"
        screenshot(browser, "console_webrtc_blocked")
        wait_for(lambda: connections(m, "walled") == 0, 10, "the page to give its connection back")
    # The browser did try the candidates: its connectivity checks reached the port and died there.
    worker = requests.get(f"http://127.0.0.1:{m.info('walled')['port']}/health", timeout=5).json()
    assert worker["dropped_datagrams"] > 0


def test_a_refused_microphone_is_explained_and_typing_still_works(fleet):
    m = fleet()
    with chromium("--use-fake-device-for-media-stream", "--deny-permission-prompts") as browser:  # "Block"
        browser.get(m.url + "/?avatar=demo&autostart=1")
        connected(browser)
        mic = browser.find_element(By.ID, "mic")
        assert (mic.get_attribute("data-state"), mic.text) == ("off", "Microphone")
        assert js(browser, "return document.getElementById('notice').hidden")   # not asked for at connect
        mic.click()
        until(browser, "document.getElementById('mic').dataset.state === 'refused'", 10, "the refusal")
        assert mic.text == "Microphone blocked"
        assert browser.find_element(By.ID, "notice-title").text.startswith("The microphone was not allowed.")
        screenshot(browser, "console_mic_refused")

        browser.find_element(By.ID, "text").send_keys("Typing still works.")
        browser.find_element(By.ID, "speak").click()
        until(browser, "document.getElementById('level').value > 0.1", 10, "the avatar's voice")


# The fake microphone says "What is the weather like?" (harness.speech.SENTENCE) from 2 s after it
# opens, and again every ~5 s; pocketsphinx hears at least "weather" in it.
HEARD = "weather"
LONG_TEXT = ("I am going to talk for a long time now, so that whoever listens to me has plenty of time "
             "to say something and cut me off before this sentence is over.")


def test_speech_is_heard_repeated_and_cuts_the_avatar_off(fleet, tmp_path):
    m = fleet()   # no LLM: what is said is repeated
    with chromium(*fake_microphone(speech_wav(tmp_path / "speech.wav"))) as browser:
        browser.get(m.url + "/?avatar=demo&autostart=1")
        connected(browser)
        assert js(browser, "return document.getElementById('mode').value") == "echo"
        browser.find_element(By.ID, "mic").click()   # hands-free
        until(browser, "document.getElementById('mic').dataset.state === 'on'", 10, "the microphone on")
        until(browser, "document.getElementById('mic-level').value > 0.1", 10, "the microphone's level")

        until(browser, f"{caption('user')}?.dataset.final === 'true' && {words('user')}.includes({HEARD!r})", 20,
              "the speech recognised")
        said = js(browser, f"return {words('user')}")
        until(browser, f"{words('avatar')} === {said!r}", 10, "the avatar repeating it")
        until(browser, "document.getElementById('level').value > 0.1", 10, "the repetition heard")

        # Something long to say, which the microphone's next sentence cuts off (barge-in is on)...
        browser.find_element(By.ID, "text").send_keys(LONG_TEXT)
        browser.find_element(By.ID, "speak").click()
        long_line = f"[...document.querySelectorAll('#captions li[data-role=avatar]')]" \
                    f".findLast(li => li.querySelector('.words').textContent === {LONG_TEXT!r})"
        until(browser, f"{long_line}?.dataset.interrupted === 'true'", 15, "the long text cut off")
        # ...and what cut it off is heard and repeated in turn.
        heard = f"[...document.querySelectorAll('#captions li[data-role=user][data-final=true]')]" \
                f".filter(li => li.textContent.includes({HEARD!r})).length"
        until(browser, f"{heard} >= 2", 15, "the next sentence")
        js(browser, "document.getElementById('captions').scrollIntoView()")
        screenshot(browser, "console_mic_conversation")

        # Barge-in off while the microphone is on: the worker reads it from the offer, so a new
        # session takes it. The sentence is heard again while the long text is said, and cuts nothing.
        browser.find_element(By.ID, "barge-in").click()
        connected(browser)
        assert js(browser, "return document.getElementById('mic').dataset.state") == "on"
        browser.find_element(By.ID, "text").send_keys(LONG_TEXT)
        browser.find_element(By.ID, "speak").click()
        until(browser, long_line, 10, "the long text said again")
        before = js(browser, f"return {heard}")
        until(browser, f"{heard} > {before}", 15, "a sentence heard while the avatar talks")
        assert js(browser, f"return {long_line}.dataset.interrupted") is None


def test_push_to_talk_in_chat_mode_asks_the_llm_and_the_answer_is_heard(fleet, upstream, tmp_path):
    llm = upstream("openai")
    m = fleet(LLM_URL=llm.url + "/v1")
    with chromium(*fake_microphone(speech_wav(tmp_path / "speech.wav"))) as browser:
        browser.get(m.url + "/?avatar=demo&autostart=1")
        connected(browser)
        assert js(browser, "return document.getElementById('mode').value") == "chat"   # with an LLM
        # The space bar, held with the focus outside any text field: the microphone is on while held.
        ActionChains(browser).key_down(Keys.SPACE).perform()
        until(browser, "document.getElementById('mic').dataset.state === 'ptt'", 10, "push-to-talk")
        until(browser, "document.getElementById('mic-level').value > 0.1", 10, "the sentence")
        until(browser, "document.getElementById('mic-level').value < 0.02", 10, "the sentence's end")
        time.sleep(1)   # some of the silence after it, then let go
        ActionChains(browser).key_up(Keys.SPACE).perform()
        assert js(browser, "return document.getElementById('mic').dataset.state") == "off"

        until(browser, f"{caption('user')}?.dataset.final === 'true'", 20, "the speech recognised")
        said = js(browser, f"return {words('user')}")
        assert HEARD in said
        until(browser, f"{words('avatar')} === {CHAT_REPLY!r} && {caption('avatar')}.dataset.final === 'true'", 10,
              "the LLM's answer")
        assert requests.get(llm.url + "/last", timeout=5).json()["messages"][-1] == {"role": "user", "content": said}
        until(browser, "document.getElementById('level').value > 0.1", 10, "the answer heard")
        until(browser, "document.getElementById('level').value < 0.02", 15, "the answer's end")
        # Let go, the microphone sends silence: the sentence it says again is not heard, and the
        # answer was not cut off.
        time.sleep(3)
        assert mic_level(browser) < 0.01
        assert js(browser, "return document.querySelectorAll('#captions li[data-role=user]').length") == 1
        assert js(browser, f"return {caption('avatar')}.dataset.interrupted") is None
        screenshot(browser, "console_push_to_talk")


# Feeds events to the page's own captions module; each line back as [role, final, interrupted, text, direction].
_CONVERSATION = """
const [events, done] = [arguments[0], arguments[arguments.length - 1]];
import("/static/captions.js").then(({ Conversation }) => {
  const list = document.createElement("ol");
  document.body.append(list);
  const conversation = new Conversation(list);
  for (const [name, data] of events) {
    if (name === "typed") conversation.typed(data.text);
    else conversation.event(name, data);
  }
  done([...list.children].map((li) => [li.dataset.role, li.dataset.final, li.dataset.interrupted ?? null,
                                       li.querySelector(".words").textContent, getComputedStyle(li).direction]));
});
"""


def test_captions_follow_the_conversation_and_mark_what_was_cut_off(manager):
    m = manager()
    with chromium() as browser:
        browser.get(m.url + "/")
        lines = browser.execute_async_script(_CONVERSATION, [
            ["speech_started", {"barge_in": False}],
            ["transcript_partial", {"text": "what is"}],
            ["transcript_partial", {"text": "what is the weather"}],
            ["speech_ended", {"seconds": 1.3, "ignored": False}],
            ["transcript", {"text": "what is the weather today"}],
            ["reply", {"delta": "Sunny"}], ["reply", {"delta": " all day."}],
            ["reply_end", {"text": "Sunny all day."}],
            ["text", {"kind": "chat", "text": "Sunny all day."}],    # shown already, as it streamed
            ["speaking_started", {}], ["speaking_ended", {"interrupted": False}],
            ["speech_started", {"barge_in": False}], ["speech_ended", {"seconds": 0.4, "ignored": False}],
            ["transcript", {"text": ""}],                             # nothing recognised: no line
            ["speech_started", {"barge_in": False}],
            ["speech_ended", {"seconds": 0.1, "ignored": True}],      # too short to be a turn: no line
            # Two sentences in a row: the second begins before the first one's final words come.
            ["speech_started", {"barge_in": False}], ["transcript_partial", {"text": "one"}],
            ["speech_ended", {"seconds": 0.5, "ignored": False}],
            ["speech_started", {"barge_in": False}], ["transcript_partial", {"text": "three"}],
            ["transcript", {"text": "one two"}],
            ["speech_ended", {"seconds": 0.5, "ignored": False}],
            ["transcript", {"text": "three four"}],
            ["speech_started", {"barge_in": False}], ["transcript_partial", {"text": "five"}],
            ["speech_ended", {"seconds": 0.5, "ignored": False}],
            ["error", {"message": "speech recognition failed: the server went away"}],   # no words: no line
            ["typed", {"text": "سلام"}],
            ["text", {"kind": "echo", "text": "سلام"}],
            ["speaking_started", {}],
            ["speech_started", {"barge_in": True}],
            ["speaking_ended", {"interrupted": True}],
            ["transcript_partial", {"text": "stop"}],
        ])
    assert lines == [
        ["user", "true", None, "what is the weather today", "ltr"],
        ["avatar", "true", None, "Sunny all day.", "ltr"],
        ["user", "true", None, "one two", "ltr"],
        ["user", "true", None, "three four", "ltr"],
        ["user", "true", None, "سلام", "rtl"],
        ["avatar", "true", "true", "سلام", "rtl"],
        ["user", "false", None, "stop", "ltr"],
    ]
