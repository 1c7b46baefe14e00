"""The web page in headless Chromium with a fake microphone playing a wav file: it connects, streams the microphone as
Ogg Opus, and plays and shows the model's reply as it arrives.

Needs Debian's `chromium` (apt-get install chromium) and Playwright's Python package, which drives that system browser
(Playwright's own browser downloads are never used); skipped when either is missing.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import soundfile
from chat_helpers import server_process

from moshi.server.demo_checkpoint import calibration_audio

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium binary (apt-get install chromium)")

TALK_TIMEOUT_MS = 60_000
STATS = {name: f"Number(document.getElementById('stat-{name}').textContent)" for name in ("sent", "received", "text")}


def fake_microphone(folder: Path) -> Path:
    path = folder / "microphone.wav"
    soundfile.write(path, calibration_audio(10.0, 48000, seed=6), 48000, subtype="PCM_16")
    return path


def talk_in_chromium(chromium: object, url: str, microphone: Path, screenshot: Path) -> dict[str, object]:
    """Open the page, press Start, wait for reply audio and text, take a screenshot, press Stop."""
    problems: list[str] = []
    browser = chromium.launch(executable_path=CHROMIUM, args=[
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}", "--autoplay-policy=no-user-gesture-required"])
    page = browser.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto(url)
    page.click("#toggle")
    page.wait_for_function("document.body.dataset.state === 'connected'", timeout=TALK_TIMEOUT_MS)
    page.wait_for_function(f"{STATS['sent']} >= 3 && {STATS['received']} >= 2.5 && {STATS['text']} >= 5",
                           timeout=TALK_TIMEOUT_MS)
    page.screenshot(path=screenshot)
    transcript = page.inner_text("#transcript")
    page.click("#toggle")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=TALK_TIMEOUT_MS)
    seen = {"problems": problems, "transcript": transcript, "error": page.inner_text("#error")}
    browser.close()
    return seen


def test_the_page_talks_with_the_model(demo_checkpoint: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright's Python package")
    screenshot = tmp_path / "server_page.png"
    flags = ["--hf-repo", str(demo_checkpoint), "--device", "cpu"]
    with server_process(flags) as server, sync_api.sync_playwright() as playwright:
        seen = talk_in_chromium(playwright.chromium, server.url, fake_microphone(tmp_path), screenshot)
    print(f"screenshot: {screenshot}")
    assert seen["problems"] == [] and seen["error"] == ""
    assert str(seen["transcript"]).strip()
    summary = next(line for line in server.log.splitlines() if "conversation with 127.0.0.1" in line)
    frames_in = int(re.search(r"(\d+) frames in", summary).group(1))
    assert frames_in >= 30, summary  # the microphone's audio reached the model (3 s at least)
    assert "protocol error" not in summary, summary
