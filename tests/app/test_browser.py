"""The page in a real browser: Debian's chromium, headless, driven by Selenium through
chromium-driver. `.ci/run` installs both where it runs as root with apt-get.

Screenshots of each tab go to `$OPENSORA_APP_SCREENSHOTS` when set (the README's come
from `OPENSORA_APP_SCREENSHOTS=docs/images pytest tests/app/test_browser.py`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="Debian's chromium and chromium-driver are not installed "
                              "(.ci/run installs them where it runs as root with apt-get)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the app extra) is not installed")

TIMEOUT_S = 120


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1600", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager (which would download one) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def _shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"app_{name}.png"
    driver.save_screenshot(str(path))
    target = os.environ.get("OPENSORA_APP_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)
    return path


def _tab(driver, title: str) -> None:
    from selenium.webdriver.common.by import By

    button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == title)
    button.click()


PLAYABLE = """
const video = document.querySelector(arguments[0] + ' video');
return video !== null && !!video.currentSrc && !video.error && video.readyState >= 1 && video.duration > 0;
"""
FOREIGN = """
const base = arguments[0];
return performance.getEntriesByType('resource').map(e => e.name)
    .filter(name => !name.startsWith(base) && !name.startsWith('data:') && !name.startsWith('blob:'));
"""


def test_generate_then_compare_in_a_real_browser(browser, running_app, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = running_app
    wait = WebDriverWait(browser, TIMEOUT_S)
    browser.get(url)
    prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
    prompt.send_keys("a red square moving left")
    browser.find_element(By.ID, "generate-button").click()
    wait.until(lambda d: d.execute_script(PLAYABLE, "#result-video"))
    assert browser.execute_script("return document.querySelector('#result-video video').duration") > 0
    assert "--prompt 'a red square moving left'" in browser.find_element(By.ID, "result-info").text
    _shot(browser, tmp_path, "generate")

    _tab(browser, "Compare")
    wait.until(lambda d: len([i for i in d.find_elements(By.CSS_SELECTOR, "#previews img")
                              if d.execute_script("return arguments[0].naturalWidth", i) > 0]) >= 2)
    versions = browser.find_element(By.ID, "versions").text
    assert "v1" in versions and "★" in versions and "v2" in versions
    assert "★ champion v1" in browser.find_element(By.ID, "previews").get_attribute("innerText")
    _shot(browser, tmp_path, "compare")

    _tab(browser, "History")
    wait.until(lambda d: "a red square moving left" in d.find_element(By.ID, "history").text)
    cell = next(c for c in browser.find_elements(By.CSS_SELECTOR, "#history [role=gridcell]")
                if c.text.strip() == "a red square moving left")
    cell.click()  # one click re-runs it
    wait.until(lambda d: d.execute_script(PLAYABLE, "#rerun-video"))
    _shot(browser, tmp_path, "history")
    # Everything the page loaded came from the app itself: nothing from a CDN or the internet.
    assert browser.execute_script(FOREIGN, url.rstrip("/")) == []
