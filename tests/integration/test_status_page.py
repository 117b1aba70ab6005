"""The gateway's status page in a real headless browser (Debian's chromium + chromedriver, selenium).

The page must load with no console error, show a model at zero, then the same
model ready with its start's waterfall after one request; with a gateway key
it shows nothing until the key is entered. API clients keep their JSON.
Set ZEROSTART_STATUS_SCREENSHOT=PATH to keep the screenshot (docs/platform.md's
picture is made that way).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import Gateway

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="needs Debian's chromium and chromium-driver (scripts/install_system_deps.sh)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extras)")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

GATEWAY = "[autoscaler]\ntick = 0.1\n[pool]\ncpu = 0\n"
WAIT_S = 60.0


def _toml(bundle: Path, extra: str = "") -> str:
    return extra + GATEWAY + f'[models.sst2]\nbundle = "{bundle}"\nidle_timeout = 600\n'


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _state(driver: Any, model: str) -> str | None:
    # read in one script: the page redraws itself every second (elements go stale)
    return driver.execute_script(  # type: ignore[no-any-return]
        "const e = document.querySelector(`section[data-model='${arguments[0]}'] [data-state]`);"
        "return e ? e.dataset.state : null;",
        model,
    )


def _text(driver: Any, selector: str = "body") -> str:
    return driver.execute_script(  # type: ignore[no-any-return]
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", selector
    )


def _wait(driver: Any, what: str, predicate: Any) -> None:
    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: predicate(d))
    except TimeoutException:
        pytest.fail(f"the page never showed {what}:\n{_text(driver)}")


def _console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_shows_a_model_going_from_zero_to_ready(
    tmp_path: Path, sst2_bundle: Path, browser: Any
) -> None:
    gw = Gateway(tmp_path, _toml(sst2_bundle))
    try:
        browser.get(f"http://127.0.0.1:{gw.port}/")
        assert browser.title == "zerostart gateway"
        _wait(browser, "sst2 at zero", lambda d: _state(d, "sst2") == "zero")
        code, _, answer = gw.request("POST", "/models/sst2/predict", {"inputs": "a fine film"})
        assert code == 200, answer
        _wait(browser, "sst2 ready", lambda d: _state(d, "sst2") == "ready")
        titles_js = "return [...document.querySelectorAll('.wf span')].map(s => s.title);"
        _wait(browser, "the start's waterfall", lambda d: d.execute_script(titles_js))
        text = _text(browser, 'section[data-model="sst2"]')
        assert "cold_boot" in text and "replicas" in text
        titles = browser.execute_script(titles_js)
        assert titles and all(re.fullmatch(r"\w+ \d+\.\d+ m?s", t) for t in titles), titles
        time.sleep(1.5)  # a refresh after the request: the rate and the pool section are drawn
        assert "warm pool and sizing" in _text(browser)
        shot = os.environ.get("ZEROSTART_STATUS_SCREENSHOT") or str(tmp_path / "status.png")
        assert browser.save_screenshot(shot)
        assert _console_errors(browser) == []
    finally:
        gw.stop()


def test_with_a_key_the_page_shows_nothing_until_the_key_is_given(
    tmp_path: Path, sst2_bundle: Path, browser: Any
) -> None:
    secret = "st4tus-page-key"
    gw = Gateway(
        tmp_path,
        _toml(sst2_bundle, '[gateway]\napi_key_env = "TEST_GATEWAY_KEY"\n'),
        env={"TEST_GATEWAY_KEY": secret},
        api_key=secret,
    )
    try:
        browser.get(f"http://127.0.0.1:{gw.port}/")
        _wait(browser, "the key form", lambda d: d.find_elements(By.ID, "keyform"))
        assert "sst2" not in _text(browser)
        browser.find_element(By.ID, "key").send_keys("wrong")
        browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
        _wait(browser, "the refusal", lambda d: "refused" in _text(d))
        assert _state(browser, "sst2") is None
        browser.find_element(By.ID, "key").send_keys(secret)
        browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
        _wait(browser, "sst2 at zero", lambda d: _state(d, "sst2") == "zero")
        # the browser's console shows the refused /status fetches (401) and nothing else
        assert all("401" in e for e in _console_errors(browser))
    finally:
        gw.stop()


def test_api_clients_keep_json_and_the_page_is_locked_down(
    tmp_path: Path, sst2_bundle: Path
) -> None:
    gw = Gateway(tmp_path, _toml(sst2_bundle))
    try:
        code, _, body = gw.request("GET", "/")
        assert code == 404 and "no route" in body["error"]  # what API clients got before
        req = urllib.request.Request(
            f"http://127.0.0.1:{gw.port}/", headers={"Accept": "text/html,*/*;q=0.8"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            page = resp.read().decode()
            csp = resp.headers["content-security-policy"]
            assert resp.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
        assert "http://" not in page.replace(
            f"127.0.0.1:{gw.port}", ""
        )  # nothing fetched from outside
        assert "sst2" not in page  # no data in the document itself
        assert gw.request("POST", "/", {"x": 1}, headers={"accept": "text/html"})[0] == 404
    finally:
        gw.stop()
