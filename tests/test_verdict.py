"""nsfwlab.verdict on hand-made raw output: bands, calibration, frames and segments, the bank's rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from nsfwlab import Detector, Label, Thresholds
from nsfwlab.frames import FrameOptions
from nsfwlab.verdict import (
    BankCheck,
    Kind,
    Policy,
    band_counts,
    check_bank,
    decide_frames,
    decide_still,
    kind_of,
    may_hold_frames,
    stop_early,
)
from synthetic import HALF_UP, RED, RedFraction, animation


def test_a_still_is_calibrated_then_banded() -> None:
    v = decide_still(0.1, Policy())
    assert (v.score, v.raw_score, v.label, v.kind, v.calibrated) == (0.1, 0.1, Label.SAFE, Kind.IMAGE, False)
    v = decide_still(0.1, Policy(calibration=HALF_UP))
    assert v.score == pytest.approx(0.55) and v.raw_score == 0.1 and v.label is Label.REVIEW and v.calibrated
    assert decide_still(0.81, Policy()).label is Label.NSFW
    assert decide_still(0.81, Policy(Thresholds(0.2, 0.9))).label is Label.REVIEW


def test_segment_times_are_rounded_to_the_millisecond() -> None:
    """0.4 s frames whose times are float sums end at 1.2000000000000002 s: reported as 1.2."""
    times = [0.0, 0.4, 0.4 + 0.4]
    raws = [0.0, 0.9, 0.95]
    assert times[2] + 0.4 != 1.2  # the float sum that used to be printed
    v = decide_frames("video", times, [0.4] * 3, raws, Policy())
    assert v.segments == ((0.4, 1.2, 0.95),) and v.label is Label.NSFW and v.frames == 3
    assert v.score == 0.95 and v.raw_score == 0.95


def test_frames_are_calibrated_one_by_one_and_aggregated() -> None:
    raws = [0.0, 0.2, 0.4, 1.0]
    v = decide_frames(Kind.ANIMATION, [0, 1, 2, 3], [1] * 4, raws,
                      Policy(calibration=HALF_UP, frames=FrameOptions(aggregate="mean")))
    assert [s for _, s in v.frame_scores] == pytest.approx([0.5, 0.6, 0.7, 1.0])
    assert v.score == pytest.approx(0.7) and v.raw_score == pytest.approx(0.4) and v.label is Label.REVIEW
    assert v.segments == ((3.0, 4.0, 1.0),)
    assert stop_early([0.5, 0.9], Policy()) and not stop_early([0.5, 0.9, 0.2], Policy(frames=FrameOptions(
        min_consecutive=2)))


def test_a_bank_match_decides_the_label_and_a_skip_says_why() -> None:
    from nsfwlab.bank import Decision, Match

    match = Match(Decision.SAFE, 3, "review:1")
    v = decide_still(0.99, Policy(), BankCheck(match))
    assert v.label is Label.SAFE and v.score == 0.99 and v.match == match and v.to_row()["match"]["distance"] == 3
    v = decide_still(0.99, Policy(), BankCheck(skipped="too featureless"))
    assert v.label is Label.NSFW and v.match is None and v.match_skipped == "too featureless"


def test_check_bank_refuses_videos_and_animations_and_featureless_images(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("pdqhash")
    from nsfwlab.bank import Bank

    assert check_bank(None, b"anything", Kind.IMAGE, 31) is None
    with Bank(tmp_path / "b.sqlite3") as bank:
        for kind in (Kind.VIDEO, Kind.ANIMATION):
            check = check_bank(bank, b"", kind, 31)
            assert check is not None and check.match is None and "not matched" in (check.skipped or "")
        flat = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 128, 128)).save(flat, format="PNG")
        check = check_bank(bank, flat.getvalue(), Kind.IMAGE, 31)
        assert check is not None and "quality" in (check.skipped or "") and not check.failed
        broken = check_bank(bank, b"not an image", Kind.IMAGE, 31)
        assert broken is not None and broken.failed and broken.skipped


def test_kinds_by_content() -> None:
    gif = animation([(1, 2, 3), RED])
    still = animation([RED])
    assert kind_of(gif) is Kind.ANIMATION and kind_of(still) is Kind.IMAGE and kind_of(b"\xff\xd8\xff") is Kind.IMAGE
    assert may_hold_frames(gif[:32]) and not may_hold_frames(b"\xff\xd8\xff\xe0")


def test_band_counts() -> None:
    assert band_counts(np.array([0.1, 0.2, 0.5, 0.8, 0.81]), Thresholds()) == {"safe": 1, "review": 3, "nsfw": 1}


def test_policy_description_changes_with_each_part() -> None:
    base = Policy().describe()
    assert Policy(calibration=HALF_UP).describe()["calibration"] != base["calibration"]
    assert Policy(Thresholds(0.1, 0.8)).describe()["thresholds"] != base["thresholds"]
    assert Policy(frames=FrameOptions(aggregate="mean")).describe()["aggregate"] != base["aggregate"]
    assert Policy().describe("bank#3")["bank"] != base["bank"]


def test_score_is_deprecated_for_nsfw_score_and_classify() -> None:
    det = Detector(RedFraction())
    img = np.zeros((40, 40, 3), np.uint8)
    img[:20] = RED
    with pytest.warns(DeprecationWarning, match="nsfw_score"):
        old = det.score(img)
    assert det.nsfw_score(img) == old and det.classify(img).score == old
    assert det.classify(img).label is det.score_many([img])[0].label
