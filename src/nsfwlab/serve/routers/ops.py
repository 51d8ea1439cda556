"""Probes and metrics: open to all (load balancers and Prometheus carry no API key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ..deps import get_service
from ..schemas import ERROR_RESPONSES
from ..service import Service

__all__ = ["router"]

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Every model is loaded and the service scores", responses={503: ERROR_RESPONSES[503]})
async def readyz(svc: Service = Depends(get_service)) -> Response:
    """``model``: the default model's description; with several models, ``models`` lists them all."""
    served = svc.require_all_ready()
    body: dict[str, Any] = {"status": "ready", "model": served[0].detector.describe()}
    if len(served) > 1:
        body["models"] = [m.describe() for m in served]
    return JSONResponse(body)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(svc: Service = Depends(get_service)) -> Response:
    body, ctype = svc.metrics.render()
    return Response(body, media_type=ctype)
