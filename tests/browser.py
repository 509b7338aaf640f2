"""A real browser for the tests: Debian's chromium driven by Playwright (sync API).

Registered as a pytest plugin by tests/conftest.py, so any test may ask for:
- `browser`: one headless Chromium per test module (with `--dist loadfile` one per file and
  xdist worker), launched from `/usr/bin/chromium` through `executable_path` — never a browser
  of Playwright's own (`make test` installs Debian's package where missing,
  scripts/ensure_chromium.py);
- `page`: a fresh context (its own cookies and storage) and page per test, closed after it;
- `shot(page, name)`: a deliberate screenshot, saved as a test artefact under
  `.artifacts/screenshots/<test file>/<test>--<name>.png` (gitignored; `$TEST_ARTIFACTS_DIR`
  instead of `.artifacts` when set);
- and, for every test using `page` whose call fails, a screenshot `<test>--failed.png` taken
  before the page closes, its path added to the failure report.

Playwright's own launch already gives Chromium a fresh temporary `--user-data-dir`, `--no-sandbox`
(its sandbox is off by default), `--no-first-run`, `--disable-sync`,
`--disable-background-networking` and `--disable-component-update`; the flags this machine needs
are passed here all the same so the list does not depend on a Playwright release: as root
Chromium refuses to start without `--no-sandbox`, there is no GPU, and with the network closed
every background fetch is a refused connection (or a failed DNS lookup) at each start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.paths import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_ENV = "TEST_ARTIFACTS_DIR"  # where artefacts go (default: .artifacts/ in the checkout)
CHROMIUM_ARGS = (
    "--no-sandbox",  # root here; Chromium's sandbox refuses to run as root
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
)
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 10_000  # an element or navigation not there in 10 s is a failure, not a wait


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120]


def screenshot_path(nodeid: str, name: str) -> Path:
    """`<artefacts>/screenshots/<test file stem>/<test name>--<name>.png` for a node id."""
    file_part, _, test_part = nodeid.partition("::")
    root = Path(os.environ.get(ARTIFACTS_ENV) or REPO / ".artifacts") / "screenshots"
    return root / _slug(Path(file_part).stem) / f"{_slug(test_part)}--{_slug(name)}.png"


def shot(page: Page, name: str, nodeid: str | None = None) -> Path:
    """Save a full-page screenshot of `page` as a test artefact and return its path. The test is
    the one running now (pytest's PYTEST_CURRENT_TEST) unless `nodeid` names it."""
    if nodeid is None:
        nodeid = os.environ.get("PYTEST_CURRENT_TEST", "unknown::unknown").rsplit(" (", 1)[0]
    path = screenshot_path(nodeid, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium first "
            "(python3 scripts/ensure_chromium.py, as root)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _is_page(value: object) -> bool:
    """A Playwright page (a test may have a fixture of its own called `page`)."""
    if value is None:
        return False
    from playwright.sync_api import Page

    return isinstance(value, Page)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed browser test leaves a screenshot of the page as it was, named in its report."""
    report = yield
    failed_page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and _is_page(failed_page):
        try:
            path = shot(failed_page, "failed", item.nodeid)
        except Exception as exc:  # a crashed browser must not hide the test's own failure
            report.sections.append(("browser screenshot", f"not taken: {exc}"))
        else:
            report.sections.append(("browser screenshot", str(path)))
    return report
