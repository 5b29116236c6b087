"""The routes every service has besides its own: GET /metrics and GET /openapi.json."""
from __future__ import annotations

from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def add_metrics_and_document(app: web.Application, registry: CollectorRegistry,
                             document: Callable[[web.Application], dict],
                             measure: Callable[[], None] = lambda: None) -> None:
    """Add both. measure() sets the gauges read at scrape time. The document is made at its first
    request, when every route is in, those added after this call (CORS preflights) too."""
    made: dict = {}

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
        measure()
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
        if not made:
            made.update(document(app))
        return web.json_response(made)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
