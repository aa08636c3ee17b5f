"""A real browser for the web tests: Debian's Chromium driven by Playwright (sync API).

The browser is the system one (``/usr/bin/chromium``, Debian package ``chromium``, installed by
``.ci/run``); Playwright from pip never downloads one and ``playwright install`` is never run.
Chromium starts headless with the flags that keep it off the network (no background
connections, no component updates, no QUIC): the machines running the tests have no way out.

:func:`chromium` opens a browser context for one test and gives a :class:`BrowserSession`:
its page, the base URL of the node's web app, and :meth:`BrowserSession.shot`, which saves a
full-page screenshot as a test artefact under :func:`artifacts_dir` (``$CARDIONODE_TEST_ARTIFACTS/web/<name>``,
else ``test-artifacts/web/<name>`` at the repository root), numbered in the order taken, so that
a person can look at every page the test saw.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO

__all__ = ["ARTIFACTS_ENV", "CHROMIUM", "CHROMIUM_ARGS", "BrowserSession", "artifacts_dir", "chromium", "chromium_path"]

#: the system browser (Debian ``chromium``)
CHROMIUM = Path("/usr/bin/chromium")
#: headless, no sandbox (containers), and no connection of Chromium's own: the test network is closed
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
)
#: environment variable naming the folder for test artefacts (pictures); default ``<repo>/test-artifacts``
ARTIFACTS_ENV = "CARDIONODE_TEST_ARTIFACTS"


def chromium_path() -> Path:
    """The system Chromium; fails the test (not skip) when it is not installed: ``.ci/run`` installs it."""
    path = CHROMIUM if CHROMIUM.is_file() else Path(shutil.which("chromium") or "")
    if not path.name or not path.is_file():
        pytest.fail(f"{CHROMIUM} is not installed; .ci/run installs it (Debian package chromium)")
    return path


def artifacts_dir(name: str) -> Path:
    """The folder for the pictures of test ``name``: ``$CARDIONODE_TEST_ARTIFACTS/web/<name>``, else
    ``<repo>/test-artifacts/web/<name>``; emptied of earlier PNGs, created if needed."""
    root = Path(os.environ[ARTIFACTS_ENV]) if os.environ.get(ARTIFACTS_ENV) else REPO / "test-artifacts"
    folder = root / "web" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@dataclass
class BrowserSession:
    """One browser context (own cookies) with one page, pointed at the web app at ``base_url``."""

    base_url: str
    page: Any  # playwright.sync_api.Page
    context: Any  # playwright.sync_api.BrowserContext
    artifacts: Path
    shots: list[Path] = field(default_factory=list)
    #: what the page wrote to its console at level error (including resources that failed to load)
    console_errors: list[str] = field(default_factory=list)
    #: (status, URL) of every answer with status 400 or above (documents and resources), in order
    failed_responses: list[tuple[int, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        """``path`` on the web app (``"/studies"`` -> ``http://127.0.0.1:PORT/studies``); an absolute URL as it is."""
        if re.match(r"^https?://", path):
            return path
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def goto(self, path: str) -> Any:
        """Load ``path`` and wait until the network is idle; the Playwright response (``.status``)."""
        return self.page.goto(self.url(path), wait_until="networkidle")

    def settle_images(self, timeout_s: float = 30.0) -> int:
        """Scroll every ``img`` into view, as a reader scrolling down the page does (``loading="lazy"``
        images load only then), wait until each has loaded or failed, scroll back to the top; the count."""
        count = self.page.evaluate(
            """async (timeoutMs) => {
                 const deadline = Date.now() + timeoutMs;
                 const images = Array.from(document.images);
                 for (const i of images) {  // one at a time: a lazy image loads when it is near the viewport
                   i.scrollIntoView({block: 'center'});
                   if (!i.complete) {
                     await new Promise((resolve) => {
                       i.addEventListener('load', resolve, {once: true}); i.addEventListener('error', resolve, {once: true});
                       setTimeout(resolve, Math.max(0, deadline - Date.now()));
                     });
                   }
                 }
                 window.scrollTo(0, 0);
                 return images.length;
               }""",
            int(timeout_s * 1000),
        )
        return int(count)

    def shot(self, name: str) -> Path:
        """A full-page screenshot ``NN-<name>.png`` in :attr:`artifacts` once every image has loaded; its path."""
        self.settle_images()
        path = self.artifacts / f"{len(self.shots) + 1:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``)."""
        return str(self.page.evaluate("() => document.body.innerText"))

    def loaded_images(self, selector: str = "img") -> list[dict[str, Any]]:
        """Every ``img`` matching ``selector`` (a Playwright selector: CSS, or ``xpath=...``) that finished loading, with its ``src``, ``alt`` and natural size
        (an image that failed to load has ``naturalWidth`` 0 and is left out); call :meth:`settle_images` first."""
        return list(self.page.locator(selector).evaluate_all(
            """(images) => images.filter(i => i.complete && i.naturalWidth > 0)
                 .map(i => ({src: i.getAttribute('src'), alt: i.alt || '', width: i.naturalWidth, height: i.naturalHeight}))""",
        ))

    def broken_images(self, selector: str = "img") -> list[str]:
        """``src`` of every ``img`` matching ``selector`` that did not load (complete with ``naturalWidth`` 0)."""
        return list(self.page.locator(selector).evaluate_all(
            "(images) => images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))",
        ))


@contextmanager
def chromium(base_url: str, name: str, *, viewport: tuple[int, int] = (1280, 900),
             timeout_s: float = 60.0) -> Iterator[BrowserSession]:
    """Chromium (the system browser, headless) with one fresh context and page at ``base_url``; pictures go to
    :func:`artifacts_dir` ``(name)``; ``timeout_s``: how long an action or navigation may take. Closed on exit,
    whatever happened."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    folder = artifacts_dir(name)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=list(CHROMIUM_ARGS))
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            context.set_default_timeout(timeout_s * 1000)  # the test machines are shared and often loaded
            page = context.new_page()
            session = BrowserSession(base_url, page, context, folder)
            page.on("console", lambda m: session.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: session.console_errors.append(f"page error: {e}"))
            page.on("response", lambda r: session.failed_responses.append((r.status, r.url)) if r.status >= 400 else None)
            yield session
        finally:
            browser.close()
    print(f"browser pictures: {folder}")
