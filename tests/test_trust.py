"""Trust, round two: each finding of the security review, reproduced, as a test that failed before."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import responses
from conftest import SELECT, load_request
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import EC_KEY, FEEDBACK, FHIR, ISS, issue_cards, jwk, overridden, token, with_authorization
from sqlalchemy.exc import DataError

from cds_service.audit import AuditTrail
from cds_service.configuration import AuditWrite
from cds_service.fhir_client import is_allowed
from cds_service.security import TrustError, load_trusted_issuers

OTHER_ISS = "https://other-ehr.example.org"


@pytest.fixture
def issuers(tmp_path):
    other = __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ec"]).generate_private_key(
        __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ec"]).SECP384R1()
    )
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [
        {"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1", "ES384")]}},
        {"iss": OTHER_ISS, "jwks": {"keys": [jwk(other, "other-1", "ES384")]}},
    ]}))  # fmt: skip
    return path, other


@pytest.fixture
def secured(make_app, issuers):
    path, other = issuers
    return make_app(auth="required", trusted_issuers=path, fhir_server_allowlist=(FHIR,)), other


def bearer(value):
    return {"Authorization": f"Bearer {value}"}


# --- 2. one call must not stop the audit trail -------------------------------------------------


def test_an_over_long_hook_instance_is_a_400_naming_the_field(client):
    request = load_request("acute-lbp-defer")
    request["hookInstance"] = "h" * 129
    response = client.post(SELECT, json=request)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["hookInstance"]
    assert "h" * 129 not in response.get_data(as_text=True)


@pytest.mark.parametrize("field, value", [("card", "c" * 129), ("reason", "r" * 129), ("comment", "x" * 5000)])
def test_over_long_feedback_fields_are_a_400_not_a_503(app, client, field, value):
    entry = overridden()
    if field == "card":
        entry["card"] = value
    elif field == "reason":
        entry["overrideReason"]["reason"]["code"] = value
    else:
        entry["overrideReason"]["userComment"] = value
    response = client.post(FEEDBACK, json={"feedback": [entry]})
    assert response.status_code == 400 and value not in response.get_data(as_text=True)


def test_a_record_the_database_refuses_is_dropped_and_the_writer_goes_on(app):
    """Regression: a DataError was treated as "database away" and retried forever."""
    store = app.extensions["cds"].store
    trail = AuditTrail(store, "k", AuditWrite.BACKGROUND)
    real = store.add_audit

    def add_audit(records):
        if any(r["hook_instance"] == "poison" for r in records):
            raise DataError("INSERT", {}, Exception("value too long"))
        return real(records)

    store.add_audit = add_audit
    client = app.test_client()
    rows = []
    for instance in ("poison", "after-1", "after-2"):
        request = load_request("acute-lbp-defer")
        request["hookInstance"] = instance
        rt = app.extensions["cds"]
        from cds_service.protocol.fhir import decode_hook_request

        hook = decode_hook_request(json.dumps(request).encode())
        evaluation = rt.evaluator.evaluate(rt.services["lumbar-mri-order-select"], hook)
        rows += trail.records(rt.services["lumbar-mri-order-select"], hook, evaluation, None, None, 1.0, False)
    trail.write(rows)
    assert trail.flush(10.0)
    stored = {row["hook_instance"] for row in store.audit_rows()}
    assert {"after-1", "after-2"} <= stored and "poison" not in stored
    assert trail.rejected == 1 and trail.backlog == 0
    assert client.get("/readyz").status_code == 200


# --- 3. the FHIR allowlist ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.org/fhir/tenant-a/%2e%2e/tenant-b/Patient",
        "https://ehr.example.org/fhir/tenant-a/%2E%2E/tenant-b",
        "https://ehr.example.org/fhir/tenant-a/../tenant-b",
        "https://ehr.example.org/fhir/tenant-a/./Patient",
        "https://ehr.example.org/fhir/tenant-a/x%2Fy",
    ],
)
def test_dot_segments_and_encoded_slashes_never_pass_the_allowlist(url):
    assert not is_allowed(url, ("https://ehr.example.org/fhir/tenant-a",))


def test_encoded_unreserved_characters_are_compared_decoded():
    assert is_allowed("https://ehr.example.org/fhir/tenant-%61/Patient/1", ("https://ehr.example.org/fhir/tenant-a",))


@pytest.mark.parametrize("patient_id", [".", "..", "a/b", "x" * 65, "a b"])
def test_a_patient_id_that_is_not_a_fhir_id_is_a_400(client, patient_id):
    request = load_request("acute-lbp-defer")
    request["context"]["patientId"] = patient_id
    response = client.post(SELECT, json=request)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["context.patientId"]


def test_a_next_link_on_another_allowed_server_never_gets_the_token(make_app):
    other = "https://other.example.org/fhir"
    client = make_app(fhir_server_allowlist=(FHIR, other)).test_client()
    request = with_authorization(load_request("acute-lbp-defer"))
    del request["prefetch"]["conditions"]
    page = {"resourceType": "Bundle", "type": "searchset", "entry": [],
            "link": [{"relation": "next", "url": other + "/Condition?page=2"}]}  # fmt: skip
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, f"{FHIR}/Condition", json=page)
        mock.add(responses.GET, f"{other}/Condition", json={"resourceType": "Bundle", "entry": []})
        response = client.post(SELECT, json=request)
        assert not any(call.request.url.startswith(other) for call in mock.calls)
    assert response.status_code == 412


# --- 4. the audience comes from configuration only --------------------------------------------


def test_required_auth_needs_the_public_base_url_and_the_audit_key(make_app, issuers):
    with pytest.raises(TrustError, match="CDS_PUBLIC_BASE_URL"):
        make_app(auth="required", trusted_issuers=issuers[0], public_base_url=None)
    with pytest.raises(TrustError, match="CDS_AUDIT_KEY"):
        make_app(auth="required", trusted_issuers=issuers[0], audit_key=None)


def test_the_host_header_does_not_choose_the_audience(secured):
    app, _ = secured
    forged = token(aud="https://other-vendor.example/cds-services/lumbar-mri-order-select")
    response = app.test_client().post(
        SELECT, json=load_request("acute-lbp-defer"),
        headers={**bearer(forged), "Host": "other-vendor.example", "X-Forwarded-Proto": "https"},
    )  # fmt: skip
    assert response.status_code == 401


def test_an_audience_list_with_other_services_is_refused(secured, caplog):
    app, _ = secured
    both = token(aud=["http://localhost" + SELECT, "https://other-vendor.example/cds"])
    assert app.test_client().post(SELECT, json=load_request("acute-lbp-defer"), headers=bearer(both)).status_code == 401
    only_ours = token(aud=["http://localhost" + SELECT])
    assert (
        app.test_client().post(SELECT, json=load_request("acute-lbp-defer"), headers=bearer(only_ours)).status_code
        == 200
    )


# --- 5. feedback bound to who was shown the card ---------------------------------------------


def test_feedback_from_another_issuer_or_for_an_unknown_card_is_refused(secured):
    app, other_key = secured
    client = app.test_client()
    shown = client.post(SELECT, json=load_request("acute-lbp-defer"), headers=bearer(token())).get_json()
    card = shown["cards"][0]["uuid"]
    app.extensions["cds"].audit.flush(5)
    feedback_aud = "http://localhost" + FEEDBACK
    forged = token(aud=feedback_aud, iss=OTHER_ISS, key=other_key, kid="other-1")
    response = client.post(FEEDBACK, json={"feedback": [overridden(card=card)]}, headers=bearer(forged))
    assert response.status_code == 403 and response.get_json()["issue"][0]["expression"] == ["feedback.0.card"]
    unknown = client.post(FEEDBACK, json={"feedback": [overridden(card=str(uuid.uuid4()))]},
                          headers=bearer(token(aud=feedback_aud)))  # fmt: skip
    assert unknown.status_code == 404
    genuine = client.post(FEEDBACK, json={"feedback": [overridden(card=card)]}, headers=bearer(token(aud=feedback_aud)))
    assert genuine.status_code == 200
    [row] = app.extensions["cds"].store.feedback_rows()
    assert row["issuer"] == ISS


def test_a_future_outcome_timestamp_is_a_400(app, client):
    issue_cards(app, "future-card")
    entry = overridden(card="future-card", outcomeTimestamp="9999-12-31T00:00:00Z")
    response = client.post(FEEDBACK, json={"feedback": [entry]})
    assert response.status_code == 400 and response.get_json()["issue"][0]["expression"] == [
        "feedback.0.outcomeTimestamp"]  # fmt: skip


# --- 6. limits -------------------------------------------------------------------------------


def test_too_many_draft_orders_is_refused_naming_the_field(client):
    request = load_request("acute-lbp-defer")
    order = request["context"]["draftOrders"]["entry"][0]
    request["context"]["draftOrders"]["entry"] = [order] * 51
    response = client.post(SELECT, json=request)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["context.draftOrders.entry"]


# --- 7-13 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", ["x", [1], {"url": "a"}])
def test_odd_draft_order_extensions_are_answered(client, extension):
    request = load_request("acute-lbp-defer")
    request["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = extension
    assert client.post(SELECT, json=request).status_code in (200, 400)


def test_a_signed_token_with_a_string_exp_is_a_401(secured):
    app, _ = secured
    now = int(time.time())
    odd = __import__("jwt").encode(
        {"iss": ISS, "aud": "http://localhost" + SELECT, "iat": now, "exp": str(now + 300), "jti": "j1"},
        EC_KEY, algorithm="ES384", headers={"kid": "ec-1"})  # fmt: skip
    assert app.test_client().post(SELECT, json=load_request("acute-lbp-defer"), headers=bearer(odd)).status_code == 401


def test_metrics_do_not_tell_an_unknown_issuer_from_an_unknown_kid(secured):
    app, _ = secured
    client = app.test_client()
    for bad in (token(iss="https://nobody.example"), token(kid="no-such-kid")):
        client.post(SELECT, json=load_request("acute-lbp-defer"), headers=bearer(bad))
    text = client.get("/metrics").get_data(as_text=True)
    reasons = {line.split('reason="')[1].split('"')[0] for line in text.splitlines()
               if line.startswith("cds_auth_failures_total{")}  # fmt: skip
    assert "issuer" not in reasons and "key" not in reasons and "invalid" in reasons


def test_a_bad_feedback_outcome_is_not_echoed_even_with_an_apostrophe(app, client):
    issue_cards(app, "c-echo")
    value = "O'Brien Canaryname"
    response = client.post(FEEDBACK, json={"feedback": [overridden(card="c-echo", outcome=value)]})
    assert response.status_code == 400 and "Canaryname" not in response.get_data(as_text=True)


def test_short_rsa_keys_are_refused_at_start(tmp_path):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(weak, "rsa-weak", "RS384")]}}]}))
    with pytest.raises(TrustError, match="2048"):
        load_trusted_issuers(path)


def test_an_nbf_failure_is_logged_as_such_and_epic_nbf_before_iat_is_accepted(secured, caplog):
    app, _ = secured
    client = app.test_client()
    now = int(time.time())
    epic = token(nbf=now - 300)  # Epic: nbf about 5 minutes before iat
    assert client.post(SELECT, json=load_request("acute-lbp-defer"), headers=bearer(epic)).status_code == 200
    early = token(nbf=now + 3600)
    assert client.post(SELECT, json=load_request("acute-lbp-defer"), headers=bearer(early)).status_code == 401
    assert "nbf in the future" in caplog.text


def test_an_oversized_chunked_body_is_a_413(make_app):
    client = make_app(max_body_bytes=2048).test_client()
    body = json.dumps(load_request("acute-lbp-defer")).encode()

    import io

    response = client.post(SELECT, input_stream=io.BytesIO(body), headers={
        "Content-Type": "application/json", "Transfer-Encoding": "chunked"})  # fmt: skip
    assert response.status_code == 413


def test_report_cells_cannot_run_as_formulas_or_drive_the_terminal(app, client):
    from cds_service.analytics import build_report, render

    issue_cards(app, "csv-1")
    entry = overridden(card="csv-1")
    entry["overrideReason"]["reason"]["display"] = '=HYPERLINK("http://evil.example","x")\x1b[31m'
    assert client.post(FEEDBACK, json={"feedback": [entry]}).status_code == 200
    report = build_report(app.extensions["cds"].store)
    csv_text, table = render(report, "csv"), render(report, "table")
    assert "'=HYPERLINK" in csv_text and ",=HYPERLINK" not in csv_text
    assert "\x1b" not in csv_text and "\x1b" not in table
