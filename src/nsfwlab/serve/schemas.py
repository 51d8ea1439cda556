"""The request and response models of the HTTP API (its OpenAPI document)."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from ..config import Label
from .review import ReviewLabel

__all__ = ["ERROR_RESPONSES", "SCORE_BODY", "ErrorResponse", "LabelRequest", "ReviewFilter", "ScoreItem",
           "ScoreResponse", "inline_schema"]


class ScoreItem(BaseModel):
    """One uploaded image: a score and label, or the error that stopped it."""

    filename: str
    score: float | None = Field(default=None, ge=0.0, le=1.0, description="NSFW probability (absent on error)")
    label: Label | None = Field(default=None, description="safe / review / nsfw by the server's thresholds")
    review_id: str | None = Field(default=None, description="sha256 of the image when it was queued for review")
    error: str | None = Field(default=None, description="what was wrong with this image (absent on success)")
    code: str | None = Field(default=None, description="machine-readable error code (absent on success)")


class ScoreResponse(BaseModel):
    results: list[ScoreItem]
    model: dict[str, Any]


class ErrorResponse(BaseModel):
    error: str
    code: str


class ReviewFilter(str, Enum):
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
        400: "malformed request", 401: "missing or invalid API key", 404: "no such item, or review is disabled",
        413: "body, image or file count over a cap", 415: "not an allowed image format",
        422: "truncated, corrupt or empty image, or an invalid parameter", 429: "overloaded or rate limited, retry",
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
