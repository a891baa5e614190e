"""Ready for a real trial: consult ids that trace, examples that mean the same on any date, one FHIR
server for every patient fixture."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import responses
from conftest import FIXTURES, SCENARIOS, load_request
from golden import summarize

from cds_service.cards import PAMA_CONSULT_ID
from cds_service.cli import main
from cds_service.trial import REFERENCE, shift_dates

SERVICE_FOR = {"order-select": "lumbar-mri-order-select", "order-sign": "lumbar-mri-order-sign"}


def consult_ids(response):
    found = set()

    def walk(value):
        if isinstance(value, dict):
            if value.get("url") == PAMA_CONSULT_ID:
                found.add(value["valueUri"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(response)
    return found


@pytest.mark.parametrize("name", ["pacemaker-ct-alternative", "acute-lbp-defer", "order-sign-mixed-orders"])
def test_every_consult_id_sent_is_in_the_audit_trail(app, client, name):
    """Regression: each update suggestion minted its own consult id, recorded nowhere."""
    scenario = SCENARIOS["scenarios"][name]
    response = client.post(f"/cds-services/{SERVICE_FOR[scenario['hook']]}", json=load_request(name)).get_json()
    audited = {row["consult_id"] for row in app.extensions["cds"].store.audit_rows()}
    assert consult_ids(response) and consult_ids(response) <= audited


def test_dates_shift_so_that_the_reference_date_becomes_now():
    now = datetime(2027, 3, 15, 9, 30, tzinfo=UTC)
    shifted = shift_dates({"a": "2026-06-01", "b": "2026-05-18T08:00:00Z", "c": "2026-05", "d": "1979",
                           "e": "not a date", "f": ["2026-05-31T10:00:00+02:00"]}, now)  # fmt: skip
    days = timedelta(days=(now.date() - REFERENCE.date()).days)  # whole days: every date keeps its weekday gap
    assert shifted["a"] == now.date().isoformat()
    assert shifted["b"] == (datetime(2026, 5, 18, 8, tzinfo=UTC) + days).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert shifted["c"] == (datetime(2026, 5, 1, tzinfo=UTC) + days).strftime("%Y-%m")
    assert shifted["e"] == "not a date" and shifted["d"] == "1979"  # a bare year is left alone
    assert shifted["f"][0].endswith("+02:00")


@pytest.mark.parametrize("name", sorted(SCENARIOS["scenarios"]))
def test_every_example_sent_today_gives_its_golden_answer(make_app, name):
    """What `cds-service send` does: the example's dates moved so that 2026-06-01 is now."""
    now = datetime.now(UTC).replace(microsecond=0)
    client = make_app(clock=lambda: now).test_client()
    scenario = SCENARIOS["scenarios"][name]
    request = shift_dates(load_request(name), now)
    response = client.post(f"/cds-services/{SERVICE_FOR[scenario['hook']]}", json=request)
    expected = json.loads((FIXTURES / "expected" / f"{name}.json").read_text())
    expected.pop("description")
    assert summarize(response.get_json(), expected["rules"]) == expected


def test_cds_service_send_posts_the_shifted_examples_and_reports_a_non_200(capsys):
    url = "http://cds.test"
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{url}/cds-services/lumbar-mri-order-select", json={"cards": []})
        assert main(["send", "--url", url, "--json", str(FIXTURES / "requests" / "acute-lbp-defer.json")]) == 0
        sent = json.loads(mock.calls[0].request.body)
        assert sent["prefetch"]["conditions"]["entry"][0]["resource"]["onsetDateTime"] != "2026-05-18"
    assert json.loads(capsys.readouterr().out) == {"cards": []}
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{url}/cds-services/lumbar-mri-order-select", status=412, json={"issue": []})
        assert main(["send", "--url", url, str(FIXTURES / "requests" / "acute-lbp-defer.json")]) == 1


def test_resource_ids_are_unique_across_the_patient_fixtures():
    seen = Counter()
    for path in sorted((FIXTURES / "patients").glob("*.json")):
        for entry in json.loads(path.read_text())["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "Patient":
                seen[(resource["resourceType"], resource["id"])] += 1
    assert [key for key, count in seen.items() if count > 1] == []


def test_load_fixtures_puts_every_resource_with_shifted_dates(capsys):
    fhir = "http://fhir.test/fhir"
    with responses.RequestsMock() as mock:
        mock.add_callback(responses.PUT, __import__("re").compile(fhir + r"/\w+/.+"),
                          callback=lambda request: (201, {}, "{}"))  # fmt: skip
        assert main(["load-fixtures", "--fhir", fhir]) == 0
        puts = [(call.request.url, json.loads(call.request.body)) for call in mock.calls]
    assert len(puts) == sum(len(json.loads(p.read_text())["entry"]) for p in (FIXTURES / "patients").glob("*.json"))
    assert all(url.endswith(f"/{body['resourceType']}/{body['id']}") for url, body in puts)
    assert not any("2026-05-18" in json.dumps(body) for _, body in puts)


def test_cds_service_token_mints_a_jwt_the_service_accepts(make_app, tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization
    from helpers import EC_KEY, ISS, jwk

    pem = tmp_path / "key.pem"
    pem.write_bytes(EC_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))  # fmt: skip
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1", "ES384")]}}]}))
    app = make_app(auth="required", trusted_issuers=issuers)
    aud = "http://localhost/cds-services/lumbar-mri-order-select"
    assert main(["token", "--key", str(pem), "--iss", ISS, "--aud", aud, "--kid", "ec-1"]) == 0
    token = capsys.readouterr().out.strip()
    response = app.test_client().post("/cds-services/lumbar-mri-order-select", json=load_request("acute-lbp-defer"),
                                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert response.status_code == 200


def test_postgres_urls_as_libpq_tools_write_them_are_accepted():
    from cds_service.storage import Store, normalised_url

    assert normalised_url("postgres://u:p@db:5432/cds") == "postgresql+psycopg://u:p@db:5432/cds"
    assert normalised_url("postgresql://u@db/cds") == "postgresql+psycopg://u@db/cds"
    assert Store("postgres://u@127.0.0.1:1/cds").engine.dialect.driver == "psycopg"


def test_hook_calls_are_answered_while_the_database_is_away_at_start(make_app):
    app = make_app(database_url="postgresql://nobody@127.0.0.1:1/cds")  # nothing listens on port 1
    client = app.test_client()
    response = client.post("/cds-services/lumbar-mri-order-select", json=load_request("acute-lbp-defer"))
    assert response.status_code == 200 and response.get_json()["cards"]
    assert client.get("/readyz").status_code == 503


def test_a_bad_setting_stops_serve_with_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("CDS_THRESHOLD_ELDERLY_AGE", "old")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "CDS_THRESHOLD_ELDERLY_AGE" in err and "for example 65" in err
