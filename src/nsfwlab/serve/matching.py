"""The service's hash bank (:mod:`nsfwlab.bank`): opening it, matching still uploads before the
model, and banking reviewers' decisions.

- Matching: a still image's PDQ hash (computed in the decode pool from the image decoded for the
  model, so it is decoded once) is looked up within ``ServeConfig.match_distance`` bits through
  :func:`nsfwlab.verdict.check_bank`, whose rules are those of ``score`` and ``scan``: images
  below PDQ's quality floor are never matched, nor are videos and animations (one frame's hash is
  not the file's); the answer's ``match_skipped`` says why.
- Banking: when a reviewer labels a still image ``safe`` or ``nsfw``, its hash enters the bank
  with that decision, the reviewer, the time and the source ``review:<id>``. ``skip`` banks
  nothing (and leaves an earlier decision in place; a later safe/nsfw replaces it).

A bank failure (a locked or full disk) is logged and counted; it never loses a score or a label.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import verdict
from ..bank import Bank, PdqHash
from ..config import DecodeLimits
from ..errors import ConfigError, NsfwlabError
from ..frames import media_kind
from ..imageio import ImageInput
from ..verdict import BankCheck, Kind
from .metrics import ServiceMetrics
from .review import ReviewItem, ReviewStatus, ReviewStore

__all__ = ["BankOutcome", "bank_review_decision", "check_bank", "lookup_upload", "open_bank"]

log = logging.getLogger("nsfwlab.serve")


def check_bank(path: Path | None) -> None:
    """A usable bank file and the PDQ hasher, or a ConfigError now (not at the first upload)."""
    if path is None:
        return
    if importlib.util.find_spec("pdqhash") is None:
        raise ConfigError("the hash bank needs the pdqhash package: pip install 'nsfwlab[bank]' (or drop --bank)")
    Bank(path).close()


def open_bank(path: Path | None, limits: DecodeLimits) -> Bank | None:
    return None if path is None else Bank(path, limits=limits)


def lookup_upload(bank: Bank | None, image: ImageInput | None, kind: Kind, max_distance: int,
                  metrics: ServiceMetrics) -> BankCheck | None:
    """The bank check of an upload (``image``: a decoded still; None for a video or animation), or
    None without a bank. Blocking (PDQ): run in the pool. A failed lookup is logged and counted."""
    check = verdict.check_bank(bank, image, kind, max_distance)
    if check is None:
        return None
    if check.failed:  # the score matters more than the match
        log.error("bank lookup failed: %s", check.skipped)
        metrics.errors.labels(code="bank_lookup_failed").inc()
    elif check.match is not None:
        metrics.bank_matches.labels(decision=check.match.decision.value).inc()
    return check


@dataclass(frozen=True)
class BankOutcome:
    """What banking a review decision did: the image's PDQ hash, and why it was not banked."""

    hash: PdqHash | None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"banked": self.skipped is None, "pdq": self.hash.hex if self.hash else None,
                "quality": self.hash.quality if self.hash else None, "skipped": self.skipped}


def bank_review_decision(bank: Bank | None, store: ReviewStore, item: ReviewItem,
                         metrics: ServiceMetrics) -> BankOutcome | None:
    """Bank a reviewer's safe/nsfw decision on a still image (None: no bank, or not a decision).
    Blocking (reads the stored original, hashes it): run in the pool."""
    if bank is None or item.status not in (ReviewStatus.SAFE, ReviewStatus.NSFW):
        return None
    outcome = _bank(bank, store, item)
    metrics.bank_added.labels(outcome="added" if outcome.skipped is None else "skipped").inc()
    return outcome


def _bank(bank: Bank, store: ReviewStore, item: ReviewItem) -> BankOutcome:
    try:
        data = store.image_path(item).read_bytes()
        if media_kind(data) != "image":
            return BankOutcome(None, "videos and animations are not banked (one frame's hash is not the file's)")
        lookup = bank.add_image(data, item.status.value, f"review:{item.sha256}", reviewer=item.reviewer)
    except Exception as exc:  # e.g. a locked bank file: the label itself is kept
        log.error("could not bank review %s: %s", item.sha256, _describe(exc))
        return BankOutcome(None, f"not banked: {_describe(exc)}")
    return BankOutcome(lookup.hash, lookup.skipped)


def _describe(exc: Exception) -> str:
    return exc.message if isinstance(exc, NsfwlabError) else f"{type(exc).__name__}: {exc}"
