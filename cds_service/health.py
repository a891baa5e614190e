"""Liveness and readiness for load balancers and container orchestrators."""

from __future__ import annotations

import logging

from flask import Blueprint
from sqlalchemy.exc import SQLAlchemyError

from .runtime import json_response, runtime

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def alive():
    return json_response({"status": "ok"})


@bp.get("/readyz")
def ready():
    try:
        runtime().store.ping()
    except SQLAlchemyError as exc:
        log.warning("not ready: database unreachable (%s)", type(exc).__name__)
        return json_response({"status": "unavailable", "database": "unreachable"}, 503, {"Retry-After": "10"})
    return json_response({"status": "ok", "database": "ok"})
