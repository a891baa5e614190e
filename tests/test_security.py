"""CORS for browser clients such as the CDS Hooks sandbox."""

from __future__ import annotations

import pytest
from conftest import SELECT, load_request

SANDBOX = "https://sandbox.cds-hooks.org"
PREFLIGHT = {
    "Origin": SANDBOX,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


@pytest.mark.parametrize("path", ["/cds-services", SELECT, SELECT + "/feedback"])
def test_preflight_is_answered_without_credentials(client, path):
    response = client.options(path, headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_service_answers_carry_cors_headers(client):
    response = client.post(SELECT, json=load_request("acute-lbp-defer"), headers={"Origin": SANDBOX})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_error_answers_carry_cors_headers_too(client):
    response = client.post(SELECT, data="{", content_type="application/json", headers={"Origin": SANDBOX})
    assert response.status_code == 400
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_configured_origins_are_reflected_only_when_listed(make_app):
    client = make_app(cors_origins=(SANDBOX,)).test_client()
    listed = client.options(SELECT, headers=PREFLIGHT)
    assert listed.headers["Access-Control-Allow-Origin"] == SANDBOX
    assert "Origin" in listed.headers["Vary"]
    other = client.options(SELECT, headers={**PREFLIGHT, "Origin": "https://evil.example.net"})
    assert "Access-Control-Allow-Origin" not in other.headers
