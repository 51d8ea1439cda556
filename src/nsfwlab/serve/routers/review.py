"""The review page (``GET /review``) and its API under ``/v1/review`` (behind the API key)."""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Security
from fastapi.responses import HTMLResponse, Response

from ..deps import Caller, authenticated, get_service, json_body
from ..errors import NotFoundError
from ..matching import bank_review_decision
from ..review import ReviewStatus
from ..schemas import ERROR_RESPONSES, LabelRequest, ReviewFilter, inline_schema
from ..service import Service

__all__ = ["api", "page"]

page = APIRouter(tags=["review"])
api = APIRouter(prefix="/v1/review", tags=["review"], dependencies=[Security(authenticated)],
                responses={code: ERROR_RESPONSES[code] for code in (401, 403, 404, 422)})

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # The page loads nothing from elsewhere: its own script and style, thumbnails as blobs.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
}
_SHA = Path(..., pattern="^[0-9a-f]{64}$", description="sha256 of the image")


@functools.cache
def _page_html() -> str:
    return files("nsfwlab.serve").joinpath("static/review.html").read_text(encoding="utf-8")


@page.get("/review", summary="The human-review page", response_class=HTMLResponse)
async def review_page() -> HTMLResponse:
    return HTMLResponse(_page_html(), headers=_PAGE_HEADERS)


_LIMIT = Query(50, ge=1, le=500, description="items in this page")
_OFFSET = Query(0, ge=0, le=2**53, description="items to skip (the previous page's next_offset)")


def _page(entries: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    end = offset + len(entries)
    return {"total": total, "limit": limit, "offset": offset, "next_offset": end if end < total else None}


@api.get("/items", summary="Items queued for review, a page at a time")
async def review_items(svc: Service = Depends(get_service), status: ReviewFilter = ReviewFilter.PENDING,
                       limit: int = _LIMIT, offset: int = _OFFSET) -> dict[str, Any]:
    """``total`` counts the items with this status; ``next_offset`` is ``null`` on the last page."""
    store = svc.review.require_store()
    wanted = None if status is ReviewFilter.ALL else ReviewStatus(status.value)

    def read() -> tuple[list[dict[str, Any]], int, dict[str, int]]:
        items = [i.to_dict() for i in store.items(wanted, limit=limit, offset=offset)]
        return items, store.count(wanted), store.counts()

    items, total, counts = await svc.run(read)
    return {"items": items, "counts": counts, **_page(items, total, limit, offset)}


@api.get("/audit", summary="The audit log of review decisions, oldest first")
async def review_audit(svc: Service = Depends(get_service), limit: int = _LIMIT,
                       offset: int = _OFFSET) -> dict[str, Any]:
    """Every decision: review id, label, the label it replaced, reviewer, API key id, time."""
    store = svc.review.require_store()

    def read() -> tuple[list[dict[str, Any]], int]:
        return [e.to_dict() for e in store.audit(limit=limit, offset=offset)], store.audit_count()

    entries, total = await svc.run(read)
    return {"entries": entries, **_page(entries, total, limit, offset)}


@api.get("/items/{sha256}/thumbnail", summary="A review item's thumbnail (JPEG)", response_class=Response)
async def review_thumbnail(sha256: str = _SHA, svc: Service = Depends(get_service)) -> Response:
    path = svc.review.require_store().thumbnail_path(sha256)

    def read() -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no review item {sha256!r}") from None

    data = await svc.run(read)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@api.post("/items/{sha256}/label", summary="Label a review item",
          responses={413: {**ERROR_RESPONSES[413], "description": "body over max_json_bytes"},
                     415: {**ERROR_RESPONSES[415], "description": "body not sent as application/json"}},
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": inline_schema(LabelRequest)}}}})
async def review_label(sha256: str = _SHA, body: LabelRequest = Depends(json_body(LabelRequest)),
                       who: Caller = Security(authenticated), svc: Service = Depends(get_service)) -> dict[str, Any]:
    """A safe or nsfw decision on a still image also enters the hash bank (when the server has one):
    ``bank`` in the answer says whether it was banked, with its PDQ hash."""
    store = svc.review.require_store()
    item = await svc.run(lambda: store.set_label(sha256, body.label, body.reviewer, key_id=who.key_id))
    svc.metrics.review_labels.labels(label=body.label.value).inc()
    banked = await svc.run(bank_review_decision, svc.bank, store, item, svc.metrics)
    return item.to_dict() if banked is None else {**item.to_dict(), "bank": banked.to_dict()}
