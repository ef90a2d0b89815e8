"""Operations: `/healthz` for load balancers, `/metrics` for Prometheus."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import openapi
from ..workers import fleet_metrics
from .start import context

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz", responses=openapi.OPEN)
async def healthz(request: Request) -> JSONResponse:
    # 503 while draining or while the store cannot take new streams, so a load balancer
    # sends clients elsewhere.
    ctx = context(request)
    status = "draining" if ctx.draining else "ok" if ctx.store.ready else "store_unavailable"
    body = {"status": status, "active_streams": ctx.stats.active_streams,
            "kept_streams": len(ctx.store.local()), "pid": os.getpid(), "worker": ctx.settings.worker}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


@router.get("/metrics", response_class=Response, responses=openapi.METRICS)
async def metrics(request: Request, worker: Annotated[Literal["self", "all"], Query()] = "all") -> Response:
    ctx = context(request)
    settings = ctx.settings
    if settings.worker is None or len(settings.worker_ports) < 2 or worker == "self":
        body = generate_latest(ctx.stats.registry)
    else:  # `serve --workers`: every worker's figures, labelled (gateway/workers.py)
        body = await fleet_metrics(ctx.stats.registry, settings.worker, settings.worker_ports)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
