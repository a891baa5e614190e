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


AUDIT_BACKLOG_LIMIT = 1000  # queued audit records above which the instance says it is not ready


@bp.get("/readyz")
def ready():
    rt = runtime()
    audit = {"backlog": rt.audit.backlog, "dropped": rt.audit.dropped, "rejected": rt.audit.rejected}
    try:
        rt.store.ping()
    except SQLAlchemyError as exc:
        log.warning("not ready: database unreachable (%s)", type(exc).__name__)
        body = {"status": "unavailable", "database": "unreachable", "audit": audit}
        return json_response(body, 503, {"Retry-After": "10"})
    if audit["backlog"] > AUDIT_BACKLOG_LIMIT:
        log.warning("not ready: %d audit records waiting to be written", audit["backlog"])
        return json_response({"status": "unavailable", "database": "ok", "audit": audit}, 503, {"Retry-After": "10"})
    return json_response({"status": "ok", "database": "ok", "audit": audit})
