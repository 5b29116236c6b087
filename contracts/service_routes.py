"""The routes every model server has besides its own: GET /metrics and GET /openapi.json."""
from __future__ import annotations

from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def add_metrics_and_document(app: web.Application, registry: CollectorRegistry,
                             document: Callable[[web.Application], dict]) -> None:
    """Add both; call it once the server's own routes are in, so that the document covers them."""

    async def metrics(request: web.Request) -> web.Response:
        """Prometheus metrics.
        ---
        get:
          summary: Prometheus metrics (text exposition format)
          responses:
            200:
              description: Prometheus text format
              content:
                text/plain:
                  schema: {type: string}
        """
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(request: web.Request) -> web.Response:
        """This document.
        ---
        get:
          summary: The OpenAPI document of this server
          responses:
            200:
              description: OpenAPI 3 document
              content:
                application/json:
                  schema: {type: object}
        """
        return web.json_response(described)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    described = document(app)
