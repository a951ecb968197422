"""The live page in a real headless Chromium, served by a real ``edgesight demo`` from the device install.

Debian's chromium and chromedriver (``make services``), driven by selenium from the dev extra; nothing is
downloaded. The daemon runs from the torch-free device venv on real footage with a real bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.daemon.config import SourceConfig
from devices.draw import class_colour
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: A folder to keep the page's screenshot in after the run (CI can upload it); unset, it stays in the test's tmp_path.
ARTEFACTS_ENV = "EDGESIGHT_TEST_ARTEFACTS"
#: The source's default stale_after: the daemon reopens a source silent this long.
STALE_AFTER = SourceConfig.model_fields["stale_after"].default
#: Seconds the page may take past the daemon's frozen_after to show a frozen source (2.4-2.6 s in all, measured).
FROZEN_MARGIN = 2.0
#: What the wheel is built from (setup.cfg's packages, their package data and the metadata's files).
WHEEL_SOURCES = ("toolkit", "devices", "models", "calibration", "setup.cfg", "pyproject.toml", "README.md")

# A counting line across the path most people in vtest.avi walk along, and a zone over its left half.
CONFIG = """\
camera: vtest
zones:
  - name: left
    normalized: true
    points: [[0.0, 0.35], [0.5, 0.35], [0.5, 1.0], [0.0, 1.0]]
line:
  name: path
  normalized: true
  a: [0.25, 0.30]
  b: [0.75, 0.60]
"""


class Demo:
    """``edgesight demo`` in a subprocess of the device venv, on a port of its own."""

    def __init__(self, device_bin: Path, bundle: Path, source: str, workdir: Path, port: int,
                 config: Path | None = None) -> None:
        self.cmd = [str(device_bin / "edgesight"), "demo", "--bundle", str(bundle), "--source", source,
                    "--http", f"127.0.0.1:{port}", "--no-browser"] + (["--config", str(config)] if config else [])
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}/"
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "demo.log"

    def start(self) -> Demo:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"demo exited with {self.proc.returncode}: {self.log.read_text()}"
            try:
                if self.live()["frame"] is not None:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"demo did not serve frames within 60 s: {self.log.read_text()}")

    def live(self) -> dict:
        with urllib.request.urlopen(self.url + "api/live", timeout=5) as response:
            return json.load(response)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make services)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgesight-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def video_png(driver) -> np.ndarray:
    """A screenshot of the video element, as BGR pixels."""
    from selenium.webdriver.common.by import By

    png = driver.find_element(By.ID, "video").screenshot_as_png
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def counts(driver) -> dict[str, tuple[int, int]]:
    """Label -> (now, since start), read in one go (the page re-renders the table on every poll)."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#counts tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def banner(driver) -> str | None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, "banner")
    return element.text if element.is_displayed() else None


@pytest.fixture(scope="module")
def vtest_demo(device_bin, test_bundles, mirror, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    config = workdir / "camera.yaml"
    config.write_text(CONFIG)
    demo = Demo(device_bin, test_bundles / "yolox-nano-tflite-int8", str(mirror / "videos" / "vtest.avi"), workdir,
                free_port(), config).start()
    yield demo
    assert demo.stop() == 0, demo.log.read_text()


def test_page_shows_the_live_annotated_video_and_what_runs(vtest_demo, browser, test_bundles, tmp_path):
    browser.get(vtest_demo.url)
    wait_for(lambda: browser.execute_script("return document.getElementById('video').naturalWidth") > 0, 20,
             "the first frame")
    wait_for(lambda: "yolox-nano-tflite-int8" in text(browser, "bundle"), 10, "the bundle's name")
    manifest = json.loads((test_bundles / "yolox-nano-tflite-int8" / "manifest.json").read_text())
    model = text(browser, "model")
    assert f"{manifest['accuracy']['map']:.3f}" in model and manifest["accuracy"]["runtime"] in model
    assert "tflite int8" in text(browser, "bundle") and "vtest.avi" in text(browser, "source")
    assert "cores" in text(browser, "host")
    assert banner(browser) is None

    # The picture moves: two screenshots of the video a second apart differ.
    first = video_png(browser)
    time.sleep(1.0)
    second = video_png(browser)
    artefacts = Path(os.environ.get(ARTEFACTS_ENV) or tmp_path)
    artefacts.mkdir(parents=True, exist_ok=True)
    shot = artefacts / "demo-page.png"
    assert browser.save_screenshot(str(shot)), shot
    print(f"\nscreenshot of the live page: {shot}")
    assert first.shape == second.shape and first.shape[0] > 200
    assert np.abs(first.astype(np.int16) - second.astype(np.int16)).mean() > 1.0

    # Nothing went wrong in the page itself.
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_counts_events_and_line_update_as_the_video_plays(vtest_demo, browser):
    browser.get(vtest_demo.url)
    wait_for(lambda: counts(browser).get("pedestrian"), 20, "the counts table")
    before = counts(browser)["pedestrian"][1]
    wait_for(lambda: counts(browser)["pedestrian"][1] > before, 30, "more pedestrians since start")
    # The last events, newest first, with their snapshot thumbnails loaded from the daemon.
    from selenium.webdriver.common.by import By

    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#events li img"), 20, "an event with a thumbnail")
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#events li img")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#events li")) <= 20
    wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", thumbs[0]) > 0, 10,
             "the thumbnail to load")
    assert "path" in text(browser, "line")  # the configured counting line has its row of counts


def test_pause_freezes_the_view_not_the_daemon(vtest_demo, browser):
    from selenium.webdriver.common.by import By

    browser.get(vtest_demo.url)
    wait_for(lambda: browser.execute_script("return document.getElementById('video').naturalWidth") > 0, 20,
             "the first frame")
    browser.find_element(By.ID, "pause").click()
    wait_for(lambda: banner(browser) and "paused" in banner(browser).lower(), 5, "the paused banner")
    time.sleep(0.5)
    index = vtest_demo.live()["frame"]["index"]
    first = video_png(browser)
    time.sleep(1.0)
    assert np.array_equal(first, video_png(browser))
    assert vtest_demo.live()["frame"]["index"] > index
    browser.find_element(By.ID, "pause").click()
    # Boxes off: the stream without the overlay (no pixel of the pedestrian colour's filled labels), still moving.
    wait_for(lambda: _overlay_pixels(video_png(browser)) > 200, 10, "boxes on the picture")
    browser.find_element(By.ID, "boxes").click()
    wait_for(lambda: _overlay_pixels(video_png(browser)) < 20, 10, "a picture without boxes")
    first = video_png(browser)
    time.sleep(1.0)
    assert np.abs(first.astype(np.int16) - video_png(browser).astype(np.int16)).mean() > 1.0
    browser.find_element(By.ID, "boxes").click()
    wait_for(lambda: _overlay_pixels(video_png(browser)) > 200, 10, "the boxes back")


def _overlay_pixels(image: np.ndarray) -> int:
    """Pixels of the pedestrian class colour (the filled labels and the box lines): none in vtest.avi itself."""
    return int(np.all(np.abs(image.astype(np.int16) - class_colour(0)) <= 12, axis=2).sum())


def test_frozen_source_shows_as_frozen_within_the_stale_limit(device_bin, test_bundles, mjpeg_stream, browser,
                                                               tmp_path):
    stream = mjpeg_stream()
    time.sleep(1.0)  # ffmpeg listening
    demo = Demo(device_bin, test_bundles / "yolox-nano-tflite-int8", stream.url, tmp_path, free_port()).start()
    try:
        browser.get(demo.url)
        wait_for(lambda: "live" == text(browser, "st-state").split(" ")[0], 20, "a live source")
        assert banner(browser) is None
        source = demo.live()["source"]
        stream.freeze()
        frozen_at = time.monotonic()
        # Within the source's stale_after, before the daemon reconnects...
        wait_for(lambda: banner(browser) and "FROZEN" in banner(browser), STALE_AFTER, "the frozen banner")
        seen_after = time.monotonic() - frozen_at
        # ...and in fact once the daemon's frozen_after has passed, plus the page's 0.5 s poll, that poll's
        # round trip and this test's own polling of the page through webdriver.
        assert seen_after < source["frozen_after"] + FROZEN_MARGIN, (seen_after, source)
        from selenium.webdriver.common.by import By

        assert "stale" in browser.find_element(By.ID, "stage").get_attribute("class")  # the picture is greyed
        stream.thaw()
        wait_for(lambda: banner(browser) is None, 30, "the banner to go once frames flow again")
    finally:
        stream.kill()
        demo.stop()


def test_page_reconnects_when_the_daemon_restarts(device_bin, test_bundles, mirror, browser, tmp_path):
    port = free_port()
    source = str(mirror / "videos" / "vtest.avi")
    demo = Demo(device_bin, test_bundles / "yolox-nano-tflite-int8", source, tmp_path, port).start()
    browser.get(demo.url)
    wait_for(lambda: text(browser, "connection") == "connected", 20, "the page to connect")
    started = browser.execute_script("return view.started")
    assert demo.stop() == 0
    wait_for(lambda: "unreachable" in (banner(browser) or ""), 10, "the unreachable banner")
    demo = Demo(device_bin, test_bundles / "yolox-nano-tflite-int8", source, tmp_path, port).start()
    try:
        wait_for(lambda: text(browser, "connection") == "connected", 20, "the page to reconnect")
        assert browser.execute_script("return view.started") != started
        wait_for(lambda: banner(browser) is None, 10, "the banner to go")
        first = video_png(browser)
        time.sleep(1.0)
        assert np.abs(first.astype(np.int16) - video_png(browser).astype(np.int16)).mean() > 1.0
    finally:
        demo.stop()


def test_page_files_ship_in_the_wheel(tmp_path):
    # The page must work offline on the device: its files are package data, and none loads anything from outside.
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    tree = tmp_path / "tree"
    for part in WHEEL_SOURCES:
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / part, tree / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(tree)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("edgesight-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        for name in ("index.html", "live.js", "live.css"):
            body = archive.read(f"devices/daemon/web/{name}").decode()
            assert "http://" not in body and "https://" not in body, name
