"""HTTP for the CDS Hooks endpoints: discovery and service calls. Logic lives in evaluation."""

from __future__ import annotations

import logging
import time
import traceback

from flask import Blueprint, Flask, g
from werkzeug.exceptions import HTTPException

from . import metrics
from .protocol import CdsError, operation_outcome
from .protocol.fhir import decode_hook_request
from .runtime import json_response, request_body, require_json, runtime

log = logging.getLogger(__name__)
bp = Blueprint("cds_hooks", __name__)

_HTTP_ISSUE_CODES = {404: "not-found", 405: "not-supported", 413: "too-long", 415: "not-supported"}


@bp.get("/cds-services")
def discovery():
    return json_response({"services": [service.discovery_entry() for service in runtime().services.values()]})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str):
    rt = runtime()
    service = rt.services.get(service_id)
    if service is None:
        raise CdsError(404, "No CDS service with this id (see GET /cds-services)", code="not-found")
    require_json()
    started = time.perf_counter()
    hook_request = decode_hook_request(request_body())
    g.hookInstance = hook_request.hookInstance
    client = g.get("cds_client")
    profile, site_codes = (client.profile, client.site_codes) if client else (None, None)
    evaluation = rt.evaluator.evaluate(service, hook_request, profile, site_codes)
    latency_ms = (time.perf_counter() - started) * 1000
    rt.audit.write(
        rt.audit.records(
            service, hook_request, evaluation, client.iss if client else None, client.tenant if client else None,
            latency_ms, evaluation.silent,
        )
    )  # fmt: skip
    metrics.evaluation(evaluation)
    g.orders = len(evaluation.orders)
    g.rules = evaluation.rules_fired
    g.ratings = evaluation.ratings
    g.fallback = bool(evaluation.record and evaluation.record.fallback_used)
    g.silent = evaluation.silent
    return json_response(evaluation.response)


def register_error_handlers(app: Flask) -> None:
    """Every error is an OperationOutcome; no stack trace or input value ever reaches the client."""

    @app.errorhandler(CdsError)
    def cds_error(error: CdsError):
        g.problem = str(error)  # our own words: never values from the request
        if error.status == 412:
            metrics.fetch_failed(len(error.outcome["issue"]) - 1)
        return json_response(error.outcome, error.status, error.headers)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        description = {
            413: "The request body is larger than this service accepts",
        }.get(status, error.description or error.name)
        outcome = operation_outcome(_HTTP_ISSUE_CODES.get(status, "processing"), description)
        methods = getattr(error, "valid_methods", None)
        return json_response(outcome, status, {"Allow": ", ".join(methods)} if methods else None)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        # The message of an arbitrary exception may hold patient data: log the type and where only.
        frames = traceback.extract_tb(error.__traceback__)
        where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in reversed(frames[-6:]))
        log.error("internal error %s at %s", type(error).__name__, where)
        return json_response(operation_outcome("exception", "Internal error; the service has logged it"), 500)
