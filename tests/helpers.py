"""Helpers shared by the test modules: requests, FHIR searchsets, feedback entries, signing keys."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from conftest import SELECT
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.protocol import HookRequest, decode

# --- hook calls and the FHIR fallback -----------------------------------------------------------

FHIR = "https://ehr.example.org/fhir"
TOKEN = "opaque-access-token-5f2c"


def evaluate(app, request, service_id="lumbar-mri-order-select"):
    rt = app.extensions["cds"]
    return rt.evaluator.evaluate(rt.services[service_id], decode(json.dumps(request).encode(), HookRequest))


def searchset(*resources, next_url=None):
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def with_authorization(request):
    request["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "lumbar-mri-cds",
    }
    return request


@contextlib.contextmanager
def loopback_fhir_server(
    body: bytes, headers: dict[str, str] | None = None
) -> Iterator[tuple[str, list[tuple[int, dict[str, str]]]]]:
    """A FHIR server on a loopback port that answers every GET with `body` (and `headers`), kept
    alive as FHIR servers answer, so that the fallback goes through the real HTTP stack. Yields its
    base URL and the requests it saw: (client port, one per connection; headers)."""
    seen: list[tuple[int, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            seen.append((self.client_address[1], dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/fhir", seen
    finally:
        server.shutdown()
        server.server_close()


# --- feedback -------------------------------------------------------------------------------------

FEEDBACK = "/cds-services/lumbar-mri-order-select/feedback"


def overridden(card="2c8f8b9e-1a34-4c57-9a55-0c3c6f1d0a01", **changes):
    entry = {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "system": "https://example.org/override",
                "code": "red-flag-not-in-record",
                "display": "Red flag present, not yet documented",
            },
            "userComment": "Saddle numbness on exam today",
        },
        "outcomeTimestamp": "2026-06-01T12:03:04.5Z",
    }
    entry.update(changes)
    return entry


def accepted(card="9d1b7c5e-0000-4000-8000-00000000000a"):
    return {
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "suggestion-1"}],
        "outcomeTimestamp": "2026-06-01T12:05:00+02:00",
    }


def stored_rows(app):
    return app.extensions["cds"].store.feedback_rows()


# --- signing keys (CDS client JWTs) ---------------------------------------------------------------

ISS = "https://ehr.example.org"
EC_KEY = ec.generate_private_key(ec.SECP384R1())


def jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
    key = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**key, "kid": kid, "alg": alg, "use": "sig"}


BASE = "http://localhost"


def token(aud=BASE + SELECT, *, key=EC_KEY, alg="ES384", kid="ec-1", iss=ISS, headers=None, **claims):
    """A signed CDS client JWT (CDS Hooks 2.0) for the test issuer; claims set to None are left out."""
    now = int(time.time())
    payload = {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "JWT", **(headers or {})})


def issue_cards(app_or_store, *card_uuids, issuer=None, tenant=None):
    """Record cards as issued to a client (issuer, tenant), as a hook call would: feedback is accepted
    only for cards this service issued, from the client that was shown them."""
    import uuid as uuid_module
    from datetime import UTC, datetime

    store = app_or_store.extensions["cds"].store if hasattr(app_or_store, "extensions") else app_or_store
    consult = f"urn:uuid:{uuid_module.uuid4()}"
    store.add_audit([{
        "created_at": datetime.now(UTC), "service_id": "lumbar-mri-order-select", "hook": "order-select",
        "hook_instance": str(uuid_module.uuid4()), "issuer": issuer, "tenant": tenant, "consult_id": consult,
        "patient_key": "0" * 64, "order_system": "http://www.ama-assn.org/go/cpt", "order_code": "72148",
        "rating": "not-appropriate", "acr_category": "UNA", "variant": 1, "rules_fired": ["R-08", "R-18"],
        "card_topics": ["defer-imaging"] * len(card_uuids), "fallback_used": False, "silent": False,
        "latency_ms": 1.0,
        "cards": [{"card_uuid": c, "topic": "defer-imaging", "rule_id": "R-08", "indicator": "warning"}
                  for c in card_uuids],
    }])  # fmt: skip
    return card_uuids
