"""The one set-up of the browser tests: Debian's chromium driven by Playwright, headless, with the
flags that keep it off the network (this machine has none; chromium would keep trying)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
#: ``pytestmark`` of a browser test module.
MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed at /usr/bin/chromium"),
]


@contextmanager
def open_page(path: Path, *, images: bool = True) -> Iterator[tuple[Any, list[str]]]:
    """A chromium page on a local HTML file, once every image has decoded (``images``); yields
    the page and the list the page's script errors are collected in."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            if images:
                page.wait_for_function("Array.from(document.images).length > 0 && "
                                       "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            yield page, errors
        finally:
            browser.close()
