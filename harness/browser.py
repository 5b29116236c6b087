"""Headless Chromium driven by Selenium, with the flags that work in this sandbox (PLATFORM.md)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns", "--window-size=800,900",
]


@contextmanager
def chromium(*extra_flags: str):
    os.environ["SE_OFFLINE"] = "true"  # Selenium must never try to download a browser
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, *extra_flags, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for failures
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def fake_microphone(wav: Path) -> list[str]:
    """Chromium's flags for a microphone that plays `wav` over and over from when the page opens
    it, granted without asking."""
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}"]


# Counts the frames the <video> decodes for two seconds and samples its picture through a canvas.
_WATCH = """
const done = arguments[arguments.length - 1];
const video = document.getElementById(arguments[0]);
let frames = 0;
const count = () => { frames++; video.requestVideoFrameCallback(count); };
video.requestVideoFrameCallback(count);
const t0 = video.currentTime;
setTimeout(() => {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0, sumSq = 0;
  for (let i = 0; i < pixels.length; i += 4) { const g = (pixels[i] + pixels[i+1] + pixels[i+2]) / 3; sum += g; sumSq += g * g; }
  const n = pixels.length / 4, mean = sum / n;
  done({frames, width: video.videoWidth, height: video.videoHeight, advanced: video.currentTime - t0,
        mean, std: Math.sqrt(sumSq / n - mean * mean), session: window.avatarSession});
}, 2000);
"""


def watch_video(driver, element_id: str = "video") -> dict:
    """Two seconds of the playing video: frames decoded, size, media time advanced, mean and
    spread of its grey levels (a black or flat frame has a spread near 0)."""
    return driver.execute_async_script(_WATCH, element_id)


def screenshot(driver, name: str) -> Path:
    """artifacts/NAME.png, kept by CI for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
