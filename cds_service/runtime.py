"""What one application instance holds: settings, services, knowledge, evaluator and store."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response, current_app, request

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


def runtime() -> Runtime:
    return current_app.extensions["cds"]


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, headers=headers, mimetype="application/json")


def require_json() -> None:
    """415 unless the body is declared as JSON (application/json, application/fhir+json, */*+json)."""
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        raise CdsError(415, "Send the request body as application/json", code="not-supported",
                       expression=["Content-Type"])
