"""The HTTP API described in OpenAPI 3.1 (cds_service/openapi.json), served at /openapi.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from flask import Blueprint

from .runtime import json_response, runtime

DOCUMENT = Path(__file__).resolve().parent / "openapi.json"
bp = Blueprint("openapi", __name__)


def document(service_ids: list[str]) -> dict:
    """The document, with this deployment's service ids."""
    doc = copy.deepcopy(json.loads(DOCUMENT.read_text(encoding="utf-8")))
    for path in ("/cds-services/{service_id}", "/cds-services/{service_id}/feedback"):
        doc["paths"][path]["post"]["parameters"][0]["schema"]["enum"] = service_ids
    return doc


@bp.get("/openapi.json")
def serve():
    return json_response(document(list(runtime().services)))
