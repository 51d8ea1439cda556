"""``nsfwlab compare``: open_nsfw beside a tiny five-class model (a real ZooModel around a fixed
rule) on scikit-image's photos and synthetic images with made-up labels; the statistics against
scikit-learn's, open_nsfw's scores against the Detector's, the judge card, the CLI, the report in
chromium, and the nsfwjs models where their weights are installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, cohen_kappa_score, roc_auc_score
from typer.testing import CliRunner

from browser import MARKS, open_page
from nsfwlab import zoo
from nsfwlab.cli import app
from nsfwlab.datasets import LabelledItem, LabelledSet, load_labelled
from nsfwlab.errors import ConfigError
from nsfwlab.evaluate.compare import Comparison, compare, load_models
from nsfwlab.evaluate.compare_report import pr_overlay_png, render_compare_report, roc_overlay_png
from nsfwlab.evaluate.metrics import TargetKind, TargetRate, recommend_threshold
from nsfwlab.evaluate.report import thumbnail
from nsfwlab.weights import ONNX_SHA256

FIVE = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")


def _redness(items: list[np.ndarray]) -> np.ndarray:
    """Five-class probabilities from how red an image is: Hentai + Porn = the mean red share."""
    out = []
    for a in items:
        rgb = a.astype(np.float64)
        p = float(np.clip((rgb[..., 0] - rgb[..., 2:].mean(axis=-1)).mean() / 255 + 0.5, 0.01, 0.99))
        out.append([(1 - p) / 3, p / 2, (1 - p) / 3, p / 2, (1 - p) / 3])
    return np.asarray(out, dtype=np.float32)


def fake_five() -> zoo.ZooModel:
    card = zoo.ModelCard(id="fake-five", kind="classifier", classes=FIVE, nsfw_classes=("Hentai", "Porn"),
                         report_classes=("Sexy",), input=zoo.InputSpec(size=8),
                         weights=zoo.WeightsSource(format="onnx", sha256="ab" * 32), licence="MIT")
    return zoo.ZooModel(card, _redness, backend="onnxruntime")


def _write_set(root: Path, photos: dict[str, np.ndarray]) -> Path:
    """safe/: blue-tinted synthetic images and half the photos; nsfw/: red-tinted ones and the rest
    (labels made up: the statistics are under test, not the models)."""
    rng = np.random.default_rng(0)
    for cls, tint in (("safe", (40, 60, 200)), ("nsfw", (200, 50, 40))):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            img = np.clip(rng.normal(tint, 45, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"synthetic{i}.png")
    for i, (name, arr) in enumerate(sorted(photos.items())):
        small = Image.fromarray(arr).convert("RGB")
        small.thumbnail((96, 96))
        small.save(root / ("nsfw" if i % 2 else "safe") / f"{name}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    return _write_set(tmp_path_factory.mktemp("compare") / "set", photos)


@pytest.fixture(scope="module")
def models() -> list:
    return [zoo.load("open_nsfw"), fake_five()]


@pytest.fixture(scope="module")
def comparison(data_dir: Path, models: list) -> Comparison:
    return compare(load_labelled(data_dir), models, fpr=0.2, n_boot=50)


def test_auc_and_ap_equal_scikit_learns_on_the_same_scores(comparison: Comparison) -> None:
    y = comparison.labels
    assert len(y) == 19 and 0 < y.sum() < 19
    for m in comparison.models:
        assert m.metrics.roc_auc.value == pytest.approx(roc_auc_score(y, m.scores), abs=1e-12)
        assert m.metrics.average_precision.value == pytest.approx(average_precision_score(y, m.scores), abs=1e-12)
        assert m.metrics.roc_auc.low <= m.metrics.roc_auc.value <= m.metrics.roc_auc.high
    assert comparison.models[1].metrics.roc_auc.value > 0.9  # the red rule separates the tinted images


def test_open_nsfw_scores_are_the_detectors_exact_scores(comparison: Comparison, detector) -> None:
    results = detector.score_many(list(comparison.paths))
    expected = np.array([r.model_score for r in results])
    np.testing.assert_allclose(comparison.models[0].scores, expected, atol=1e-6)


def test_threshold_at_the_target_fpr_and_its_recall(comparison: Comparison) -> None:
    for m in comparison.models:
        want = recommend_threshold(comparison.labels, m.scores, TargetRate(TargetKind.FPR, 0.2))
        assert m.at_fpr.threshold == want.threshold
        assert m.at_fpr.achieved == want.achieved
        assert m.at_fpr.achieved.fpr <= 0.2
        d = m.to_dict()["at_fpr"]
        assert d["nsfw_above"] == want.threshold and d["recall"] == pytest.approx(want.achieved.recall)


def test_kappa_is_scikit_learns_on_the_flags_at_each_models_fpr_threshold(comparison: Comparison) -> None:
    a, b = comparison.models
    flags = [(m.scores > m.at_fpr.threshold).astype(int) for m in (a, b)]
    assert comparison.agreement == "fpr"
    assert comparison.kappa[0][1] == pytest.approx(cohen_kappa_score(*flags))
    assert comparison.kappa[1][0] == comparison.kappa[0][1]
    assert comparison.kappa[0][0] == comparison.kappa[1][1] == pytest.approx(1.0)


def test_kappa_at_the_cards_bands_uses_three_labels(data_dir: Path, models: list) -> None:
    c = compare(load_labelled(data_dir), models, agreement="bands", n_boot=10)
    codes = [np.digitize(m.scores, [0.2, 0.8], right=False) for m in c.models]  # <0.2 safe, >=0.8 nsfw
    for m, code in zip(c.models, codes, strict=True):
        code[m.scores == 0.8] = 1  # exactly 0.8 is review
        assert m.flags("bands").tolist() == code.tolist()
    k = c.kappa[0][1]
    assert (k is None) or k == pytest.approx(cohen_kappa_score(*codes))


def test_per_class_confusion_of_a_multi_class_model_is_five_by_two(comparison: Comparison) -> None:
    open_nsfw, five = comparison.models
    assert open_nsfw.class_confusion is None
    table = five.class_confusion
    assert table is not None and list(table) == list(FIVE)
    top = five.probs.argmax(axis=1)
    for i, cls in enumerate(FIVE):
        assert table[cls]["nsfw"] == int(np.sum((top == i) & (comparison.labels == 1)))
    assert sum(r["safe"] + r["nsfw"] for r in table.values()) == len(comparison.paths)


def test_judge_card_names_cards_weights_thresholds_and_versions(comparison: Comparison) -> None:
    judge = json.loads(json.dumps(comparison.to_dict()))["judge"]
    assert judge["versions"]["nsfwlab"] and judge["versions"]["scikit-learn"]
    first, second = judge["models"]
    assert first["id"] == "open_nsfw" and first["weights_sha256"] == ONNX_SHA256
    assert first["backend"] == "onnxruntime" == comparison.models[0].to_dict()["backend"]
    assert first["card"]["input"]["resize"] == "yahoo-exact"
    assert second["card"]["classes"] == list(FIVE)
    assert second["card"]["nsfw_score"] == "Hentai + Porn (Sexy reported beside)"
    assert first["threshold_at_fpr"] == comparison.models[0].at_fpr.threshold
    assert first["bands"] == {"safe_below": 0.2, "nsfw_above": 0.8}
    assert judge["params"]["fpr"] == 0.2 and judge["params"]["n_boot"] == 50
    assert len(judge["data"]["sha256"]) == 64


def test_data_fingerprint_follows_content_and_labels_not_paths(tmp_path: Path, data_dir: Path, models: list) -> None:
    moved = shutil.copytree(data_dir, tmp_path / "elsewhere")
    fast = models[1:]
    a = compare(load_labelled(data_dir), fast, n_boot=5).judge["data"]["sha256"]
    b = compare(load_labelled(moved), fast, n_boot=5).judge["data"]["sha256"]
    assert a == b
    shutil.move(moved / "safe" / "chelsea.jpg", moved / "nsfw" / "chelsea.jpg")
    assert compare(load_labelled(moved), fast, n_boot=5).judge["data"]["sha256"] != a


def test_each_image_is_decoded_once_for_all_models(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    import nsfwlab.imageio as imageio

    calls: list[str] = []
    real = imageio.load_image
    monkeypatch.setattr(imageio, "load_image", lambda src, *a, **k: calls.append(str(src)) or real(src, *a, **k))
    other = fake_five()
    other.id = "fake-five-b"
    c = compare(load_labelled(data_dir), [fake_five(), other], n_boot=5, batch_size=4)
    assert sorted(calls) == sorted(c.paths) and len(c.paths) == 19
    assert all(m.images_per_second > 0 for m in c.models)


def test_unreadable_files_are_reported_and_left_out(tmp_path: Path, data_dir: Path) -> None:
    root = shutil.copytree(data_dir, tmp_path / "set")
    (root / "safe" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    listed = load_labelled(root)
    gone = LabelledItem(root / "safe" / "gone.jpg", 0)  # listed, then deleted: unreadable before decoding
    events: list = []
    c = compare(LabelledSet((*listed.items, gone), listed.source), [fake_five()], n_boot=5, progress=events.append)
    assert (events[-1].done, events[-1].total) == (21, 21)  # unreadable files count as done
    assert len(c.paths) == 19 and not any(p.endswith(("broken.jpg", "gone.jpg")) for p in c.paths)
    assert sorted(Path(p.path).name for p in c.hygiene.unreadable) == ["broken.jpg", "gone.jpg"]


def test_an_ensemble_is_one_model_whose_judge_lists_its_members(data_dir: Path) -> None:
    other = fake_five()
    other.id = "fake-five-b"
    ensemble = zoo.EnsembleModel("ensemble:fake-five+fake-five-b:max", [fake_five(), other], "max")
    c = compare(load_labelled(data_dir), [ensemble, fake_five()], n_boot=5)
    assert c.models[0].class_confusion is None  # its "classes" are members, not categories
    np.testing.assert_allclose(c.models[0].scores, c.models[1].scores, atol=1e-6)
    judge = c.judge["models"][0]
    assert judge["ensemble"] == "ensemble:fake-five+fake-five-b:max" and judge["combine"] == "max"
    assert [m["weights_sha256"] for m in judge["members"]] == ["ab" * 32] * 2


def test_a_set_with_no_readable_image_of_a_class_is_a_config_error(tmp_path: Path) -> None:
    for cls in ("safe", "nsfw"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "safe" / "black.png")
    with pytest.raises(ConfigError, match="both safe and NSFW"):
        compare(load_labelled(tmp_path), [fake_five()], n_boot=5)


def test_public_names_are_pinned() -> None:
    from nsfwlab.evaluate import compare as compare_module
    from nsfwlab.evaluate import compare_report

    assert compare_module.__all__ == ["AGREEMENTS", "MAX_MODELS", "Comparison", "Disagreement", "ModelResult",
                                      "Scorer", "compare", "load_models"]
    assert compare_report.__all__ == ["pr_overlay_png", "render_compare_report", "roc_overlay_png"]
    assert all(hasattr(compare_module, n) for n in compare_module.__all__)


def test_disagreements_come_highest_spread_first(comparison: Comparison) -> None:
    top = comparison.disagreements(5)
    assert [d.spread for d in top] == sorted((d.spread for d in top), reverse=True)
    d = top[0]
    assert d.spread == pytest.approx(max(d.scores.values()) - min(d.scores.values()))
    gaps = np.abs(comparison.models[0].scores - comparison.models[1].scores)
    assert d.spread == pytest.approx(gaps.max())


def test_warns_when_figures_rest_on_few_images(comparison: Comparison) -> None:
    text = " ".join(comparison.warnings)
    assert "open_nsfw: ROC AUC and average precision rest on" in text
    assert "kappa matrix rests on 19 images" in text


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"fpr": 1.0}, "fpr"), ({"fpr": -0.1}, "fpr"), ({"agreement": "votes"}, "agreement"),
    ({"batch_size": 0}, "batch_size"), ({"n_boot": 0}, "n_boot"),
])
def test_bad_parameters_are_config_errors_naming_them(data_dir: Path, kwargs: dict, param: str) -> None:
    with pytest.raises(ConfigError) as err:
        compare(load_labelled(data_dir), [fake_five()], **kwargs)
    assert err.value.param == param


def test_models_must_be_distinct_known_and_present(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        compare(load_labelled(data_dir), [])
    with pytest.raises(ConfigError, match="twice"):
        compare(load_labelled(data_dir), [fake_five(), fake_five()])
    with pytest.raises(ConfigError, match="twice"):
        load_models(["open_nsfw", "open_nsfw"])
    with pytest.raises(ConfigError, match="at least one"):
        load_models(["open_nsfw", ""])
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'"):
        load_models(["no-such-model"])
    with pytest.raises(ConfigError, match="at most 16"):
        load_models([f"model-{i}" for i in range(17)])  # refused before any is loaded
    many = [fake_five() for _ in range(17)]
    for i, m in enumerate(many):
        m.id = f"fake-{i}"
    with pytest.raises(ConfigError, match="at most 16"):
        compare(load_labelled(data_dir), many)


def test_cli_writes_json_scores_plots_and_report(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compare", str(data_dir), "--models", "open_nsfw", "--out", str(out),
                                      "--bootstrap", "20", "--fpr", "0.1"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"compare.json", "scores.csv", "roc.png", "pr.png", "report.html"}
    d = json.loads((out / "compare.json").read_text())
    assert d["agreement"]["kappa"] == [[1.0]] and d["models"][0]["at_fpr"]["target_fpr"] == 0.1
    assert (out / "scores.csv").read_text().splitlines()[0] == "path,label,open_nsfw"
    assert "open_nsfw: ROC AUC" in result.stdout


def test_cli_unknown_model_is_a_one_line_usage_error(tmp_path: Path, data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["compare", str(data_dir), "--models", "open_nsfw,nope", "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown --models 'nope'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["compare", str(data_dir), "--models", "open_nsfw", "--out", str(tmp_path / "o"),
                                      "--agreement", "votes"])
    assert result.exit_code == 2 and "--agreement" in result.output


def _browser(fn):  # type: ignore[no-untyped-def]
    for mark in MARKS:
        fn = mark(fn)
    return fn


@_browser
def test_report_renders_in_chromium_blurred_with_no_errors(tmp_path: Path, comparison: Comparison) -> None:
    plots = {"roc": roc_overlay_png(comparison), "pr": pr_overlay_png(comparison)}
    thumbs = {d.path: thumbnail(d.path) for d in comparison.disagreements(6)}
    report = tmp_path / "report.html"
    report.write_text(render_compare_report(comparison, plots, thumbs, max_gallery=6), encoding="utf-8")
    with open_page(report) as (page, errors):
        console: list[str] = []
        page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
        page.reload()
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("img[id^=plot-]").count() == 2
        assert page.locator("#models tr").count() == 3
        assert page.locator("#kappa tr").count() == 3
        assert "fake-five" in page.locator("table.classes").inner_text()
        assert ONNX_SHA256 in page.locator("#judge").inner_text()
        thumbs_loc = page.locator("figure.thumb img")
        assert thumbs_loc.count() == 6
        blur = "el => getComputedStyle(el).filter"
        assert all("blur" in thumbs_loc.nth(i).evaluate(blur) for i in range(6))
        page.locator("figure.thumb .frame").first.click()
        page.wait_for_timeout(250)  # the CSS transition
        assert thumbs_loc.nth(0).evaluate(blur) == "none"
        assert errors == [] and console == []


@pytest.mark.slow
def test_nsfwjs_models_compare_beside_open_nsfw(data_dir: Path) -> None:
    if not zoo.installed("nsfwjs-mobilenetv2"):
        pytest.skip("nsfwjs-mobilenetv2 weights are not in NSFWLAB_HOME: run setup.sh or "
                    "`nsfwlab models fetch nsfwjs-mobilenetv2`")
    c = compare(load_labelled(data_dir), load_models(["open_nsfw", "nsfwjs-mobilenetv2"]), n_boot=20)
    nsfwjs = c.models[1]
    assert nsfwjs.class_confusion is not None and list(nsfwjs.class_confusion) == list(FIVE)
    assert nsfwjs.metrics.roc_auc.value == pytest.approx(roc_auc_score(c.labels, nsfwjs.scores))
    assert c.judge["models"][1]["weights_sha256"] == zoo.get_card("nsfwjs-mobilenetv2").weights.sha256
