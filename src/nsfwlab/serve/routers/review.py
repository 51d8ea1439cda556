"""The review page (``GET /review``) and its API under ``/v1/review`` (behind the API key)."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, Security
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from ..deps import Caller, authenticated, get_service
from ..errors import InvalidRequestError, NotFoundError, describe_validation
from ..limits import CountingReceive
from ..review import ReviewStatus
from ..schemas import ERROR_RESPONSES, LabelRequest, ReviewFilter, inline_schema
from ..service import Service

__all__ = ["api", "page"]

page = APIRouter(tags=["review"])
api = APIRouter(prefix="/v1/review", tags=["review"], dependencies=[Security(authenticated)],
                responses={code: ERROR_RESPONSES[code] for code in (401, 404, 422)})

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # The page loads nothing from elsewhere: its own script and style, thumbnails as blobs.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
}
_LABEL_BODY_CAP = 16 * 1024
_SHA = Path(..., pattern="^[0-9a-f]{64}$", description="sha256 of the image")


@page.get("/review", summary="The human-review page", response_class=HTMLResponse)
async def review_page() -> HTMLResponse:
    html = files("nsfwlab.serve").joinpath("static/review.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers=_PAGE_HEADERS)


@api.get("/items", summary="Items queued for review")
async def review_items(svc: Service = Depends(get_service), status: ReviewFilter = ReviewFilter.PENDING,
                       limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    store = svc.review.require_store()
    wanted = None if status is ReviewFilter.ALL else ReviewStatus(status.value)
    items = await svc.run(lambda: store.items(wanted, limit=limit, offset=offset))
    counts = await svc.run(store.counts)
    return {"items": [i.to_dict() for i in items], "counts": counts}


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


async def label_body(request: Request, svc: Service = Depends(get_service)) -> LabelRequest:
    """The JSON body of a label request, read (at most 16 KiB) only after the API key was checked."""
    receive = CountingReceive(request.receive, _LABEL_BODY_CAP, svc.config.body_timeout_s)
    raw = await Request(request.scope, receive).body()
    try:
        return LabelRequest.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise InvalidRequestError(describe_validation(exc.errors(), "body")) from None


@api.post("/items/{sha256}/label", summary="Label a review item",
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": inline_schema(LabelRequest)}}}})
async def review_label(sha256: str = _SHA, body: LabelRequest = Depends(label_body),
                       who: Caller = Security(authenticated), svc: Service = Depends(get_service)) -> dict[str, Any]:
    store = svc.review.require_store()
    item = await svc.run(store.set_label, sha256, body.label, body.reviewer)
    svc.metrics.review_labels.labels(label=body.label.value).inc()
    return item.to_dict()
