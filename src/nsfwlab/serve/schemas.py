"""The request and response models of the HTTP API (its OpenAPI document)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from ..bank import Decision
from ..config import Label
from .review import ReviewLabel

__all__ = ["ERROR_RESPONSES", "SCORE_BODY", "BankMatch", "ErrorResponse", "LabelRequest", "ReviewFilter", "ScoreItem",
           "ScoreResponse", "inline_schema"]


class BankMatch(BaseModel):
    """A human decision from the hash bank for a near-duplicate of this image."""

    decision: Decision = Field(description="the banked decision: safe or nsfw")
    distance: int = Field(ge=0, le=256, description="differing PDQ bits (of 256) to the banked hash")
    source: str = Field(description="where the decision came from: review:<id> or list:<name>")


class ScoreItem(BaseModel):
    """One uploaded image, animation or video: a score and label, or the error that stopped it."""

    filename: str
    score: float | None = Field(default=None, ge=0.0, le=1.0,
                                description="NSFW probability, calibrated when the server has a calibration "
                                            "(absent on error)")
    raw_score: float | None = Field(default=None, ge=0.0, le=1.0,
                                    description="the exact model score (only with a calibration)")
    label: Label | None = Field(default=None, description="safe / review / nsfw by the server's thresholds, or "
                                                          "the banked human decision when `match` is present")
    model: str | None = Field(default=None, description="the id of the model that scored it: on a server of several "
                                                        "models always; else only for a model other than open_nsfw")
    classes: dict[str, float] | None = Field(default=None, description="the class probabilities {name: probability} "
                                                                       "of a multi-class model (still images)")
    kind: str | None = Field(default=None, description="image, animation or video")
    frames: int | None = Field(default=None, description="frames scored (animations and videos)")
    segments: list[tuple[float, float, float]] | None = Field(
        default=None, description="[start_s, end_s, max_score] runs of frames above the NSFW threshold "
                                  "(animations and videos)")
    frame_scores: list[tuple[float, float]] | None = Field(
        default=None, description="[time_s, score] of every scored frame (with ?per_frame=1)")
    match: BankMatch | None = Field(default=None, description="the hash bank's decision (still images)")
    match_skipped: str | None = Field(default=None, description="why the hash bank was not consulted or could not "
                                                                "match (a video or animation, a featureless image)")
    review_id: str | None = Field(default=None, description="sha256 of the image when it was queued for review")
    error: str | None = Field(default=None, description="what was wrong with this image (absent on success)")
    code: str | None = Field(default=None, description="machine-readable error code (absent on success)")


class ScoreResponse(BaseModel):
    results: list[ScoreItem]
    model: dict[str, Any]


class ErrorResponse(BaseModel):
    error: str
    code: str


class ReviewFilter(StrEnum):
    PENDING = "pending"
    SAFE = "safe"
    NSFW = "nsfw"
    SKIP = "skip"
    ALL = "all"


class LabelRequest(BaseModel):
    label: ReviewLabel
    reviewer: str = Field("anonymous", min_length=1, max_length=64)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "malformed request", 401: "missing or invalid API key",
        403: "a state-changing request from another web origin, or a caller blocked for a query attack",
        404: "no such item, or review is disabled",
        413: "body, image, video length or file count over a cap",
        415: "not an allowed image or video format", 422: "truncated, corrupt or empty file, or an invalid parameter",
        429: "overloaded or rate limited, retry",
        503: "model not loaded yet, or shutting down",
    }.items()
}

SCORE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "video/mp4": {"schema": {"type": "string", "format": "binary"}},
    },
}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined (for a hand-declared OpenAPI body)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))
