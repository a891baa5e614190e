"""What one application instance holds: settings, services, knowledge, evaluator and store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from .audit import AuditTrail
from .configuration import Settings
from .evaluation import Evaluator
from .knowledge import Knowledge
from .protocol import CdsError
from .services import ServiceDefinition
from .storage import Store

JSON_TYPES = ("application/json", "application/fhir+json")


@dataclass
class Runtime:
    settings: Settings
    services: dict[str, ServiceDefinition]
    knowledge: Knowledge
    evaluator: Evaluator
    store: Store
    audit: AuditTrail


def runtime() -> Runtime:
    return current_app.extensions["cds"]


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, headers=headers, mimetype="application/json")


def request_body() -> bytes:
    """The body in one read when its length is declared (a 2 MB prefetch is not copied chunk by
    chunk); otherwise werkzeug's reader, which enforces the same limit on chunked bodies."""
    length = request.content_length
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if length is not None and length > limit:
        raise RequestEntityTooLarge()
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return request.get_data(cache=False)
    if length is None:  # chunked: read up to the limit, and one byte more to know it was exceeded
        parts, size = [], 0
        while size <= limit:
            part = stream.read(min(65536, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
        if size > limit:
            raise RequestEntityTooLarge()
        return b"".join(parts)
    body = stream.read(length)
    if len(body) != length:
        raise CdsError(400, "The request body is shorter than its Content-Length", code="structure")
    return body


def require_json() -> None:
    """415 unless the body is declared as JSON (application/json, application/fhir+json, */*+json)."""
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        raise CdsError(
            415, "Send the request body as application/json", code="not-supported", expression=["Content-Type"]
        )
