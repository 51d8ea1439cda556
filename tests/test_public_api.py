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

