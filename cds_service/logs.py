"""Logs: one structured line per request (service, hookInstance, status, latency, rules fired,
rating), JSON lines for collectors, human-readable lines at a terminal. Never PHI or tokens: only
the fields named here are added, and messages elsewhere carry no values from requests."""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson
import structlog
from flask import Flask, Response, g, request

log = logging.getLogger("cds_service.requests")


def configure_logging(style: str | None = None, level: str | None = None) -> None:
    """Root logging for the served app and the CLI: style "json" or "console" (default: console at a
    terminal, JSON otherwise; CDS_LOG_FORMAT), level CDS_LOG_LEVEL (default INFO)."""
    style = style or os.environ.get("CDS_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if style == "console"
        else structlog.processors.JSONRenderer(serializer=lambda data, **_: orjson.dumps(data).decode())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel((level or os.environ.get("CDS_LOG_LEVEL") or "INFO").upper())


def init_request_log(app: Flask) -> None:
    @app.after_request
    def request_line(response: Response) -> Response:
        if request.method == "OPTIONS" or request.endpoint in ("metrics.exposition", "health.alive", "health.ready"):
            return response
        fields = {
            "service": g.get("metrics_label", request.endpoint or "unknown"),
            "status": response.status_code,
            "latency_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
        }
        for name in ("hookInstance", "rules", "ratings", "fallback", "silent", "orders", "problem"):
            if name in g:
                fields[name] = g.get(name)
        log.info("request", extra=fields)
        return response
