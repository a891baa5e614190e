"""No PHI or secrets in the logs: canaries planted on every path must never appear, at any level."""

from __future__ import annotations

import json
import logging
import time
import uuid

import jwt
import pytest
import responses
from conftest import SELECT, load_request
from helpers import EC_KEY, ISS, issue_cards, jwk, loopback_fhir_server

NAME, MRN, BIRTH = "Canaryfamily", "MRN-CANARY-7731", "1961-07-17"
PATIENT_ID = "pt-canary-5520"
ACCESS_TOKEN = "fhir-token-canary-f00d"
COMMENT = "canary-comment-0099"
FHIR = "https://ehr.example.org/fhir"


@pytest.fixture
def canary_app(make_app, tmp_path):
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1", "ES384")]}}]}))
    return make_app(auth="required", trusted_issuers=issuers, fhir_server_allowlist=(FHIR,))


def client_jwt(path=SELECT, **claims):
    now = int(time.time())
    payload = {
        "iss": ISS,
        "aud": "http://localhost" + path,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    return jwt.encode(payload, EC_KEY, algorithm="ES384", headers={"kid": "ec-1"})


def planted(name="cancer-history"):
    """A request whose patient, identifiers and tokens are all canaries."""
    text = json.dumps(load_request(name)).replace(load_request(name)["context"]["patientId"], PATIENT_ID)
    request = json.loads(text)
    request["prefetch"]["patient"].update(
        name=[{"family": NAME, "given": ["Tweety"]}], birthDate=BIRTH, identifier=[{"system": "urn:mrn", "value": MRN}]
    )
    request["fhirAuthorization"] = {
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    return request


@pytest.fixture
def real_fhir_server():
    """A loopback FHIR server, so that the fallback goes through the real HTTP stack (urllib3 logs)."""
    with loopback_fhir_server(json.dumps(planted()["prefetch"]["conditions"]).encode()) as (base, _):
        yield base


def test_no_canary_reaches_the_logs_on_any_path(canary_app, caplog, real_fhir_server):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    client = canary_app.test_client()
    issue_cards(canary_app, "c", issuer=ISS)
    secrets = []

    def post(path, body, token=None, raw=None):
        token = token or client_jwt(path)
        secrets.append(token)
        data = raw if raw is not None else json.dumps(body)
        return client.post(
            path, data=data, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
        )

    assert post(SELECT, planted()).status_code == 200  # evaluation with cards
    fallback = planted()
    conditions = fallback["prefetch"].pop("conditions")
    with responses.RequestsMock() as mock:
        mock.get(f"{FHIR}/Condition", json=conditions)  # FHIR fallback with the bearer token
        assert post(SELECT, fallback).status_code == 200
    with responses.RequestsMock() as mock:
        mock.get(f"{FHIR}/Condition", status=500, body=f"error for {NAME} {MRN}")
        assert post(SELECT, fallback).status_code == 412  # fallback failure
    canary_app.extensions["cds"].settings = canary_app.extensions["cds"].evaluator.settings = canary_app.extensions[
        "cds"
    ].settings.replace(fhir_server_allowlist=(FHIR, real_fhir_server))
    over_http = dict(fallback, fhirServer=real_fhir_server)
    assert post(SELECT, over_http).status_code == 200  # fallback over real HTTP (urllib3)
    no_access = planted()
    del no_access["fhirAuthorization"], no_access["prefetch"]["observations"]
    assert post(SELECT, no_access).status_code == 412  # missing data
    bad = planted()
    bad["prefetch"]["conditions"]["entry"][0]["resource"]["code"] = f"{NAME} {MRN}"
    assert post(SELECT, bad).status_code == 400  # invalid prefetch
    bad_type = planted()
    bad_type["context"]["patientId"] = {"name": NAME}
    assert post(SELECT, bad_type).status_code == 400  # invalid field
    assert post(SELECT, None, raw=f'{{"hook": "{NAME} {MRN}", ').status_code == 400  # malformed JSON
    enum = {"feedback": [{"card": "c", "outcome": f"{NAME}-{MRN}", "outcomeTimestamp": BIRTH}]}
    assert post(SELECT + "/feedback", enum).status_code == 400  # invalid feedback echoing values
    comment = {
        "feedback": [
            {
                "card": "c",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-06-01T12:00:00Z",
                "overrideReason": {"userComment": f"{COMMENT} {NAME}"},
            }
        ]
    }
    assert post(SELECT + "/feedback", comment).status_code == 200  # stored, never logged
    forged = client_jwt(tenant=MRN)[:-8] + "AAAAAAAA"
    secrets.append(forged)
    assert client.post(SELECT, json=planted(), headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    replayed = client_jwt()
    assert post(SELECT, planted(), token=replayed).status_code == 200
    assert post(SELECT, planted(), token=replayed).status_code == 401  # replay

    def explode(*_args, **_kwargs):
        raise ValueError(f"{NAME} {MRN} {BIRTH} {ACCESS_TOKEN}")

    canary_app.extensions["cds"].evaluator.evaluate = explode
    assert post(SELECT, planted()).status_code == 500  # an unexpected error

    logged = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert logged  # the paths above did log
    for canary in [
        NAME,
        MRN,
        BIRTH,
        PATIENT_ID,
        ACCESS_TOKEN,
        COMMENT,
        "Tweety",
        *secrets,
        *(s.split(".")[-1] for s in secrets),
    ]:
        assert canary not in logged, canary
