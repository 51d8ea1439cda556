"""The hash bank in the HTTP service: a reviewer's decision comes back for a near-duplicate upload.

The Detector is a fake backend that scores every image 0.5, in the review band, so every upload
that is not matched goes to the review queue; the photos are scikit-image's."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwlab import Detector
from nsfwlab.bank import Bank
from nsfwlab.serve import ServeConfig, create_app
from test_serve_api import ConstantBackend, jpeg_bytes

pytest.importorskip("pdqhash")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def near_copy(arr: np.ndarray) -> bytes:
    """Resized to 90% and re-encoded as JPEG quality 80."""
    img = Image.fromarray(arr)
    img = img.resize((img.width * 9 // 10, img.height * 9 // 10), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _one(resp) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == 200, resp.text
    (item,) = resp.json()["results"]
    return item


def test_a_near_copy_of_a_reviewed_image_takes_the_reviewers_decision(tmp_path: Path,
                                                                       photos: dict[str, np.ndarray]) -> None:
    config = ServeConfig(data_dir=tmp_path / "data", bank=tmp_path / "bank.sqlite3")
    with TestClient(create_app(config, Detector(ConstantBackend(0.5)))) as c:
        first = _one(c.post("/v1/score?filename=astronaut.jpg", content=jpeg_bytes(photos["astronaut"])))
        assert first["label"] == "review" and "match" not in first
        rid = first["review_id"]
        labelled = c.post(f"/v1/review/items/{rid}/label", json={"label": "nsfw", "reviewer": "ann"}).json()
        assert labelled["bank"]["banked"] is True and labelled["bank"]["quality"] >= 50

        copy = _one(c.post("/v1/score?filename=copy.jpg", content=near_copy(photos["astronaut"])))
        assert copy["label"] == "nsfw" and copy["score"] == pytest.approx(0.5)  # the model's score, still
        assert copy["match"]["decision"] == "nsfw" and copy["match"]["source"] == f"review:{rid}"
        assert 0 <= copy["match"]["distance"] <= 31
        assert "review_id" not in copy  # a decided image needs no human

        other = _one(c.post("/v1/score?filename=coffee.jpg", content=jpeg_bytes(photos["coffee"])))
        assert "match" not in other and other["label"] == "review" and other["review_id"]
        # skip banks nothing; a reviewer's later safe replaces the banked nsfw
        skipped = c.post(f"/v1/review/items/{other['review_id']}/label", json={"label": "skip"}).json()
        assert "bank" not in skipped
        c.post(f"/v1/review/items/{rid}/label", json={"label": "safe", "reviewer": "bob"})
        again = _one(c.post("/v1/score", content=near_copy(photos["astronaut"])))
        assert again["label"] == "safe" and again["match"]["decision"] == "safe"
        metrics = c.app.state.service.metrics  # type: ignore[attr-defined]
        assert metrics.sample("nsfwlab_bank_matches_total", {"decision": "nsfw"}) == 1.0

    with Bank(tmp_path / "bank.sqlite3") as bank:  # persisted with its reviewer and time
        (entry,) = list(bank.entries())
        assert (entry.decision.value, entry.source, entry.reviewer) == ("safe", f"review:{rid}", "bob")
        assert entry.added_at is not None and entry.added_at > 0


def test_featureless_images_are_neither_banked_nor_matched(tmp_path: Path) -> None:
    flat = jpeg_bytes(np.full((64, 64, 3), 128, np.uint8))
    config = ServeConfig(data_dir=tmp_path / "data", bank=tmp_path / "bank.sqlite3")
    with TestClient(create_app(config, Detector(ConstantBackend(0.5)))) as c:
        rid = _one(c.post("/v1/score", content=flat))["review_id"]
        labelled = c.post(f"/v1/review/items/{rid}/label", json={"label": "nsfw"}).json()
        assert labelled["bank"]["banked"] is False and "quality" in labelled["bank"]["skipped"]
        assert "match" not in _one(c.post("/v1/score", content=flat))


def test_an_unusable_bank_file_is_refused_before_the_server_starts(tmp_path: Path) -> None:
    from nsfwlab.errors import ConfigError

    bad = tmp_path / "bank.sqlite3"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="cannot open bank"):
        create_app(ServeConfig(bank=bad), Detector(ConstantBackend(0.5)))

