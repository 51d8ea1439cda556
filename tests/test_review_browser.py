"""The review page in a real browser: Playwright drives Debian's chromium against a real
`nsfwlab serve` process; an item is labelled with the keyboard and the label is checked in the
SQLite store."""

from __future__ import annotations

import functools
import http.server
import io
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from browser import ARGS, CHROMIUM, MARKS
from nsfwlab.serve import QueueReason, ReviewStore
from test_serve_server import running_server

pytestmark = MARKS


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def wait_until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_label_with_keyboard_persists(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
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
                dialogs: list[str] = []
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(srv.url + "/review")
                # The page asks for the key in its own field (no prompt()), focused and marked on 401.
                expect(page.locator("#keystate")).to_have_text("this server needs an API key")
                assert page.evaluate("() => document.activeElement.id") == "apikey"
                page.fill("#apikey", "wrong")
                page.locator("#apikey").press("Enter")
                expect(page.locator("#keystate")).to_have_text("key refused: enter the right key")
                page.fill("#apikey", "k3y")
                page.locator("#apikey").press("Enter")
                expect(page.locator("#keystate")).to_have_text("key set for this tab")
                assert page.evaluate("() => sessionStorage.getItem('nsfwlab-key')") == "k3y"
                assert page.evaluate("() => localStorage.getItem('nsfwlab-key')") is None
                assert page.input_value("#apikey") == ""  # not left on screen
                page.reload()  # the tab keeps its key
                cards = page.locator(".card")
                cards.nth(1).wait_for()
                assert cards.count() == 2
                # (The page's CSP forbids eval, so no wait_for_function with a string predicate.)
                for i in range(2):
                    expect(cards.nth(i).locator("img")).to_have_attribute("src", re.compile("^blob:"))
                    img = cards.nth(i).locator("img")
                    wait_until(lambda img=img: img.evaluate("e => e.complete && e.naturalWidth > 0"))
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
                expect(cards).to_have_count(1)
                assert page.locator("[data-count=nsfw]").inner_text() == "1"
                page.keyboard.press("s")  # the remaining item: safe
                expect(cards).to_have_count(0)
                assert page.locator("#empty").is_visible()
                page.screenshot(path=str(tmp_path / "review-done.png"))
                # Only the expected 401s before the key was entered; nothing blocked by the page's CSP.
                assert all("401" in e for e in errors), errors
                assert not dialogs
            finally:
                browser.close()

    with ReviewStore(data_dir, create=False) as store:
        second, first_item = store.get(ids[1]), store.get(ids[0])
        assert second is not None and second.status.value == "nsfw" and second.reviewer == "tester"
        assert first_item is not None and first_item.status.value == "safe"
        assert [h.label.value for h in store.history(ids[1])] == ["nsfw"]


def test_review_page_pages_through_more_than_200_items(tmp_path: Path) -> None:
    """The page used to show the first 200 items and no way to the rest."""
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    data_dir = tmp_path / "data"
    with ReviewStore(data_dir) as store:
        for i in range(230):
            arr = np.full((8, 8, 3), i % 200, np.uint8)
            arr[:4, :4] = i // 200 * 100
            store.add(jpeg(arr), "JPEG", score=0.5, model_label="review", reason=QueueReason.BAND,
                      model_version="m", now=float(i))
    with running_server(tmp_path, "--data-dir", str(data_dir)) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(srv.url + "/review")
            cards, pager = page.locator(".card"), page.locator("#range")
            expect(pager).to_have_text("1\u2013100 of 230")
            expect(cards).to_have_count(100)
            assert page.locator("#prev").is_disabled()
            page.keyboard.press("]")
            expect(pager).to_have_text("101\u2013200 of 230")
            page.locator("#next").click()
            expect(pager).to_have_text("201\u2013230 of 230")
            expect(cards).to_have_count(30)
            assert page.locator("#next").is_disabled()
            last = cards.nth(0).get_attribute("data-sha")
            page.keyboard.press("s")  # label the first item of the last page
            expect(pager).to_have_text("201\u2013229 of 229")
            assert page.locator("[data-count=safe]").inner_text() == "1"
        finally:
            browser.close()
    with ReviewStore(data_dir, create=False) as store:
        item = store.get(str(last))
        assert item is not None and item.status.value == "safe" and item.created_at == 200.0


@contextmanager
def other_origin(directory: Path) -> Iterator[str]:
    """A static web server for ``directory`` on another port of this host: another web origin."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


ATTACK_PAGE = """<!doctype html><meta charset="utf-8"><title>elsewhere</title>
<iframe name="sink"></iframe><iframe name="sink2"></iframe>
<form id="plain" method="POST" target="sink" enctype="text/plain"><input name='{"label":"safe","x":"' value='"}'></form>
<form id="urlenc" method="POST" target="sink2"><input name="label" value="safe"></form>
"""


def test_a_page_of_another_origin_cannot_label_items(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    """A keyless server: a page served from another origin tries what a browser lets any page do
    (a no-cors fetch with a text/plain JSON body, a cross-origin JSON fetch, HTML form posts in
    text/plain and url encodings); the item stays unlabelled and nothing enters the bank."""
    sync_api = pytest.importorskip("playwright.sync_api")
    data_dir, site = tmp_path / "data", tmp_path / "site"
    site.mkdir()
    (site / "attack.html").write_text(ATTACK_PAGE)
    with running_server(tmp_path, "--data-dir", str(data_dir), "--safe-below", "0", "--nsfw-above", "1") as srv, \
            other_origin(site) as evil, sync_api.sync_playwright() as pw:
        resp = httpx.post(srv.url + "/v1/score?filename=coffee.jpg", content=jpeg(photos["coffee"]), timeout=60)
        rid = resp.json()["results"][0]["review_id"]
        target = f"{srv.url}/v1/review/items/{rid}/label"
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(evil + "/attack.html")
            outcome = page.evaluate("""async (url) => {
                const out = {};
                const body = JSON.stringify({label: "safe", reviewer: "attacker"});
                const noCors = await fetch(url, {method: "POST", mode: "no-cors", body,
                                                 headers: {"Content-Type": "text/plain"}});
                out.noCors = noCors.type;  // opaque: the page cannot read the answer, but it was sent
                try {
                    await fetch(url, {method: "POST", body, headers: {"Content-Type": "application/json"}});
                    out.cors = "answered";
                } catch (e) { out.cors = "blocked"; }  // the preflight finds no CORS headers
                for (const [form, frame] of [["plain", "sink"], ["urlenc", "sink2"]]) {
                    const el = document.getElementById(form);
                    el.action = url;
                    const loaded = new Promise((r) => document.querySelector(`iframe[name=${frame}]`).onload = r);
                    el.submit();
                    await loaded;
                }
                return out;
            }""", target)
        finally:
            browser.close()
        assert outcome == {"noCors": "opaque", "cors": "blocked"}
        items = httpx.get(srv.url + "/v1/review/items?status=all").json()["items"]
        metrics = httpx.get(srv.url + "/metrics").text
    assert [i["status"] for i in items] == ["pending"], srv.output()
    # The no-cors fetch and both forms reached the server and were refused for their origin.
    assert re.search(r'nsfwlab_errors_total\{code="forbidden_origin"\} 3\.0', metrics), metrics
    with ReviewStore(data_dir, create=False) as store:
        assert store.audit_count() == 0
