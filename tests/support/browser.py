"""Headless Chromium for the tests that look at the Hermesflow page: Debian's `chromium` driven
by Playwright (its own browser download is unreachable here, STACK §10), and Airflow's login as
a user does it.

Tests mark themselves with `needs_chromium`, so a machine without the browser skips them with
the command that installs it (`make test` runs it when the browser is missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    # The test machine has no route out; without these Chromium floods it with refused
    # connections (STACK §10).
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOGIN_TIMEOUT_MS = 20_000

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's chromium package "
    "(`apt-get install -y chromium`, as `make test` does) to run the browser tests",
)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright `Browser`), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Any, airflow_url: str, user: str, password: str) -> None:
    """Airflow's login form, filled as a user fills it; the UI then keeps its JWT in the
    `_token` cookie, which the Hermesflow page and its API accept."""
    page.goto(f"{airflow_url}/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=LOGIN_TIMEOUT_MS)
    assert any(c["name"] == "_token" for c in page.context.cookies())
