"""The dashboard: off unless configured, behind its token, real charts with their numbers, no patient ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from conftest import load_request
from helpers import FEEDBACK, overridden

from cds_service.cli import main

TOKEN = "dashboard-secret-123"


@pytest.fixture
def dashboard_app(make_app):
    app = make_app(dashboard_token=TOKEN, audit_key="site-secret")
    client = app.test_client()
    for name in ("acute-lbp-defer", "cauda-equina", "subacute-no-conservative-care"):
        request = load_request(name)
        request["context"]["userId"] = "Practitioner/dr-smith"
        body = client.post("/cds-services/lumbar-mri-order-select", json=request).get_json()
        if name == "acute-lbp-defer":
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            client.post(FEEDBACK, json={"feedback": [overridden(card=body["cards"][0]["uuid"], outcomeTimestamp=now)]})
    return app


def bearer():
    return {"Authorization": f"Bearer {TOKEN}"}


def test_the_dashboard_is_off_unless_a_token_is_set(client):
    assert client.get("/dashboard").status_code == 404


def test_the_dashboard_needs_its_token(dashboard_app):
    client = dashboard_app.test_client()
    assert client.get("/dashboard").status_code == 303  # to the login form
    assert client.get("/dashboard", headers={"Authorization": "Bearer wrong"}).status_code == 303
    assert client.get("/dashboard", headers=bearer()).status_code == 200


def test_login_sets_a_signed_httponly_samesite_cookie_and_refuses_cross_site_posts(dashboard_app):
    client = dashboard_app.test_client()
    form = client.get("/dashboard/login").get_data(as_text=True)
    csrf = re.search(r"name='csrf' value='([^']+)'", form).group(1)
    assert client.post("/dashboard/login", data={"token": TOKEN, "csrf": "forged"}).status_code == 403
    cross = client.post("/dashboard/login", data={"token": TOKEN, "csrf": csrf},
                        headers={"Origin": "https://evil.example"})  # fmt: skip
    assert cross.status_code == 403
    signed = client.post("/dashboard/login", data={"token": TOKEN, "csrf": csrf})
    cookie = signed.headers["Set-Cookie"]
    assert signed.status_code == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/dashboard").status_code == 200  # the cookie now signs in


def test_the_page_shows_charts_with_their_numbers_and_no_patient_identifier(dashboard_app):
    page = dashboard_app.test_client().get("/dashboard", headers=bearer()).get_data(as_text=True)
    assert page.count("<svg") >= 5 and page.count("<svg") == page.count("<table>")  # each chart with its numbers
    topics = re.search(r"aria-label='Cards shown by topic'.*?</svg>", page, re.S).group(0)
    assert topics.count("<rect") == 2  # defer-imaging, urgent-imaging
    assert "Consultations: <strong>3</strong>" in page
    assert "FHIR fallback used in 0 (0.0 %)" in page and re.search(r"latency p50 [\d.]+ ms, p95 [\d.]+ ms", page)
    for patient in ("pt-acute-lbp", "pt-ces", "MRN-", "dr-smith"):
        assert patient not in page
    assert re.search(r"pr-[0-9a-f]{12}", page)  # the practitioner as a pseudonym


def test_the_rule_browser_lists_every_rule_with_its_citations_and_firings(dashboard_app):
    rt = dashboard_app.extensions["cds"]
    page = dashboard_app.test_client().get("/dashboard/rules", headers=bearer()).get_data(as_text=True)
    for rule in rt.knowledge.rules:
        assert f"<tr id='{rule.id}'>" in page
    assert re.search(r"<tr id='R-01'>.*?<td>1</td></tr>", page)  # fired once (the cauda equina call)
    assert "cauda_equina" in page and "G834: Cauda equina syndrome" in page  # facts with every code
    malignancy = rt.knowledge["malignancy"]
    assert f"malignancy ({len(malignancy.codes)} codes)" in page and "Z85*" in page and "C00-C96" in page
    assert "excluded: Z85828, C44" in page  # non-melanoma skin cancer


def test_report_writes_the_dashboard_as_one_self_contained_html_file(dashboard_app, tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_DATABASE_URL", dashboard_app.extensions["cds"].settings.database_url)
    output = tmp_path / "dashboard.html"
    assert main(["report", "--since", "all", "--format", "html", "--output", str(output)]) == 0
    text = output.read_text()
    assert text.startswith("<!doctype html>") and "<svg" in text and "http" not in text.split("<body>")[0]
