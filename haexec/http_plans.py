"""The /plans routes (haexec/http.py mounts them): on any replica, the bearer token for the
mutating ones, as for signals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from haexec import plans_api
from haexec.http import DB_ERRORS, DIGITS, BodyRefused, ReplicaState, _authorized, read_json

MAX_LIST = 1000


def plan_routes(replica: ReplicaState, body_timeout_s: float) -> list[Route]:
    cfg = replica.coordinator.cfg

    async def call(fn: Callable[..., plans_api.Answer], *args: Any) -> Response:
        def run() -> plans_api.Answer:
            with replica.engine_pool.connection() as conn:
                return fn(conn, cfg.cluster, *args)

        try:
            answer = await run_in_threadpool(run)
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable; nothing was changed"}, status_code=503)
        return JSONResponse(answer.body, status_code=answer.status)

    async def post_plan(request: Request) -> Response:
        if not _authorized(request, replica.api_token):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            body = await read_json(request, body_timeout_s, "plan")
        except BodyRefused as e:
            return e.response
        return await call(plans_api.create, cfg.instance_id, body)

    async def list_plans(request: Request) -> Response:
        status = request.query_params.get("status")
        if status is not None and status not in plans_api.STATUSES:
            return JSONResponse({"error": f"status must be one of {', '.join(plans_api.STATUSES)}"}, status_code=400)
        raw = request.query_params.get("limit", "50")
        if not DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIST:
            return JSONResponse({"error": f"limit must be an integer from 1 to {MAX_LIST}"}, status_code=400)
        return await call(plans_api.list_plans, status, int(raw))

    async def get_plan(request: Request) -> Response:
        return await call(plans_api.show, request.path_params["plan_id"])

    async def put_plan(request: Request) -> Response:
        if not _authorized(request, replica.api_token):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            body = await read_json(request, body_timeout_s, "plan")
        except BodyRefused as e:
            return e.response
        return await call(plans_api.edit, request.path_params["plan_id"], body)

    async def delete_plan(request: Request) -> Response:
        if not _authorized(request, replica.api_token):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return await call(plans_api.cancel, request.path_params["plan_id"], f"http:{cfg.instance_id}")

    return [
        Route("/plans", post_plan, methods=["POST"]),
        Route("/plans", list_plans, methods=["GET"]),
        Route("/plans/{plan_id}", get_plan, methods=["GET"]),
        Route("/plans/{plan_id}", put_plan, methods=["PUT"]),
        Route("/plans/{plan_id}", delete_plan, methods=["DELETE"]),
    ]
