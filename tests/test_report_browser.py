"""The evaluation report in a real browser: Playwright drives Debian's chromium; the curves and
thumbnails decode, thumbnails start blurred and a click reveals one; a screenshot is taken."""

from __future__ import annotations

from pathlib import Path

from browser import MARKS, open_page
from nsfwlab.config import Thresholds
from nsfwlab.evaluate import Hygiene, Problem, Target, TargetKind, compute_metrics
from nsfwlab.evaluate.evaluation import Evaluation, ScoredItem
from nsfwlab.evaluate.plots import histogram_png, pr_png, roc_png
from nsfwlab.evaluate.report import render_report, thumbnail

pytestmark = MARKS


def _evaluation(photo_paths: list[Path]) -> Evaluation:
    """Public safe photos with assigned labels and scores, so that both galleries have entries
    (the report is under test here, not the model)."""
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.9, 0.05, 0.7, 0.95, 0.8]
    scored = tuple(ScoredItem(str(p), y, s) for p, y, s in zip(photo_paths, labels, scores, strict=True))
    metrics = compute_metrics(labels, scores, thresholds=Thresholds(),
                              targets=[Target(TargetKind.FPR, 0.34), Target(TargetKind.RECALL, 0.75)], n_boot=50)
    hygiene = Hygiene((Problem("broken.jpg", 0, "corrupt", "corrupt JPEG data"),), ())
    model = {"model_version": "open_nsfw-test", "preprocess_version": "yahoo-exact-v1", "backend": "onnxruntime"}
    return Evaluation("photos", scored, hygiene, metrics, model)


def test_report_renders_blurred_and_reveals_on_click(tmp_path: Path, photo_paths: list[Path]) -> None:
    ev = _evaluation(photo_paths)
    assert [Path(it.path).name for it in ev.false_positives()] == [photo_paths[2].name]
    assert [Path(it.path).name for it in ev.false_negatives()] == [photo_paths[3].name]
    y = [it.label for it in ev.scored]
    s = [it.score for it in ev.scored]
    plots = {"roc": roc_png(y, s, recommendations=ev.metrics.recommendations), "pr": pr_png(y, s),
             "histogram": histogram_png(y, s, thresholds=ev.metrics.current, recommended=ev.metrics.recommended)}
    thumbs = {it.path: thumbnail(it.path) for it in ev.scored}
    report = tmp_path / "report.html"
    report.write_text(render_report(ev, plots, thumbs), encoding="utf-8")

    with open_page(report) as (page, errors):
        assert page.locator("img[id^=plot-]").count() == 3
        thumbs_loc = page.locator("figure.thumb img")
        assert thumbs_loc.count() == 2
        blur = "el => getComputedStyle(el).filter"
        assert all("blur" in thumbs_loc.nth(i).evaluate(blur) for i in range(2))
        auc = ev.metrics.roc_auc
        assert f"{auc.value:.4f}" in page.locator("#auc").inner_text()
        assert f"[{auc.low:.4f}, {auc.high:.4f}]" in page.locator("#auc").inner_text()
        assert page.locator("#recommendations tr").count() == 3  # header + one row per target
        assert "broken.jpg" in page.locator("#unreadable").inner_text()
        shot = page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert shot.startswith(b"\x89PNG") and len(shot) > 20_000

        page.locator("figure.thumb .frame").first.click()
        page.wait_for_timeout(250)  # the CSS transition
        assert thumbs_loc.nth(0).evaluate(blur) == "none"
        assert "blur" in thumbs_loc.nth(1).evaluate(blur)
        page.locator("#reveal-all").click()
        page.wait_for_timeout(250)
        assert all(thumbs_loc.nth(i).evaluate(blur) == "none" for i in range(2))
        page.locator("#reveal-all").click()
        page.wait_for_timeout(250)
        assert all("blur" in thumbs_loc.nth(i).evaluate(blur) for i in range(2))
        page.screenshot(path=str(tmp_path / "report-bottom.png"), full_page=True)
        assert errors == []
