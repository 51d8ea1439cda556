"""``POST /v1/score``: behind the API key and admission."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import JSONResponse, Response

from ..config import AnswerMode
from ..deps import Caller, admitted, attack_guard, caller, get_service
from ..schemas import ERROR_RESPONSES, SCORE_BODY, ScoreResponse
from ..scoring import score_uploads
from ..service import Service
from ..uploads import read_uploads

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["score"], dependencies=[Security(caller)])


@router.post("/score", summary="Score one or more images, animations or videos", response_model=ScoreResponse,
             openapi_extra={"requestBody": SCORE_BODY}, responses=dict(ERROR_RESPONSES),
             dependencies=[attack_guard, admitted])
async def score(request: Request, svc: Service = Depends(get_service), who: Caller = Security(caller),
                filename: str | None = Query(None, max_length=255,
                                             description="name reported for a raw-body upload"),
                per_frame: bool = Query(False, description="also report every scored frame of videos and "
                                                           "animations as frame_scores"),
                model: str | None = Query(None, max_length=255,
                                          description="the id of the model to score with (GET /v1/models); "
                                                      "default: the server's first model")) -> Response:
    """Multipart field ``file`` (repeatable) or a raw body. Still images are scored as they are;
    videos and animations frame by frame (``kind``, ``frames``, ``segments``). A request with
    several files answers 200 when at least one file was scored, with an error entry for each bad
    one; when none could be scored it answers the status of the first error. A server answering
    labels only (``--answer label``) leaves out every score. ``model`` picks one of the server's
    models (404 ``unknown_model`` for an id it does not serve, 503 while that model loads)."""
    svc.require_ready(model)
    uploads = await read_uploads(request, svc.config, filename)
    status, headers, body = await score_uploads(svc, uploads, per_frame=per_frame, caller=who, model=model)
    exclude = _SCORE_FIELDS if svc.config.answer is AnswerMode.LABEL else None
    return JSONResponse(body.model_dump(mode="json", exclude_none=True, exclude=exclude), status_code=status,
                        headers=headers)


#: What a labels-only answer leaves out: every number derived from the model's score (a video's
#: segments carry their highest score).
_SCORE_FIELDS = {"results": {"__all__": {"score", "raw_score", "frame_scores", "segments", "classes"}}}


@router.get("/models", summary="The models this server serves", responses={401: ERROR_RESPONSES[401]})
async def models(svc: Service = Depends(get_service)) -> dict[str, Any]:
    """Every model, the default first: ``id`` (what ``?model=`` names), ``default``, ``ready`` and,
    once loaded, its card id (``card``), versions and bands; ``error`` when it failed to load.
    ``answer``: what scoring answers reveal, ``score`` or ``label`` (``--answer``)."""
    return {"models": svc.model_status(), "answer": svc.config.answer.value}
