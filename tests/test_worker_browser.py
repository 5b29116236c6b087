"""The worker's own page in headless Chromium: real WebRTC, real frames on screen."""
import sys
import time

import pytest
import requests

from harness.avatars import make_avatar
from harness.browser import chromium, screenshot, watch_video
from harness.processes import wait_for


@pytest.fixture
def worker(spawn, tmp_path, demo_source):
    make_avatar(tmp_path, "astro", source=demo_source)
    return spawn([sys.executable, "-m", "lipsync_worker", "--avatar_id", "astro", "--listenport", "{port}"],
                 env={"AVATAR_DATA_DIR": str(tmp_path)})


def test_the_page_plays_the_avatar_and_makes_it_speak(worker):
    with chromium() as browser:
        browser.get(worker.url + "/")
        deadline = time.monotonic() + 20
        while not browser.execute_script("const v = document.getElementById('video'); return v.videoWidth > 0"):
            assert time.monotonic() < deadline, browser.find_element("id", "status").text
            time.sleep(0.1)
        seen = watch_video(browser)
        screenshot(browser, "worker_page")
        assert (seen["width"], seen["height"]) == (512, 512)
        assert seen["frames"] >= 40 and seen["advanced"] > 1.5     # ~25 fps for 2 s, time moving
        assert 60 < seen["mean"] < 200 and seen["std"] > 30        # a picture, not a black or flat frame
        browser.find_element("id", "text").send_keys("Hello from the browser.")
        browser.find_element("css selector", "#say button[type=submit]").click()
        wait_for(lambda: requests.post(worker.url + "/is_speaking", json={"sessionid": seen["session"]},
                                       timeout=5).json()["data"], 5, "the typed text to be spoken")
        assert "Connection: connected" in browser.find_element("id", "status").text
