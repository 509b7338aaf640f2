"""The browser fixtures themselves (tests/browser.py): Debian's chromium, headless, driven by
Playwright against a loopback page, a deliberate screenshot saved as an artefact, and the
screenshot a failing browser test leaves behind (an inner pytest run)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.browser import ARTIFACTS_ENV, CHROMIUM, screenshot_path, shot
from tests.paths import REPO

pytestmark = pytest.mark.e2e
PNG = b"\x89PNG\r\n\x1a\n"
HELLO = b"<!doctype html><title>hello</title><h1>Hello from loopback</h1><button>Go</button>"


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(HELLO)))
            self.end_headers()
            self.wfile.write(HELLO)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_the_page_is_debians_chromium_headless_and_a_shot_is_saved(
    browser: Browser, page: Page, site: str, request: pytest.FixtureRequest
) -> None:
    version = subprocess.run(
        [str(CHROMIUM), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert browser.version.split(".")[0] in version  # "Chromium 150.0.7871.100 built on Debian"
    page.goto(site)
    assert page.get_by_role("heading").inner_text() == "Hello from loopback"
    assert "HeadlessChrome" in page.evaluate("navigator.userAgent")
    path = shot(page, "hello")
    assert path == screenshot_path(request.node.nodeid, "hello")
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 1000


INNER = """
from tests.browser import shot

def test_passes(page):
    page.set_content("<h1>fine</h1>")

def test_fails(page):
    page.set_content("<h1 id=state>half way</h1>")
    assert page.inner_text("#state") == "done"
"""


def test_a_failing_browser_test_leaves_a_screenshot(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, ARTIFACTS_ENV: str(tmp_path / "artefacts"), "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_XDIST_WORKER", None)
    plugins = ["-p", "tests.browser", "-p", "no:randomly", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-q", "-o", "addopts=", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    shots = tmp_path / "artefacts" / "screenshots" / "test_inner"
    failed = shots / "test_fails--failed.png"
    assert str(failed) in result.stdout  # named in the failure report
    assert failed.read_bytes().startswith(PNG)
    assert sorted(p.name for p in shots.iterdir()) == ["test_fails--failed.png"]
