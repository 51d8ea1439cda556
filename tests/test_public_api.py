"""Pins the public API: adding or removing a public name is a deliberate, reviewed change."""

from __future__ import annotations

import nsfwlab


def test_public_names() -> None:
    assert sorted(nsfwlab.__all__) == sorted([
        "BackendName", "BackendUnavailableError", "ConfigError", "CorruptImageError", "DecodeLimits",
        "Detector", "Device", "EmptyImageError", "FramesResult", "ImageError", "ImageTooLargeError", "Label",
        "MediaTooLongError", "ModelError", "NsfwlabError", "Precision", "PreprocessConfig", "ScoreResult", "Thresholds",
        "TruncatedImageError", "UnsupportedFormatError", "WeightsError", "__version__", "nsfw_score",
    ])
    for name in nsfwlab.__all__:
        assert hasattr(nsfwlab, name), name


def test_error_hierarchy() -> None:
    from nsfwlab import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, nsfwlab.NsfwlabError)
    assert issubclass(nsfwlab.TruncatedImageError, nsfwlab.CorruptImageError)
    assert issubclass(nsfwlab.ImageError, ValueError)
    codes = {getattr(errors, n).code for n in errors.__all__}
    assert len(codes) == len(errors.__all__)  # codes are unique


def test_evaluate_names_and_the_deprecated_target_alias() -> None:
    """The evaluation target is ``TargetRate``: ``Target`` is the lab's "what to maximise"
    (nsfwlab.objectives); the old evaluate name still imports, with a DeprecationWarning."""
    import warnings

    import pytest

    from nsfwlab import evaluate, objectives
    from nsfwlab.evaluate import metrics

    assert "TargetRate" in evaluate.__all__ and "Target" not in evaluate.__all__
    assert "Target" not in metrics.__all__ and hasattr(objectives, "Target")
    with pytest.warns(DeprecationWarning, match="use TargetRate"):
        from nsfwlab.evaluate import Target
    assert Target is evaluate.TargetRate
    with pytest.warns(DeprecationWarning):
        assert metrics.Target is metrics.TargetRate
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate.TargetRate("fpr", 0.01).name == "fpr=0.01"
    with pytest.raises(AttributeError):
        evaluate.NoSuchName  # noqa: B018


def test_verdict_names() -> None:
    """nsfwlab.verdict: the one place raw model output becomes an answer (used by Detector, scan, serve)."""
    from nsfwlab import verdict

    assert sorted(verdict.__all__) == sorted([
        "ANIMATED_FORMATS", "BankCheck", "FramesResult", "Kind", "Policy", "ScoreResult", "Verdict", "band_counts",
        "check_bank", "decide_frames", "decide_still", "kind_of", "may_hold_frames", "stop_early",
    ])
    for name in verdict.__all__:
        assert hasattr(verdict, name), name
    assert nsfwlab.ScoreResult is verdict.ScoreResult and nsfwlab.detector.ScoreResult is verdict.ScoreResult


def test_old_names_stay_importable_as_deprecated_aliases() -> None:
    import warnings

    from nsfwlab.scan import store

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.Decision is store.ScanAction
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert callable(nsfwlab.Detector.score) and callable(nsfwlab.Detector.nsfw_score)
