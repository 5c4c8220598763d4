"""The playground page at ``/``, in a real headless browser: the system's Chromium driven by Selenium
through the system's chromedriver (browser downloads from elsewhere do not work on our machines).

Where Chromium is missing, the test installs it with apt-get (Debian's ``chromium`` and
``chromium-driver`` packages) when it runs as root, as on a fresh CI machine. Where it cannot
(no apt-get, not root), it fails with one message saying what to install, rather than skipping
silently: a skipped browser test looks like a passing one. ``NIMA_SKIP_BROWSER_TESTS=1`` is the
explicit way to skip it on a machine that will never have a browser.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import httpx
import pytest
from serving_helpers import start, write_checkpoint

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
APT_PACKAGES = ("chromium", "chromium-driver")
INSTALL_HINT = (
    "install Chromium and its driver (Debian: apt-get install chromium chromium-driver), "
    "or set NIMA_SKIP_BROWSER_TESTS=1 to skip the browser test"
)


def _find() -> tuple[str, str] | None:
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for command in (
        ["apt-get", *lock, "update"],
        ["apt-get", *lock, "install", "-y", "--no-install-recommends", *APT_PACKAGES],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}; {INSTALL_HINT}"
            )


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of the system's Chromium and chromedriver, installed with apt-get where missing."""
    if os.environ.get("NIMA_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("NIMA_SKIP_BROWSER_TESTS=1")
    found = _find()
    if found is None:
        if not shutil.which("apt-get") or os.geteuid() != 0:
            pytest.fail(
                f"no Chromium with chromedriver here, and no apt-get as root to install it: {INSTALL_HINT}"
            )
        _apt_install()
        found = _find()
        if found is None:
            pytest.fail(
                f"apt-get installed {' '.join(APT_PACKAGES)} but chromium/chromedriver are not on PATH"
            )
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "served")
    with start(checkpoint) as running:
        yield running


@pytest.fixture
def browser(chromium, monkeypatch: pytest.MonkeyPatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for a download
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def fill(driver, name: str, value: str) -> None:
    field = driver.find_element("css selector", f"[name={name}]")
    field.clear()
    if value:
        field.send_keys(value)


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def test_the_page_streams_an_answer_and_shows_errors(server, browser):
    browser.get(f"{server.url}/")
    assert browser.title == "Nima playground"
    wait_for(browser, lambda d: text_of(d, "model") == "served/step_150")
    prompt = browser.find_element("id", "prompt")
    prompt.clear()
    prompt.send_keys("Once upon a time")
    fill(browser, "temperature", "0")
    fill(browser, "max_tokens", "20")
    browser.find_element("id", "go").click()
    status = wait_for(browser, lambda d: (s := text_of(d, "status")).startswith(("done", "error")) and s)
    assert status.startswith("done") and " tokens in " in status, status
    body = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}
    expected = httpx.post(f"{server.url}/v1/completions", json=body, trust_env=False).json()
    assert text_of(browser, "answer") == expected["choices"][0]["text"]
    assert f": {expected['usage']['completion_tokens']} tokens" in status

    # chat mode, through /v1/chat/completions
    browser.find_element("css selector", "[name=mode] option[value=chat]").click()
    browser.find_element("id", "go").click()
    status = wait_for(browser, lambda d: (s := text_of(d, "status")).startswith(("done", "error")) and s)
    assert status.startswith("done"), status
    chat = {"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 20, "temperature": 0}
    expected = httpx.post(f"{server.url}/v1/chat/completions", json=chat, trust_env=False).json()
    assert text_of(browser, "answer") == expected["choices"][0]["message"]["content"]

    # a bad setting: the server's one-line error is shown
    fill(browser, "temperature", "-1")
    browser.find_element("id", "go").click()
    status = wait_for(browser, lambda d: (s := text_of(d, "status")).startswith(("done", "error")) and s)
    assert status.startswith("error: temperature")


def test_the_page_needs_no_build_step_and_no_external_assets():
    page = resources.files("nima.serving").joinpath("playground.html").read_text(encoding="utf-8")
    assert re.search(r"\b(src|href)\s*=", page) is None
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert Path(str(resources.files("nima.serving"))).joinpath("playground.html").is_file()
