"""The review page in a real browser: Playwright drives Debian's chromium against a real
`nsfwlab serve` process; an item is labelled with the keyboard and the label is checked in the
SQLite store."""

from __future__ import annotations

import io
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from nsfwlab.serve import ReviewStore
from test_serve_server import running_server

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed at /usr/bin/chromium"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_label_with_keyboard_persists(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    data_dir = tmp_path / "data"
    # A review band covering every score, so that these safe public photos are queued.
    with running_server(tmp_path, "--data-dir", str(data_dir), "--safe-below", "0", "--nsfw-above", "1",
                        "--api-key", "k3y") as srv:
        ids = []
        for name in ("coffee", "chelsea"):
            resp = httpx.post(srv.url + f"/v1/score?filename={name}.jpg", content=jpeg(photos[name]),
                              headers={"X-API-Key": "k3y"}, timeout=60)
            assert resp.status_code == 200, resp.text
            ids.append(resp.json()["results"][0]["review_id"])

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 640})
                page.on("dialog", lambda d: d.accept("k3y"))  # the page asks for the API key on 401
                page.goto(srv.url + "/review")
                cards = page.locator(".card")
                cards.nth(1).wait_for()
                assert cards.count() == 2
                page.wait_for_function(
                    "Array.from(document.querySelectorAll('.card img')).every(i => i.complete && i.naturalWidth > 0)"
                )
                first = cards.nth(0)
                assert first.get_attribute("data-sha") == ids[0]
                assert "blur" in first.locator("img").evaluate("e => getComputedStyle(e).filter")
                assert page.locator("[data-count=pending]").inner_text() == "2"
                page.screenshot(path=str(tmp_path / "review-blurred.png"))

                first.locator(".thumb").click()  # reveal on click
                assert first.locator(".thumb.revealed").count() == 1
                assert first.locator("img").evaluate("e => getComputedStyle(e).filter") == "none"

                page.fill("#reviewer", "tester")
                page.locator("#reviewer").press("Enter")
                page.locator("#reviewer").blur()
                page.keyboard.press("ArrowRight")  # select the second item
                assert "current" in (cards.nth(1).get_attribute("class") or "")
                page.keyboard.press("n")  # label it nsfw
                page.locator("#toast", has_text="labelled nsfw").wait_for()
                page.wait_for_function("document.querySelectorAll('.card').length === 1")
                assert page.locator("[data-count=nsfw]").inner_text() == "1"
                page.keyboard.press("s")  # the remaining item: safe
                page.wait_for_function("document.querySelectorAll('.card').length === 0")
                assert page.locator("#empty").is_visible()
                page.screenshot(path=str(tmp_path / "review-done.png"))
            finally:
                browser.close()

    with ReviewStore(data_dir, create=False) as store:
        second, first_item = store.get(ids[1]), store.get(ids[0])
        assert second is not None and second.status.value == "nsfw" and second.reviewer == "tester"
        assert first_item is not None and first_item.status.value == "safe"
        assert [h.label.value for h in store.history(ids[1])] == ["nsfw"]
