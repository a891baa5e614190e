"""The audit trail: one record per evaluated order, no direct identifiers; silent roll-out."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import responses
from conftest import ROOT, SELECT, SIGN, load_request
from helpers import FEEDBACK
from sqlalchemy import create_engine

from cds_service.cards import PAMA_CONSULT_ID

KEY = "site-secret-for-tests"


@pytest.fixture
def app(make_app):
    return make_app(audit_key=KEY)


def rows(app):
    app.extensions["cds"].audit.flush()
    return app.extensions["cds"].store.audit_rows()


@pytest.mark.parametrize(
    "scenario, topics, rating, rules",
    [
        ("acute-lbp-defer", ["defer-imaging"], "not-appropriate", ["R-08", "R-18"]),
        ("cauda-equina", ["urgent-imaging"], "appropriate", ["R-01", "R-18"]),
        ("pacemaker-ct-alternative", ["urgent-imaging", "ct-alternative"], "appropriate", ["R-03", "R-13", "R-18"]),
        ("no-indication", [], "no-criteria-apply", ["R-18"]),
        ("under-18", [], "no-criteria-apply", ["R-18"]),
    ],
)
def test_one_record_per_evaluated_order(app, client, scenario, topics, rating, rules):
    request = load_request(scenario)
    body = client.post(SELECT, json=request).get_json()
    [row] = rows(app)
    assert (row["service_id"], row["hook"], row["hook_instance"]) == (
        "lumbar-mri-order-select",
        "order-select",
        request["hookInstance"],
    )
    assert (row["card_topics"], row["rating"], row["rules_fired"]) == (topics, rating, rules)
    assert row["order_code"] == "72148" and row["order_system"] == "http://www.ama-assn.org/go/cpt"
    consult = next(
        e["valueUri"] for e in body["systemActions"][0]["resource"]["extension"] if e["url"] == PAMA_CONSULT_ID
    )
    assert row["consult_id"] == consult
    assert row["fallback_used"] is False and row["silent"] is False and row["latency_ms"] > 0
    assert row["tenant"] is None


@pytest.mark.parametrize("scenario", ["other-imaging", "medication-order", "unselected-order", "sandbox-empty-order"])
def test_orders_that_are_not_evaluated_leave_no_record(app, client, scenario):
    assert client.post(SELECT, json=load_request(scenario)).status_code == 200
    assert rows(app) == []


def test_order_sign_with_two_lumbar_mris_leaves_two_records(app, client):
    request = load_request("acute-lbp-order-sign")
    second = json.loads(json.dumps(request["context"]["draftOrders"]["entry"][0]))
    second["resource"]["id"] = "second"
    request["context"]["draftOrders"]["entry"].append(second)
    client.post(SIGN, json=request)
    recorded = rows(app)
    assert len(recorded) == 2 and len({r["consult_id"] for r in recorded}) == 2


def test_the_patient_is_a_keyed_hash_and_no_identifier_is_stored(app, client):
    request = load_request("cancer-history")
    client.post(SELECT, json=request)
    [row] = rows(app)
    expected = hmac.new(KEY.encode(), request["context"]["patientId"].encode(), hashlib.sha256).hexdigest()
    assert row["patient_key"] == expected
    dumped = json.dumps(row, default=str)
    assert request["context"]["patientId"] not in dumped and "Personal history" not in dumped


def test_fallback_use_is_recorded(make_app):
    from helpers import FHIR, with_authorization

    app = make_app(fhir_server_allowlist=(FHIR,))
    request = with_authorization(load_request("acute-lbp-defer"))
    conditions = request["prefetch"].pop("conditions")
    with responses.RequestsMock() as mock:
        mock.get(f"{FHIR}/Condition", json=conditions)
        app.test_client().post(SELECT, json=request)
    assert rows(app)[0]["fallback_used"] is True


def test_tenant_from_the_client_jwt_is_recorded(make_app, tmp_path):
    from helpers import EC_KEY, ISS, jwk, token

    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1", "ES384")]}}]}))
    app = make_app(auth="required", trusted_issuers=issuers)
    app.test_client().post(
        SELECT, json=load_request("acute-lbp-defer"), headers={"Authorization": f"Bearer {token(tenant='hospital-7')}"}
    )
    assert rows(app)[0]["tenant"] == "hospital-7"


def test_feedback_joins_the_record_through_the_card_uuid(app, client):
    card = client.post(SELECT, json=load_request("acute-lbp-defer")).get_json()["cards"][0]
    client.post(
        FEEDBACK,
        json={
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-06-01T12:01:00Z",
                    "overrideReason": {"reason": {"system": "urn:x", "code": "red-flag-not-in-record"}},
                }
            ]
        },
    )
    joined = app.extensions["cds"].store.cards_with_feedback()
    assert [(j["card_uuid"], j["topic"], j["rule_id"], j["outcome"], j["override_reason_code"]) for j in joined] == [
        (card["uuid"], "defer-imaging", "R-08", "overridden", "red-flag-not-in-record")
    ]


def test_a_database_outage_does_not_fail_the_hook_call(app, client, tmp_path):
    app.extensions["cds"].store.engine = create_engine(f"sqlite:///{tmp_path}/gone/x.sqlite3")
    response = client.post(SELECT, json=load_request("cauda-equina"))
    assert response.status_code == 200 and response.get_json()["cards"]


def test_background_writer_writes_batches_and_keeps_records_while_the_database_is_away(make_app, tmp_path):
    app = make_app(audit_write="background")
    store = app.extensions["cds"].store
    healthy = store.engine
    client = app.test_client()
    for _ in range(5):
        client.post(SELECT, json=load_request("acute-lbp-defer"))
    assert app.extensions["cds"].audit.flush(5) and len(store.audit_rows()) == 5
    store.engine = create_engine(f"sqlite:///{tmp_path}/gone/x.sqlite3")
    for _ in range(3):
        assert client.post(SELECT, json=load_request("cauda-equina")).status_code == 200
    assert not app.extensions["cds"].audit.flush(0.3)  # held while the database is away
    store.engine = healthy
    assert app.extensions["cds"].audit.flush(20)
    assert [r["card_topics"] for r in store.audit_rows()][-3:] == [["urgent-imaging"]] * 3


# --- silent roll-out -------------------------------------------------------------------------------


def test_global_silent_mode_answers_nothing_but_audits(make_app):
    app = make_app(silent=True)
    body = app.test_client().post(SELECT, json=load_request("cauda-equina")).get_json()
    assert body == {"cards": []}
    [row] = rows(app)
    assert row["silent"] is True and row["card_topics"] == ["urgent-imaging"] and row["rating"] == "appropriate"


def test_silent_mode_per_service_from_its_hooks_file(make_app, tmp_path):
    for name in ("order-select", "order-sign"):
        definition = json.loads((ROOT / "hooks" / f"{name}.json").read_text())
        definition["silent"] = name == "order-sign"
        (tmp_path / f"{name}.json").write_text(json.dumps(definition))
    app = make_app(hooks_dir=tmp_path)
    client = app.test_client()
    assert client.post(SIGN, json=load_request("acute-lbp-order-sign")).get_json() == {"cards": []}
    assert client.post(SELECT, json=load_request("acute-lbp-defer")).get_json()["cards"]
    assert [row["silent"] for row in rows(app)] == [True, False]


@pytest.mark.parametrize("mode", ["hash", "clear", "off"])
def test_the_ordering_user_is_recorded_as_a_pseudonym_by_default(make_app, mode):
    app = make_app(audit_practitioner=mode, audit_key="site-secret")
    request = load_request("acute-lbp-defer")
    request["context"]["userId"] = "Practitioner/dr-canary-42"
    app.test_client().post("/cds-services/lumbar-mri-order-select", json=request)
    [row] = app.extensions["cds"].store.audit_rows()
    if mode == "hash":
        assert row["practitioner"].startswith("pr-") and "canary" not in row["practitioner"]
        other = make_app(audit_practitioner="hash", audit_key="site-secret").extensions["cds"].audit
        assert other.practitioner_of("Practitioner/dr-canary-42") == row["practitioner"]  # stable across instances
    elif mode == "clear":
        assert row["practitioner"] == "Practitioner/dr-canary-42"
    else:
        assert row["practitioner"] is None


def test_the_department_is_recorded_from_the_encounter_when_the_client_sends_one(app):
    request = load_request("acute-lbp-defer")
    request["context"]["encounterId"] = "enc-1"
    request["prefetch"]["encounter"] = {
        "resourceType": "Encounter", "id": "enc-1", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{request['context']['patientId']}"},
        "serviceType": {"text": "Spine clinic"},
    }  # fmt: skip
    app.test_client().post(SELECT, json=request)
    [row] = app.extensions["cds"].store.audit_rows()
    assert row["department"] == "Spine clinic"


@pytest.mark.parametrize(
    "encounter, department",
    [
        ({"location": [{"location": {"display": "Ward 4"}}]}, "Ward 4"),
        ({"serviceProvider": {"display": "Spine Institute"}}, "Spine Institute"),
        ({"serviceType": {"coding": [{"code": "x", "display": "Orthopaedics"}]}}, "Orthopaedics"),
        ({"serviceType": "Spine clinic", "location": {"display": "x"}, "serviceProvider": ["x"]}, None),  # odd shapes
    ],
)
def test_the_department_comes_from_a_display_text_of_the_encounter_whatever_its_shape(app, encounter, department):
    request = load_request("acute-lbp-defer")
    request["context"]["encounterId"] = "enc-1"
    request["prefetch"]["encounter"] = {"resourceType": "Encounter", "id": "enc-1", "status": "in-progress",
                                        "subject": {"reference": f"Patient/{request['context']['patientId']}"},
                                        **encounter}  # fmt: skip
    assert app.test_client().post(SELECT, json=request).status_code == 200
    [row] = app.extensions["cds"].store.audit_rows()
    assert row["department"] == department
