"""The web console at / in headless Chromium, against a real manager, real workers and a real
voice: what a person sees and hears, checked on real pixels and real audio, not on what the page
says about itself. Each test leaves a screenshot in artifacts/."""
from __future__ import annotations

import time

import numpy as np
import requests
from PIL import Image
from selenium.webdriver.common.by import By

from conftest import ROOT
from harness.avatars import make_avatar
from harness.browser import chromium, screenshot, watch_video
from harness.processes import wait_for
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
        assert js(browser, "return document.querySelector('#transcript li').textContent") == text
        assert js(browser, "return document.getElementById('text').value") == ""

        browser.find_element(By.ID, "interrupt").click()
        # The level meter falls by itself within ~2 s of silence; the speech had ~8 s left.
        until(browser, "document.getElementById('level').value < 0.02", 4, "silence after the interrupt")


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
        # The answer is shown too, from the worker's events relayed by the manager.
        reply = "document.querySelector('#transcript li.reply')"
        until(browser, f"{reply}?.textContent === {CHAT_REPLY!r}", 10, "the reply as text")
        assert js(browser, "return document.querySelector('#transcript li:nth-child(2)').textContent") == \
            "What can you do?"
        assert js(browser, f"return getComputedStyle({reply}).direction") == "ltr"
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
        reply = "document.querySelector('#transcript li.reply')"
        until(browser, f"{reply}?.textContent === {CHAT_REPLY_FA!r}", 10, "the Persian reply as text")
        assert js(browser, f"return getComputedStyle({reply}).direction") == "rtl"
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
        assert browser.find_element(By.CSS_SELECTOR, "#transcript li").text == text
        assert js(browser, "return getComputedStyle(document.querySelector('#transcript li')).direction") == "rtl"
        screenshot(browser, "console_persian")

        # Back to English, kept for the next visit.
        browser.find_element(By.CSS_SELECTOR, "#language option[value=en]").click()
        assert js(browser, "return document.documentElement.dir") == "ltr"
        assert browser.find_element(By.ID, "speak").text == "Speak"
        # The page is left-to-right now, yet Persian text in it is not (dir="auto"): the checks
        # above, made in an rtl page, would pass by inheritance alone.
        assert js(browser, "return getComputedStyle(document.querySelector('#transcript li')).direction") == "rtl"
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
