"""The robustness report in a real browser (Playwright + Debian's chromium): plots decode, thumbnails start
blurred and a click reveals one. The report is built from assigned values: the page is under test here."""

from __future__ import annotations

from pathlib import Path

from browser import MARKS, open_page
from nsfwlab.lab.robust import ImageRobustness, RobustnessReport
from nsfwlab.lab.robust_report import plot_jpeg_curve, plot_min_eps, render_html

pytestmark = MARKS


def _report(paths: list[Path]) -> RobustnessReport:
    eps = {"value": 2.0, "score": 0.21, "verified": True, "goal": ">= 0.2", "psnr": 45.0, "steps": 10}
    ims = tuple(ImageRobustness(str(p), 0.01 * (i + 1), "safe", {"jpeg:50": 0.02, "jpeg:90": 0.015, "flip": 0.01},
                                dict(eps, value=float(i + 1)), {"bits:4": {"score": 0.01, "min_eps": eps}})
                for i, p in enumerate(paths))
    ims += (ImageRobustness("broken.jpg", error="broken.jpg: corrupt JPEG data"),)
    return RobustnessReport(ims, {"images": len(ims), "errors": 1})


def test_robustness_report_in_browser(tmp_path: Path, photo_paths: list[Path]) -> None:
    rep = _report(photo_paths[:2])
    page_html = render_html(rep, {"score against JPEG quality": plot_jpeg_curve(rep),
                                  "smallest flipping budget": plot_min_eps(rep)})
    report = tmp_path / "report.html"
    report.write_text(page_html, encoding="utf-8")
    with open_page(report) as (page, errors):
        assert page.locator("figure img").count() == 2
        thumbs = page.locator("img.t")
        assert thumbs.count() == 2
        blur = "el => getComputedStyle(el).filter"
        assert all("blur" in thumbs.nth(i).evaluate(blur) for i in range(2))
        thumbs.first.click()
        assert thumbs.nth(0).evaluate(blur) == "none" and "blur" in thumbs.nth(1).evaluate(blur)
        assert "corrupt JPEG data" in page.content()
        shot = page.screenshot(path=str(tmp_path / "robustness.png"), full_page=True)
        assert shot.startswith(b"\x89PNG")
        assert errors == []
