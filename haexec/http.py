"""The replica's HTTP surface (Starlette, served by uvicorn on its own thread)."""

from __future__ import annotations

import socket
import threading
from typing import Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coordinator.service import Coordinator


class ReplicaState(Protocol):
    coordinator: Coordinator

    @property
    def ready(self) -> bool: ...


def build_app(replica: ReplicaState) -> Starlette:
    coord = replica.coordinator

    async def health(_: Request) -> Response:
        parts = await run_in_threadpool(coord.probe)
        ok = all(v == "ok" for v in parts.values())
        body = {"status": "ok" if ok else "degraded", "checks": parts, "role": coord.elector.role.value}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def ready(_: Request) -> Response:
        if replica.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False}, status_code=503)

    async def leader(_: Request) -> Response:
        if coord.elector.is_leader():
            return JSONResponse({"leader": True, "epoch": coord.elector.epoch})
        return JSONResponse({"leader": False}, status_code=503)

    async def coordinator_leader(_: Request) -> Response:
        view = await run_in_threadpool(coord.view)
        return JSONResponse(
            {
                "redis_leader": view.redis_leader,
                "db_leader": view.db_leader,
                "epoch": view.epoch,
                "this_instance": coord.cfg.instance_id,
                "is_leader": coord.elector.is_leader(),
                "split_brain": view.split_brain,
                "stale_leader": view.stale_leader,
                "lease_remaining_ms": round(coord.elector.lease_remaining_ms()),
                "errors": view.errors,
            }
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/leader", leader),
            Route("/coordinator/leader", coordinator_leader),
            Route("/metrics", metrics),
        ]
    )


class HttpServer:
    """uvicorn on a socket bound up front, so a taken port fails start-up with one line."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
            )
        )
        self._thread = threading.Thread(target=self._serve, name="haexec-http", daemon=True)

    def _serve(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=3)
