"""Patient data: prefetch states, FHIR fallback, and what ends up in the patient record."""

from __future__ import annotations

import copy
import json

import pytest
import responses
from conftest import SELECT, load_request
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.patient import Patient
from helpers import FHIR, TOKEN, evaluate, searchset, with_authorization

from cds_service.protocol import HookRequest, decode


@pytest.fixture
def fallback_app(make_app):
    return make_app(fhir_server_allowlist=(FHIR,), fhir_budget_seconds=2.0)


def test_complete_prefetch_builds_a_typed_record_without_calling_out(app):
    with responses.RequestsMock() as mock:  # any outbound call would fail the test
        evaluation = evaluate(app, load_request("cancer-history"))
        assert len(mock.calls) == 0
    record = evaluation.record
    assert isinstance(record.patient, Patient) and str(record.patient.birthDate) == "1962-09-05"
    assert all(isinstance(c, Condition) for c in record.conditions)
    assert {c.id for c in record.conditions} == {"cancer-history-c-lbp", "cancer-history-c-brca"}
    assert (
        set(record.sources.values()) == {"prefetch", "empty"} and record.sources["encounter"] == "empty"
    )  # no encounterId
    assert not record.fallback_used


def test_null_prefetch_means_no_data_and_is_not_fetched(fallback_app):
    request = with_authorization(load_request("acute-lbp-defer"))
    request["prefetch"]["devices"] = None
    request["prefetch"]["procedures"] = None
    with responses.RequestsMock():
        evaluation = evaluate(fallback_app, request)
    assert evaluation.record.sources["devices"] == "empty"
    assert evaluation.record.devices == []


def test_empty_searchset_means_no_data(app):
    request = load_request("acute-lbp-defer")
    request["prefetch"]["conditions"] = searchset()
    assert evaluate(app, request).record.conditions == []


def test_missing_key_without_fhir_access_is_412_naming_the_key(client):
    request = load_request("acute-lbp-defer")
    del request["prefetch"]["conditions"]
    response = client.post(SELECT, json=request)
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["conditions"]
    assert "conditions" in outcome["issue"][0]["diagnostics"]


def test_no_prefetch_at_all_without_fhir_access_is_412_listing_every_key(client):
    request = load_request("acute-lbp-defer")
    del request["prefetch"]
    response = client.post(SELECT, json=request)
    assert response.status_code == 412
    assert set(response.get_json()["issue"][0]["expression"]) == {
        "patient",
        "conditions",
        "observations",
        "serviceRequests",
        "procedures",
        "devices",
    }


def test_partial_prefetch_fetches_only_the_missing_keys_with_the_bearer_token(fallback_app):
    request = with_authorization(load_request("acute-lbp-defer"))
    conditions = request["prefetch"].pop("conditions")
    del request["prefetch"]["devices"]
    with responses.RequestsMock() as mock:
        mock.get(f"{FHIR}/Condition", json=conditions)
        mock.get(f"{FHIR}/Device", json=searchset())
        evaluation = evaluate(fallback_app, request)
        assert sorted(call.request.url.split("?")[0] for call in mock.calls) == [f"{FHIR}/Condition", f"{FHIR}/Device"]
        assert all(call.request.headers["Authorization"] == f"Bearer {TOKEN}" for call in mock.calls)
        assert "patient=pt-acute-lbp" in mock.calls[0].request.url
    record = evaluation.record
    assert record.sources["conditions"] == "fetched" and record.sources["patient"] == "prefetch"
    assert [c.id for c in record.conditions] == ["acute-lbp-c-lbp"]
    assert record.fallback_used


def test_operation_outcome_in_prefetch_is_treated_as_missing_and_fetched(fallback_app):
    request = with_authorization(load_request("cancer-history"))
    conditions = request["prefetch"]["conditions"]
    request["prefetch"]["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    with responses.RequestsMock() as mock:
        mock.get(f"{FHIR}/Condition", json=conditions)
        evaluation = evaluate(fallback_app, request)
    assert {c.id for c in evaluation.record.conditions} == {"cancer-history-c-lbp", "cancer-history-c-brca"}


def test_operation_outcome_without_fhir_access_is_412(client):
    request = load_request("acute-lbp-defer")
    request["prefetch"]["observations"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception"}],
    }
    response = client.post(SELECT, json=request)
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["expression"] == ["observations"]


def test_omit_policy_carries_on_without_the_key(tmp_path, make_app):
    from conftest import ROOT

    definition = json.loads((ROOT / "hooks" / "order-select.json").read_text())
    definition["prefetchFailurePolicy"] = {"devices": "omit"}
    (tmp_path / "select.json").write_text(json.dumps(definition))
    app = make_app(hooks_dir=tmp_path)
    request = load_request("acute-lbp-defer")
    del request["prefetch"]["devices"]
    evaluation = evaluate(app, request)
    assert evaluation.record.unavailable == ["devices"]
    del request["prefetch"]["conditions"]
    assert app.test_client().post(SELECT, json=request).status_code == 412  # conditions keep FAIL


def test_entered_in_error_and_refuted_resources_are_ignored(app):
    record = evaluate(app, load_request("entered-in-error-red-flag")).record
    assert [c.id for c in record.conditions] == ["entered-in-error-red-flag-c-lbp"]
    assert record.observations == []


def test_resources_of_another_patient_are_ignored(app):
    request = load_request("acute-lbp-defer")
    stray = json.loads(json.dumps(request["prefetch"]["conditions"]["entry"][0]["resource"]))
    stray.update(id="someone-else", subject={"reference": "https://ehr.example.org/fhir/Patient/other-patient"})
    request["prefetch"]["conditions"]["entry"].append({"resource": stray})
    record = evaluate(app, request).record
    assert [c.id for c in record.conditions] == ["acute-lbp-c-lbp"]
    assert any("another patient" in note for note in record.data_quality)


def test_only_resources_the_rules_read_get_typed_models(app):
    request = load_request("acute-lbp-defer")
    hypertension = {
        "resourceType": "Condition",
        "id": "c-htn",
        "subject": {"reference": "Patient/pt-acute-lbp"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]},
    }
    request["prefetch"]["conditions"]["entry"].append({"resource": hypertension})
    record = evaluate(app, request).record
    assert [c.id for c in record.conditions] == ["acute-lbp-c-lbp"]
    assert record.seen > record.kept


def test_icd_codes_without_dots_and_oid_systems_are_recognised(app):
    request = load_request("acute-lbp-defer")
    request["prefetch"]["conditions"]["entry"][0]["resource"]["code"]["coding"][0].update(
        system="urn:oid:2.16.840.1.113883.6.90", code="M5450"
    )
    assert [c.id for c in evaluate(app, request).record.conditions] == ["acute-lbp-c-lbp"]


def test_an_invalid_element_is_dropped_not_the_red_flag(app):
    request = load_request("cauda-equina")
    ces = request["prefetch"]["conditions"]["entry"][1]["resource"]
    ces["recordedDate"] = "2026-05-31T10:00:00"  # no time zone: invalid FHIR dateTime
    ces["madeUpElement"] = True
    del ces["subject"]
    record = evaluate(app, request).record
    kept = {c.id: c for c in record.conditions}
    assert "cauda-equina-c-ces" in kept and kept["cauda-equina-c-ces"].recordedDate is None
    assert str(kept["cauda-equina-c-ces"].onsetDateTime) == "2026-05-31"
    assert any("Condition" in note and "dropped" in note for note in record.data_quality)


def test_searchset_outcome_entries_and_unknown_types_are_skipped(app):
    request = load_request("acute-lbp-defer")
    entries = request["prefetch"]["conditions"]["entry"]
    entries.append(
        {
            "resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing"}]},
            "search": {"mode": "outcome"},
        }
    )
    entries.append(
        {"resource": {"resourceType": "Encounter", "id": "e1", "status": "finished"}, "search": {"mode": "include"}}
    )
    assert [c.id for c in evaluate(app, request).record.conditions] == ["acute-lbp-c-lbp"]


def test_prefetch_for_non_lumbar_orders_is_never_read(client):
    """Anything but a lumbar MRI is answered without decoding the patient data at all."""
    request = load_request("other-imaging")
    request["prefetch"]["conditions"] = {"entry": "not even a bundle"}
    response = client.post(SELECT, json=request)
    assert response.status_code == 200 and response.get_json() == {"cards": []}


def test_observations_outside_their_look_back_window_are_not_read(app):
    request = load_request("infection-fever-ivdu")
    old = json.loads(json.dumps(request["prefetch"]["observations"]["entry"][0]))
    old["resource"].update(id="o-temp-old", effectiveDateTime="2026-04-01T08:00:00Z")
    request["prefetch"]["observations"]["entry"].append(old)
    assert [o.id for o in evaluate(app, request).record.observations] == ["spinal-infection-risk-o-temp"]


def test_an_odd_resource_of_another_type_takes_the_careful_path_and_is_skipped(app):
    """An _include'd Appointment whose `code` is not a CodeableConcept breaks the one-pass decode;
    the careful path skips it and keeps everything else."""
    request = load_request("cancer-history")
    request["prefetch"]["conditions"]["entry"].append(
        {
            "resource": {"resourceType": "Appointment", "id": "e1", "code": "AMB", "type": [{"text": "visit"}]},
            "search": {"mode": "include"},
        }
    )
    record = evaluate(app, request).record
    assert {c.id for c in record.conditions} == {"cancer-history-c-lbp", "cancer-history-c-brca"}


def test_fast_and_careful_decoding_build_the_same_record(app):
    from cds_service.protocol.fhir import decode_hook_request

    body = json.dumps(load_request("low-egfr-contrast")).encode()
    rt = app.extensions["cds"]
    service = rt.services["lumbar-mri-order-select"]
    fast = rt.evaluator.evaluate(service, decode_hook_request(body)).record
    careful = rt.evaluator.evaluate(service, decode(body, HookRequest)).record

    def dump(record):
        return [
            m.model_dump_json()
            for m in [
                record.patient,
                *record.conditions,
                *record.observations,
                *record.procedures,
                *record.service_requests,
                *record.devices,
            ]
        ]

    assert dump(fast) == dump(careful) and fast.kept == careful.kept > 0


def test_fixture_requests_are_built_from_the_patient_records():
    """fixtures/requests/ is generated from fixtures/patients/ and scenarios.json: never edited by hand."""
    import subprocess
    import sys

    from conftest import FIXTURES

    result = subprocess.run(
        [sys.executable, str(FIXTURES / "build_requests.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


# --- medicines: typed only when they can be this episode's conservative care --------------------


def _medicines(request):
    return [entry["resource"] for entry in request["prefetch"]["medicationRequests"]["entry"]]


def test_medicines_dated_before_the_episode_are_looked_at_but_never_typed(app):
    request = load_request("medication-failed-care")  # radiculopathy since 2026-01-10
    for medicine in _medicines(request):
        medicine["authoredOn"] = "2025-06-01"
    evaluation = evaluate(app, request)
    record = evaluation.record
    assert record.medication_requests == []  # they could not count: no R4B model was built
    assert len(record.deferred["MedicationRequest"]) == 2
    detail = evaluation.response["cards"][0]["detail"]
    assert "2 medicines" in detail  # still reported as looked at


def test_medicines_in_the_episode_undated_or_just_before_it_are_typed(app):
    request = load_request("medication-failed-care")
    naproxen, muscle_relaxant = _medicines(request)
    del muscle_relaxant["authoredOn"]  # undated: counts (the safe reading)
    naproxen["authoredOn"] = "2026-01-09"  # the day before the episode began: typed, then judged
    record = evaluate(app, request).record
    assert sorted(m.id for m in record.medication_requests) == sorted([naproxen["id"], muscle_relaxant["id"]])
    assert record.deferred["MedicationRequest"] == []


def test_a_medicine_dated_by_its_dispense_window_is_dated_so_before_it_is_typed(app):
    request = load_request("medication-failed-care")
    naproxen = _medicines(request)[0]
    del naproxen["authoredOn"]
    naproxen["dispenseRequest"] = {"validityPeriod": {"start": "2025-01-01"}}
    record = evaluate(app, request).record
    assert [entry.data["id"] for entry in record.deferred["MedicationRequest"]] == [naproxen["id"]]


def test_without_a_dated_episode_every_medicine_is_typed(app):
    request = load_request("medication-failed-care")
    for entry in request["prefetch"]["conditions"]["entry"]:
        entry["resource"].pop("onsetDateTime", None)
        entry["resource"].pop("recordedDate", None)
    for medicine in _medicines(request):
        medicine["authoredOn"] = "2020-01-01"
    record = evaluate(app, request).record
    assert len(record.medication_requests) == 2


def test_imaging_studies_older_than_the_repeat_window_are_looked_at_but_never_typed(app):
    request = load_request("prior-imaging-study")  # a lumbar MRI study from 2026-02-10: a repeat
    study = request["prefetch"]["imagingStudies"]["entry"][0]["resource"]
    old = copy.deepcopy(study)
    old.update(id="old-study", started="2023-03-01T09:00:00Z")
    request["prefetch"]["imagingStudies"]["entry"].append({"resource": old})
    evaluation = evaluate(app, request)
    assert [s.id for s in evaluation.record.imaging_studies] == [study["id"]]
    assert [entry.data["id"] for entry in evaluation.record.deferred["ImagingStudy"]] == ["old-study"]
    assert "R-11" in evaluation.rules_fired  # the recent study still makes this a repeat
    assert "2 imaging reports and studies" in evaluation.response["cards"][0]["detail"]  # both looked at


@pytest.mark.parametrize("code", [[], {}, ["refuted"]])
def test_a_status_code_that_is_not_a_string_neither_crashes_nor_hides_the_red_flag(client, code):
    """Regression: the entered-in-error / refuted check looked the code up in a set: a list or an
    object there was a TypeError (a 500). Such a status is no status: the red flag still counts."""
    plain = client.post(SELECT, json=load_request("cauda-equina")).get_json()
    request = load_request("cauda-equina")
    for entry in request["prefetch"]["conditions"]["entry"]:
        entry["resource"]["verificationStatus"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": code}]
        }
    response = client.post(SELECT, json=request)
    assert response.status_code == 200
    topics = [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]
    assert topics == [card["source"]["topic"]["code"] for card in plain["cards"]]
    assert "urgent-imaging" in topics
