"""Metrics agree with scikit-learn; recommended thresholds meet their targets on the data they
were fitted to (and are the least costly that do); bootstrap intervals are seeded and sane."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from nsfwlab.config import Label, Thresholds
from nsfwlab.errors import ConfigError
from nsfwlab.evaluate.metrics import (
    Recommendation,
    TargetKind,
    TargetRate,
    bootstrap_interval,
    compute_metrics,
    confusion,
    fast_average_precision,
    fast_roc_auc,
    recommend_threshold,
    recommend_thresholds,
)


def _data(n: int = 300, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * y)))
    if ties:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("ties", [False, True])
def test_point_estimates_agree_with_sklearn(ties: bool) -> None:
    y, s = _data(ties=ties)
    m = compute_metrics(y, s, n_boot=50, seed=1)
    assert m.roc_auc.value == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m.average_precision.value == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert (m.n, m.n_pos, m.n_neg) == (len(y), int(y.sum()), int((1 - y).sum()))
    # confusion at the current bands, against sklearn's confusion_matrix
    tn, fp, fn, tp = confusion_matrix(y, (s > 0.8).astype(int), labels=[0, 1]).ravel()
    c = m.at_nsfw_above
    assert (c.tn, c.fp, c.fn, c.tp) == (tn, fp, fn, tp)
    tn, fp, fn, tp = confusion_matrix(y, (s >= 0.2).astype(int), labels=[0, 1]).ravel()
    c = m.at_safe_below
    assert (c.tn, c.fp, c.fn, c.tp) == (tn, fp, fn, tp)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 200), ties=st.booleans())
def test_bootstrap_statistics_equal_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = _data(n=n, seed=seed, ties=ties)
    y[:2] = [0, 1]
    assert fast_roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert fast_average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_confusion_by_hand() -> None:
    y = [0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.5, 0.9, 0.5, 0.6, 0.95, 0.05]
    c = confusion(y, s, 0.5, ">")
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 2, 2)
    assert c.recall == pytest.approx(0.5) and c.fpr == pytest.approx(1 / 3) and c.precision == pytest.approx(2 / 3)
    c = confusion(y, s, 0.5, ">=")
    assert (c.tp, c.fp, c.tn, c.fn) == (3, 2, 1, 1)


def test_bands_follow_thresholds_label() -> None:
    y, s = _data(seed=3)
    th = Thresholds(0.3, 0.6)
    m = compute_metrics(y, s, thresholds=th, n_boot=10)
    for name, cls in (("safe", 0), ("nsfw", 1)):
        labels = [th.label(v) for v in s[y == cls]]
        assert m.bands[name] == {"safe": labels.count(Label.SAFE), "review": labels.count(Label.REVIEW),
                                 "nsfw": labels.count(Label.NSFW)}


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    y, s = _data(n=200, seed=5)
    a = bootstrap_interval(y, s, roc_auc_score, n_boot=200, seed=7)
    b = bootstrap_interval(y, s, roc_auc_score, n_boot=200, seed=7)
    c = bootstrap_interval(y, s, roc_auc_score, n_boot=200, seed=8)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.low <= a.value <= a.high
    assert 0.02 < a.high - a.low < 0.3
    # more data, narrower interval
    y2, s2 = _data(n=3000, seed=5)
    wide = bootstrap_interval(y2, s2, roc_auc_score, n_boot=100, seed=7)
    assert wide.high - wide.low < a.high - a.low


def test_bootstrap_of_a_perfect_separator_is_degenerate() -> None:
    y = np.array([0] * 20 + [1] * 10)
    s = np.concatenate([np.linspace(0, 0.4, 20), np.linspace(0.6, 1, 10)])
    iv = bootstrap_interval(y, s, roc_auc_score, n_boot=50)
    assert (iv.value, iv.low, iv.high) == (1.0, 1.0, 1.0)


def _check_recommendation(y: np.ndarray, s: np.ndarray, target: TargetRate) -> None:
    rec = recommend_threshold(y, s, target)
    distinct = np.unique(np.concatenate([[0.0], s]))
    if target.kind is TargetKind.FPR:
        fpr = np.sum((s > rec.threshold) & (y == 0)) / np.sum(y == 0)
        assert rec.met and fpr <= target.value + 1e-12
        lower = distinct[distinct < rec.threshold]
        if len(lower):  # the next lower threshold would break the target: this one is the least strict
            assert np.sum((s > lower[-1]) & (y == 0)) / np.sum(y == 0) > target.value
    elif target.kind is TargetKind.RECALL:
        recall = np.sum((s >= rec.threshold) & (y == 1)) / np.sum(y == 1)
        assert rec.met and recall >= target.value - 1e-12
        higher = distinct[distinct > rec.threshold]
        if len(higher):
            assert np.sum((s >= higher[0]) & (y == 1)) / np.sum(y == 1) < target.value
    else:
        _check_precision_recommendation(y, s, target, rec)


def _precision_at(y: np.ndarray, s: np.ndarray, t: float) -> float | None:
    """The precision of ``score > t``, or None when it flags no NSFW image (no usable threshold)."""
    flagged = s > t
    tp = int(np.sum(flagged & (y == 1)))
    return tp / int(np.sum(flagged)) if tp else None


def _check_precision_recommendation(y: np.ndarray, s: np.ndarray, target: TargetRate, rec: Recommendation) -> None:
    """Brute force over every threshold that changes the flagged set (0 and each distinct score):
    met <=> some threshold reaches the target; when met, the recommended one reaches it and no
    lower one does (maximum recall); the reported confusion is the one at the threshold."""
    candidates = np.unique(np.concatenate([[0.0], s]))
    reaching = [t for t in candidates if (p := _precision_at(y, s, t)) is not None and p >= target.value - 1e-12]
    assert rec.sets == "nsfw_above"
    assert rec.met == bool(reaching)
    assert rec.achieved == confusion(y, s, rec.threshold, ">")
    if rec.met:
        assert rec.threshold == reaching[0]
        precision = _precision_at(y, s, rec.threshold)
        assert precision is not None and precision >= target.value - 1e-12
        assert rec.achieved.tp == int(np.sum((s > rec.threshold) & (y == 1)))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(4, 120),
    fpr=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3]),
    recall=st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]),
    precision=st.sampled_from([0.5, 0.8, 0.95, 0.99, 1.0]),  # the last two are often unreachable
    ties=st.booleans(),
)
def test_recommendations_meet_targets_on_fitted_data(seed: int, n: int, fpr: float, recall: float,
                                                     precision: float, ties: bool) -> None:
    y, s = _data(n=n, seed=seed, ties=ties)
    y[:2] = [0, 1]  # both classes present
    for target in (TargetRate(TargetKind.FPR, fpr), TargetRate(TargetKind.RECALL, recall),
                   TargetRate(TargetKind.PRECISION, precision)):
        _check_recommendation(y, s, target)


def test_recommended_bands_meet_every_target_through_thresholds_label() -> None:
    y, s = _data(n=500, seed=11)
    targets = [TargetRate(TargetKind.FPR, 0.02), TargetRate(TargetKind.RECALL, 0.95), TargetRate(TargetKind.FPR, 0.05)]
    m = compute_metrics(y, s, targets=targets, n_boot=20)
    bands = m.recommended
    labels = np.array([bands.label(v).value for v in s])
    assert np.mean(labels[y == 0] == "nsfw") <= 0.02  # the strictest FPR target wins
    assert np.mean(labels[y == 1] != "safe") >= 0.95
    assert bands.nsfw_above == max(r.threshold for r in m.recommendations if r.sets == "nsfw_above")


def test_crossing_targets_give_an_empty_review_band() -> None:
    # well separated data: the recall threshold lies above the FPR threshold
    y = np.array([0] * 50 + [1] * 50)
    s = np.concatenate([np.linspace(0.0, 0.3, 50), np.linspace(0.7, 1.0, 50)])
    recs = [recommend_threshold(y, s, TargetRate(TargetKind.FPR, 0.1)),
            recommend_threshold(y, s, TargetRate(TargetKind.RECALL, 0.9))]
    bands = recommend_thresholds(recs, Thresholds())
    assert bands.safe_below == bands.nsfw_above
    labels = np.array([bands.label(v).value for v in s])
    assert np.mean(labels[y == 0] == "nsfw") <= 0.1 and np.mean(labels[y == 1] != "safe") >= 0.9


def test_unreachable_precision_is_reported_not_met() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.9, 0.8, 0.2, 0.1])  # the highest scores are all safe
    rec = recommend_threshold(y, s, TargetRate(TargetKind.PRECISION, 0.9))
    assert not rec.met
    _check_recommendation(y, s, rec.target)
    m = compute_metrics(y, s, targets=[rec.target], n_boot=5)
    assert m.recommended.nsfw_above == Thresholds().nsfw_above  # unmet targets do not move the bands


def test_errors_are_typed() -> None:
    with pytest.raises(ConfigError, match="both safe and NSFW"):
        compute_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="labels"):
        compute_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ConfigError, match="2 labels but 3 scores"):
        compute_metrics([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="finite"):
        compute_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ConfigError):
        TargetRate(TargetKind.RECALL, 0.0)
    with pytest.raises(ConfigError):
        TargetRate(TargetKind.FPR, 1.0)
    with pytest.raises(ConfigError):
        TargetRate("nope", 0.5)  # type: ignore[arg-type]


def test_counts_the_caller_gives_are_bounded_before_any_allocation() -> None:
    """``n_boot=10**9`` used to allocate a 7.5 GB array of replicates; every count has a documented maximum."""
    import time

    from nsfwlab.evaluate.calibrate import MAX_FOLDS, fit_calibration
    from nsfwlab.evaluate.metrics import MAX_BOOTSTRAP
    from nsfwlab.evaluate.plots import MAX_BINS, histogram_png, reliability_png

    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    t0 = time.perf_counter()
    for n_boot in (10**9, MAX_BOOTSTRAP + 1, 0, 2.5, True):
        with pytest.raises(ConfigError, match=r"n_boot must be an integer in \[1, 100000\]") as info:
            bootstrap_interval(y, s, fast_roc_auc, n_boot=n_boot)  # type: ignore[arg-type]
        assert info.value.param == "n_boot"
    with pytest.raises(ConfigError, match="n_boot"):
        compute_metrics(y, s, n_boot=10**9)
    with pytest.raises(ConfigError, match="level") as info:
        compute_metrics(y, s, level=float("nan"))
    assert info.value.param == "level"
    for bins in (10**9, 0, MAX_BINS + 1):
        with pytest.raises(ConfigError, match="bins must be") as info:
            histogram_png(y, s, bins=bins)
        with pytest.raises(ConfigError, match="bins must be"):
            reliability_png(y, s, bins=bins)
        assert info.value.param == "bins"
    with pytest.raises(ConfigError, match="folds must be") as info:
        fit_calibration(y, s, "platt", model_version="m", preprocess_version="p", folds=MAX_FOLDS + 1)
    assert info.value.param == "folds"
    assert time.perf_counter() - t0 < 5
    assert bootstrap_interval(y, s, fast_roc_auc, n_boot=MAX_BOOTSTRAP // 1000).n_boot == 100


def test_cli_bounds_name_their_flags(tmp_path) -> None:
    from typer.testing import CliRunner

    from nsfwlab.cli import app

    for sub in ("safe", "nsfw"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    runner = CliRunner()
    for args, flag in ((["--bootstrap", str(10**9)], "--bootstrap"), (["--gallery", str(10**9)], "--gallery"),
                       (["--calibration-folds", "1000"], "--calibration-folds")):
        res = runner.invoke(app, ["evaluate", str(tmp_path / "d"), "--out", str(tmp_path / "o"), *args])
        assert res.exit_code == 2, res.output
        assert f"{flag} must be an integer" in res.output and "Traceback" not in res.output


def test_clopper_pearson_matches_its_closed_forms() -> None:
    from nsfwlab.evaluate.uncertainty import clopper_pearson

    assert clopper_pearson(0, 30) == (0.0, pytest.approx(1 - 0.025 ** (1 / 30)))
    assert clopper_pearson(30, 30) == (pytest.approx(0.025 ** (1 / 30)), 1.0)
    low, high = clopper_pearson(7, 40, 0.9)
    low2, high2 = clopper_pearson(33, 40, 0.9)
    assert low == pytest.approx(1 - high2) and high == pytest.approx(1 - low2)  # symmetric
    assert low < 7 / 40 < high
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ConfigError):
        clopper_pearson(5, 3)


@pytest.mark.parametrize(("target", "upper"), [(0.01, True), (0.05, True), (0.95, False), (0.5, False)])
def test_min_examples_is_the_fewest_that_demonstrate(target: float, upper: bool) -> None:
    from nsfwlab.evaluate.uncertainty import clopper_pearson, min_examples

    n = min_examples(target, 0.95, upper=upper)
    assert n is not None

    def shown(m: int) -> bool:
        low, high = clopper_pearson(0 if upper else m, m)
        return high <= target if upper else low >= target

    assert shown(n) and not shown(n - 1)
    assert min_examples(0.01, 0.95, upper=True) == 368
    assert min_examples(0.0, upper=True) is None and min_examples(1.0, upper=False) is None


def test_an_fpr_target_met_on_too_few_safe_images_is_not_demonstrated() -> None:
    """30 safe images and no false positive used to read "fpr=0.01 met": the 95% interval of 0/30
    reaches 11.6%, so the data cannot support 1%; the JSON and warnings say so and by how much."""
    y = np.r_[np.zeros(30), np.ones(30)].astype(int)
    s = np.r_[np.linspace(0.0, 0.3, 30), np.linspace(0.6, 1.0, 30)]
    m = compute_metrics(y, s, targets=[TargetRate(TargetKind.FPR, 0.01)], n_boot=20)
    (rec,) = m.recommendations
    assert rec.met and not rec.demonstrated and rec.min_examples == 368
    assert rec.rate is not None and rec.rate.high == pytest.approx(1 - 0.025 ** (1 / 30))
    d = m.to_dict()["recommendations"][0]
    assert d["met"] is True and d["demonstrated"] is False and d["min_examples"] == 368
    assert d["rate_interval"]["ci_high"] == pytest.approx(0.1157, abs=1e-4)
    assert any("368 safe images" in w and "11.6%" in w for w in m.warnings)

    y = np.r_[np.zeros(400), np.ones(30)].astype(int)  # enough safe images: demonstrated
    s = np.r_[np.linspace(0.0, 0.3, 400), np.linspace(0.6, 1.0, 30)]
    (rec,) = compute_metrics(y, s, targets=[TargetRate(TargetKind.FPR, 0.01)], n_boot=20).recommendations
    # the least strict threshold meeting 1% lets 4 of 400 through (interval up to 2.5%): met, not
    # demonstrated; the threshold that flags no safe image demonstrates it (0/400: up to 0.92%)
    assert rec.met and not rec.demonstrated and rec.achieved.fp == 4
    assert rec.demonstrated_threshold == pytest.approx(0.3)
    assert "nsfw_above = 0.3 demonstrates it" in (rec.note() or "")
    strict = recommend_threshold(y, s, TargetRate(TargetKind.FPR, 0.03))  # 12/400 allowed; 5/400 demonstrates
    assert strict.met and not strict.demonstrated and strict.demonstrated_threshold is not None
    assert confusion(y, s, strict.demonstrated_threshold).fp == 5


def test_recall_and_auc_on_few_images_come_with_warnings() -> None:
    y = np.r_[np.zeros(40), np.ones(10)].astype(int)
    s = np.r_[np.linspace(0.0, 0.5, 40), np.linspace(0.4, 1.0, 10)]
    m = compute_metrics(y, s, targets=[TargetRate(TargetKind.RECALL, 0.9)], n_boot=50)
    (rec,) = m.recommendations
    assert rec.met and not rec.demonstrated and rec.rate is not None and rec.rate.low < 0.9
    assert rec.min_examples == 36  # 0.9 ** 35 > 0.025 >= 0.9 ** 36
    assert any(w.startswith("ROC AUC and average precision rest on 40 safe and 10 nsfw") for w in m.warnings)
    assert any("recall=0.9" in w and "36 nsfw images" in w for w in m.warnings)
    big = compute_metrics(np.r_[np.zeros(60), np.ones(60)].astype(int), np.r_[np.zeros(60), np.ones(60)],
                          targets=[], n_boot=20)
    assert big.warnings == ()


def test_the_report_shows_what_is_demonstrated_and_the_warnings() -> None:
    import json

    from nsfwlab.datasets import Hygiene
    from nsfwlab.evaluate import Evaluation, ScoredItem
    from nsfwlab.evaluate.report import render_report

    y = [0] * 30 + [1] * 30
    s = list(np.r_[np.linspace(0.0, 0.3, 30), np.linspace(0.6, 1.0, 30)])
    m = compute_metrics(y, s, targets=[TargetRate(TargetKind.FPR, 0.01)], n_boot=20)
    ev = Evaluation("set", tuple(ScoredItem(f"{i}.png", lab, sc) for i, (lab, sc) in enumerate(zip(y, s, strict=True))),
                    Hygiene(), m, {"model_version": "m"})
    html = render_report(ev, {}, {})
    assert "<div id=warnings>" in html and "368 safe images" in html
    assert "demonstrated</th>" in html and "&ge; 368 safe images" in html
    assert json.loads(json.dumps(ev.to_dict()))["warnings"] == list(m.warnings)
