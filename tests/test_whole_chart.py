"""The whole chart: red flags wherever they are coded, conservative care from medicines and procedures,
prior imaging from reports and studies, status rules per resource type; prefetch and FHIR fallback alike."""

from __future__ import annotations

import copy
import json
import re

import pytest
import responses
from conftest import FIXTURES, SCENARIOS, SELECT, load_request
from golden import summarize
from helpers import FHIR, with_authorization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rules import RED_FLAGS, UNRATED, run, topics

from cds_service.protocol.fhir import decode_hook_request
from cds_service.resource_types import BY_PREFETCH_KEY

ICD, SCT, LOINC = "http://hl7.org/fhir/sid/icd-10-cm", "http://snomed.info/sct", "http://loinc.org"
DEFERRED = ["acute-lbp-defer", "subacute-no-conservative-care", "repeat-imaging"]
NEW_SCENARIOS = [
    "order-reason-cauda-equina",
    "provisional-cauda-equina",
    "refuted-red-flag",
    "observation-red-flag",
    "medication-failed-care",
    "otc-medication-failed-care",
    "medication-not-taken",
    "chiropractic-failed-care",
    "prior-imaging-report",
    "prior-imaging-cancelled-report",
    "prior-imaging-study",
    "cancelled-observation",
]
SERVICE_FOR = {"order-select": "lumbar-mri-order-select", "order-sign": "lumbar-mri-order-sign"}


def expected(name):
    golden = json.loads((FIXTURES / "expected" / f"{name}.json").read_text())
    golden.pop("description")
    return golden


# --- where a red flag is coded ------------------------------------------------------------------


def in_order_reason(request, system, code):
    request["context"]["draftOrders"]["entry"][0]["resource"]["reasonCode"].append(
        {"coding": [{"system": system, "code": code}]}
    )
    return request


def as_provisional_condition(request, system, code):
    patient = request["context"]["patientId"]
    request["prefetch"]["conditions"]["entry"].append({"resource": {
        "resourceType": "Condition", "id": "suspected", "subject": {"reference": f"Patient/{patient}"},
        "verificationStatus": {"coding": [{"code": "provisional"}]},
        "category": [{"coding": [{"code": "encounter-diagnosis"}]}],
        "code": {"coding": [{"system": system, "code": code}]}, "onsetDateTime": "2026-05-30"}})  # fmt: skip
    return request


def as_observation_value(request, system, code):
    patient = request["context"]["patientId"]
    request["prefetch"]["findings"]["entry"].append({"resource": {
        "resourceType": "Observation", "id": "finding", "status": "final", "subject": {"reference": f"Patient/{patient}"},
        "category": [{"coding": [{"code": "exam"}]}], "code": {"coding": [{"system": LOINC, "code": "29545-1"}]},
        "valueCodeableConcept": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": "2026-05-30"}})  # fmt: skip
    return request


PLACES = {"order reason": in_order_reason, "provisional condition": as_provisional_condition,
          "observation value": as_observation_value}  # fmt: skip


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("scenario", DEFERRED)
def test_a_red_flag_coded_only_there_is_never_deferred(app, scenario, place):
    """Safety sweep: each red-flag code of every red-flag value set, placed only in the order's reason,
    only as a provisional Condition, or only as an Observation's answer."""
    failures = []
    for value_set_id, system, code in RED_FLAGS:
        request = PLACES[place](load_request(scenario), system, code.replace(" ", ""))
        assessment, response = run(app, request)
        rated = "no-criteria-apply" if value_set_id in UNRATED else "appropriate"
        if "defer-imaging" in topics(response) or not response["cards"] or assessment.rating != rated:
            failures.append(f"{value_set_id} {code}: {topics(response)} {assessment.rating}")
    assert failures == []


def test_the_card_says_where_each_finding_is_recorded(app):
    request = in_order_reason(load_request("acute-lbp-defer"), SCT, "192970008")
    request = as_observation_value(request, SCT, "6077001")
    _, response = run(app, request)
    detail = response["cards"][0]["detail"]
    assert "(SNOMED CT 192970008) (order reason)" in detail
    assert "(observation, 2026-05-30)" in detail
    provisional = as_provisional_condition(load_request("acute-lbp-defer"), SCT, "192970008")
    assert "(encounter diagnosis, provisional, 2026-05-30)" in run(app, provisional)[1]["cards"][0]["detail"]


def test_a_condition_the_order_names_as_its_reason_counts_whatever_its_status_or_date(app):
    request = load_request("acute-lbp-defer")
    patient = request["context"]["patientId"]
    request["prefetch"]["conditions"]["entry"].append({"resource": {
        "resourceType": "Condition", "id": "old-metastasis", "subject": {"reference": f"Patient/{patient}"},
        "clinicalStatus": {"coding": [{"code": "inactive"}]},
        "code": {"coding": [{"system": ICD, "code": "C79.51"}]}, "onsetDateTime": "2015-01-01"}})  # fmt: skip
    assert run(app, request)[0].fired[0] == "R-08"  # inactive: not on its own
    request["context"]["draftOrders"]["entry"][0]["resource"]["reasonReference"] = [
        {"reference": "Condition/old-metastasis"}
    ]
    assessment, response = run(app, request)
    assert assessment.fired[0] == "R-03" and topics(response) == ["urgent-imaging"]


def test_an_observation_that_records_the_finding_as_absent_does_not_count(app):
    def coded(value):
        request = load_request("acute-lbp-defer")
        patient = request["context"]["patientId"]
        request["prefetch"]["findings"]["entry"].append({"resource": {
            "resourceType": "Observation", "id": "exam", "status": "final", "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": SCT, "code": "6077001"}]}, "effectiveDateTime": "2026-05-30", **value}})  # fmt: skip
        return topics(run(app, request)[1])

    assert coded({"valueBoolean": True}) == ["urgent-imaging"]
    assert coded({}) == ["urgent-imaging"]
    assert coded({"valueBoolean": False}) == ["defer-imaging"]
    assert coded({"valueCodeableConcept": {"coding": [{"system": SCT, "code": "2667000"}]}}) == ["defer-imaging"]


@st.composite
def chart_with_a_red_flag(draw):
    value_set_id, system, code = draw(st.sampled_from(RED_FLAGS))
    place = draw(st.sampled_from(sorted(PLACES) + ["problem list"]))
    scenario = draw(st.sampled_from(DEFERRED))
    noise = draw(st.lists(st.sampled_from(["nsaid", "cancelled-temperature", "report", "other-patient"]), max_size=4))
    return value_set_id, system, code.replace(" ", ""), place, scenario, noise


def add_noise(request, kinds):
    patient = request["context"]["patientId"]
    for index, kind in enumerate(kinds):
        resource = {
            "nsaid": {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                      "medicationCodeableConcept": {"text": "Naproxen 500 MG Oral Tablet"}, "authoredOn": "2026-05-20"},
            "cancelled-temperature": {"resourceType": "Observation", "status": "cancelled",
                                      "code": {"coding": [{"system": LOINC, "code": "8310-5"}]},
                                      "valueQuantity": {"value": 36.0, "code": "Cel"}, "effectiveDateTime": "2026-05-30"},
            "report": {"resourceType": "DiagnosticReport", "status": "final",
                       "code": {"coding": [{"system": LOINC, "code": "30679-5"}]}, "effectiveDateTime": "2026-05-01"},
            "other-patient": {"resourceType": "Condition", "code": {"coding": [{"system": ICD, "code": "M54.50"}]},
                              "subject": {"reference": "Patient/someone-else"}},
        }[kind]  # fmt: skip
        resource = {"id": f"noise-{index}", "subject": {"reference": f"Patient/{patient}"}, **resource}
        key = next(k for k, entry in BY_PREFETCH_KEY.items() if entry.name == resource["resourceType"])
        request["prefetch"][key]["entry"].append({"resource": resource})
    return request


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chart_with_a_red_flag())
def test_a_red_flag_anywhere_in_a_generated_record_means_no_deferral(app, case):
    value_set_id, system, code, place, scenario, noise = case
    request = add_noise(load_request(scenario), noise)
    if place == "problem list":
        from test_rules import condition

        request = condition(request, system, code)
    else:
        request = PLACES[place](request, system, code)
    _, response = run(app, request)
    assert response["cards"] and "defer-imaging" not in topics(response), (value_set_id, code, place)


# --- both modes: prefetch, and FHIR fallback with no prefetch ----------------------------------


def served_from_the_fhir_server(name):
    """The scenario's request with no prefetch at all, and a mock FHIR server holding its patient."""
    request = with_authorization(load_request(name))
    prefetch = request.pop("prefetch")
    mock = responses.RequestsMock(assert_all_requests_are_fired=False)
    for key, value in prefetch.items():
        kind = BY_PREFETCH_KEY[key]
        if kind.name == "Patient":
            mock.add(responses.GET, f"{FHIR}/Patient/{request['context']['patientId']}", json=value)
        else:
            mock.add(responses.GET, re.compile(re.escape(f"{FHIR}/{kind.name}") + r"\?.*"), json=value)
    return request, mock


@pytest.mark.parametrize("name", NEW_SCENARIOS)
def test_the_same_answer_with_prefetch_and_from_the_fhir_server(make_app, name):
    client = make_app(fhir_server_allowlist=(FHIR,)).test_client()
    service = SERVICE_FOR[SCENARIOS["scenarios"][name]["hook"]]
    with_prefetch = client.post(f"/cds-services/{service}", json=load_request(name))
    request, mock = served_from_the_fhir_server(name)
    with mock:
        fetched = client.post(f"/cds-services/{service}", json=request)
        searched = {call.request.url.split("?")[0].rsplit("/", 1)[-1] for call in mock.calls}
    assert with_prefetch.status_code == fetched.status_code == 200, fetched.get_json()
    golden = expected(name)
    assert summarize(with_prefetch.get_json(), golden["rules"]) == golden
    assert summarize(fetched.get_json(), golden["rules"]) == golden
    assert {"MedicationRequest", "MedicationStatement", "DiagnosticReport", "ImagingStudy"} <= searched


# --- medicines, reports, studies, statuses ------------------------------------------------------


def test_a_product_is_matched_by_its_ingredient_and_dated_by_its_dispense_window(app):
    request = load_request("medication-not-taken")
    entry = request["prefetch"]["medicationRequests"]["entry"][0]["resource"]
    entry.update(status="completed", medicationCodeableConcept={"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                 "code": "310965", "display": "Ibuprofen 200 MG Oral Tablet"}]})  # fmt: skip
    del entry["authoredOn"]
    entry["dispenseRequest"] = {"validityPeriod": {"start": "2026-02-25"}}
    assessment, response = run(app, request)
    assert assessment.fired[0] == "R-10b"
    assert "Ibuprofen 200 MG Oral Tablet (RxNorm 310965) (prescription, 2026-02-25)" in response["cards"][0]["detail"]


def test_medicines_started_before_this_episode_are_not_its_conservative_care(app):
    request = load_request("medication-failed-care")
    for entry in request["prefetch"]["medicationRequests"]["entry"]:
        entry["resource"]["authoredOn"] = "2025-06-01"  # a year before the radiculopathy began
    assert run(app, request)[0].fired[0] == "R-09"


def test_the_same_observation_in_two_searches_is_read_once(app):
    request = load_request("cancelled-observation")
    for entry in request["prefetch"]["observations"]["entry"]:
        entry["resource"]["status"] = "final"  # the 39.5 °C reading is read (the normal repeat cannot matter)
    request["prefetch"]["findings"] = copy.deepcopy(request["prefetch"]["observations"])
    rt = app.extensions["cds"]
    evaluation = rt.evaluator.evaluate(
        rt.services["lumbar-mri-order-select"], decode_hook_request(json.dumps(request).encode())
    )
    assert [o.id for o in evaluation.record.observations] == ["cancelled-fever-cancelled"]


@pytest.mark.parametrize(
    "resource_type, key, status, counts",
    [
        ("Observation", "observations", "preliminary", True),
        ("Observation", "observations", "amended", True),
        ("Observation", "observations", "registered", False),
        ("Observation", "observations", "entered-in-error", False),
        ("MedicationRequest", "medicationRequests", "draft", False),
        ("MedicationRequest", "medicationRequests", "stopped", True),
        ("MedicationStatement", "medicationStatements", "entered-in-error", False),
        ("DiagnosticReport", "reports", "entered-in-error", False),
        ("DiagnosticReport", "reports", "amended", True),
    ],
)
def test_status_rules_per_resource_type(client, resource_type, key, status, counts):
    scenario = {"Observation": "cancelled-observation", "MedicationRequest": "medication-failed-care",
                "MedicationStatement": "otc-medication-failed-care", "DiagnosticReport": "prior-imaging-report"}[resource_type]  # fmt: skip
    request = load_request(scenario)
    for entry in request["prefetch"][key]["entry"]:
        entry["resource"]["status"] = status
    cards = client.post(SELECT, json=request).get_json()["cards"]
    shown = [card["source"]["topic"]["code"] for card in cards]
    counted = {
        "Observation": "urgent-imaging" in shown,  # the 39.5 °C reading (and the normal repeat) now count
        "MedicationRequest": shown == [],  # failed care in a candidate: appropriate, no card
        "MedicationStatement": shown == ["intervention-candidacy"],
        "DiagnosticReport": shown == ["defer-imaging"] and "Repeat" in cards[0]["summary"],
    }[resource_type]
    assert counted is counts, shown


def test_suggested_studies_name_their_radiation_level(client):
    body = client.post(SELECT, json=load_request("pacemaker-ct-alternative")).get_json()
    labels = [s["label"] for card in body["cards"] for s in card.get("suggestions", [])]
    assert "Replace with CT lumbar spine without contrast, urgent (radiation 1-10 mSv (ACR level 3 of 5))" in labels
    assert any("CT myelography" in label and "10-30 mSv" in label for label in labels)
    assert any("without and with contrast" in label and "no ionising radiation" in label for label in labels)
    assert "Keep the MRI and make it urgent" in labels  # a change of priority is not a study: no dose named


# --- multiple weaker cancer risk factors (ACP 2011 table 2) ---------------------------------


def with_weight_loss(request, onset="2026-05-01"):
    from test_rules import condition

    return condition(request, SCT, "422868009", onset=onset)


def test_two_weaker_cancer_factors_are_urgent_imaging(app):
    """Unexplained weight loss at 63 with pain not improving: multiple risk factors, urgent (not information)."""
    request = with_weight_loss(load_request("subacute-no-conservative-care"))
    request["prefetch"]["patient"]["birthDate"] = "1963-01-15"
    assessment, response = run(app, request)
    assert assessment.fired[0] == "R-03"
    [card] = [c for c in response["cards"] if c["source"]["topic"]["code"] == "urgent-imaging"]
    assert card["indicator"] == "warning" and "Multiple cancer risk factors" in card["summary"]


def test_age_over_50_and_no_improvement_after_a_month_of_care_are_two_factors(app):
    request = load_request("chiropractic-failed-care")  # care since February
    assert run(app, request)[0].fired[0] == "R-10b"  # age 40: one factor (no improvement) only
    request["prefetch"]["patient"]["birthDate"] = "1960-01-01"
    assert run(app, request)[0].fired[0] == "R-03"


def test_one_weaker_factor_alone_follows_the_ordinary_rules_and_its_advice_rides_on_the_card(app):
    request = with_weight_loss(load_request("acute-lbp-defer"))  # 44 years old, 2 weeks of pain
    assessment, response = run(app, request)
    assert assessment.fired[0] == "R-08" and topics(response) == ["defer-imaging"]
    assert (
        "weaker cancer risk factor: radiographs and ESR if no improvement after about a month"
        in response["cards"][0]["detail"]
    )
