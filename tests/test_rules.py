"""The rules' clinical behaviour: precedence, red flags, timing, safety and modality."""

from __future__ import annotations

import json

import pytest
from conftest import load_request

from cds_service.knowledge import Knowledge
from cds_service.protocol.fhir import decode_hook_request

ICD, SCT, LOINC = "http://hl7.org/fhir/sid/icd-10-cm", "http://snomed.info/sct", "http://loinc.org"
DEFERRED = ["acute-lbp-defer", "subacute-no-conservative-care", "repeat-imaging", "entered-in-error-red-flag"]
SELECT = "lumbar-mri-order-select"


def run(app, request, service=SELECT):
    rt = app.extensions["cds"]
    evaluation = rt.evaluator.evaluate(rt.services[service], decode_hook_request(json.dumps(request).encode()))
    return evaluation.assessments[0] if evaluation.assessments else None, evaluation.response


def topics(response):
    return [card["source"]["topic"]["code"] for card in response["cards"]]


def condition(request, system, code, *, onset="2026-05-28", clinical="active", cid=None, **extra):
    patient_id = request["context"]["patientId"]
    resource = {
        "resourceType": "Condition",
        "id": cid or f"added-{code}",
        "subject": {"reference": f"Patient/{patient_id}"},
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]
        },
        "code": {"coding": [{"system": system, "code": code}]},
        "onsetDateTime": onset,
        **extra,
    }
    request["prefetch"]["conditions"]["entry"].append({"resource": resource, "search": {"mode": "match"}})
    return request


def observation(request, code, when, **value):
    patient_id = request["context"]["patientId"]
    resource = {
        "resourceType": "Observation",
        "id": f"obs-{code}-{when}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        **value,
    }
    request["prefetch"]["observations"]["entry"].append({"resource": resource})
    return request


def resource(request, key, **fields):
    request["prefetch"][key]["entry"].append(
        {"resource": {"subject": {"reference": f"Patient/{request['context']['patientId']}"}, **fields}}
    )
    return request


def red_flag_codes():
    """Every code of every red-flag value set (ICD families by a member), as (value set, system, code)."""
    knowledge = Knowledge()
    samples = {
        "malignancy": [(ICD, "Z85.3"), (ICD, "C79.51"), (ICD, "C50.911")],
        "iv-drug-use": [(ICD, "F11.20"), (ICD, "F14.10")],
        "immunosuppression": [(ICD, "Z94.0"), (ICD, "Z79.624")],
        "fracture-risk": [(ICD, "M80.08XA")],
        "vertebral-fracture": [(ICD, "S32.010A")],
        "spinal-infection": [(ICD, "M46.26"), (ICD, "M46.47")],
        "bladder-bowel-dysfunction": [(ICD, "N39.41")],
        "recent-infection": [(ICD, "A41.9")],
        "low-velocity-trauma": [(ICD, "W19.XXXA")],
        "high-energy-trauma": [
            (ICD, "V43.52XA"),
            (ICD, "V29.9XXA"),
            (ICD, "V03.10XA"),
            (ICD, "W13.9XXA"),
            (ICD, "W17.89XA"),
        ],
        "axial-spondyloarthritis": [(ICD, "M45.6"), (ICD, "M45.A6"), (ICD, "M46.1")],
    }
    for value_set_id in (
        "cauda-equina",
        "bladder-bowel-dysfunction",
        "severe-neuro-deficit",
        "motor-weakness",
        "malignancy",
        "spinal-metastasis",
        "spinal-infection",
        "fever",
        "iv-drug-use",
        "recent-infection",
        "immunosuppression",
        "fracture-risk",
        "vertebral-fracture",
        "lumbar-surgery",
        "low-velocity-trauma",
        "high-energy-trauma",
        "axial-spondyloarthritis",
    ):
        value_set = knowledge[value_set_id]
        codes = [(system, code) for system, code in value_set.codes] + samples.get(value_set_id, [])
        for system, code in codes:
            yield value_set_id, system, code


RED_FLAGS = list(red_flag_codes())
# Outside the ACR low back pain criteria: never deferred, and the order is rated no-criteria-apply.
UNRATED = {"high-energy-trauma", "axial-spondyloarthritis"}


@pytest.mark.parametrize("scenario", DEFERRED)
def test_no_recorded_red_flag_is_ever_deferred(app, scenario):
    """Safety sweep: each deferral scenario plus any single red-flag code from the value sets."""
    failures = []
    for value_set_id, system, code in RED_FLAGS:
        request = condition(load_request(scenario), system, code.replace(" ", ""))
        assessment, response = run(app, request)
        expected = "no-criteria-apply" if value_set_id in UNRATED else "appropriate"
        if "defer-imaging" in topics(response) or assessment.rating != expected:
            failures.append(f"{value_set_id} {code}: {topics(response)} {assessment.rating}")
    assert failures == []
    assert len(RED_FLAGS) > 100


@pytest.mark.parametrize("scenario", DEFERRED)
def test_a_resolved_red_flag_no_longer_counts(app, scenario):
    request = condition(load_request(scenario), ICD, "G83.4", onset="2019-01-01", clinical="resolved")
    _, response = run(app, request)
    assert "defer-imaging" in topics(response)


def test_history_of_cancer_counts_whatever_its_clinical_status(app):
    request = condition(load_request("acute-lbp-defer"), ICD, "Z85.46", onset="2015-01-01", clinical="inactive")
    assessment, response = run(app, request)
    assert assessment.fired[0] == "R-03" and topics(response) == ["urgent-imaging"]


def test_emergency_outranks_cancer_and_names_both(app):
    request = condition(load_request("cancer-history"), ICD, "G83.4")
    assessment, response = run(app, request)
    assert assessment.fired[:2] == ["R-01", "R-03"]
    [card] = response["cards"]
    assert card["indicator"] == "critical" and "Personal history of malignant neoplasm of breast" in card["detail"]


@pytest.mark.parametrize(
    "value, unit, code, fever",
    [
        (100.3, "degF", "[degF]", False),
        (100.5, "degF", "[degF]", True),
        (37.9, "C", "Cel", False),
        (38.0, "C", "Cel", True),
        (38.4, None, None, True),
    ],
)
def test_fever_in_celsius_or_fahrenheit(app, value, unit, code, fever):
    quantity = {"value": value, **({"unit": unit, "code": code, "system": "http://unitsofmeasure.org"} if unit else {})}
    request = observation(load_request("acute-lbp-defer"), "8310-5", "2026-05-31T08:00:00Z", valueQuantity=quantity)
    assessment, _ = run(app, request)
    assert (assessment.fired[0] == "R-04") is fever


def test_fever_outside_the_window_does_not_count(app):
    request = observation(
        load_request("acute-lbp-defer"),
        "8310-5",
        "2026-05-01T08:00:00Z",
        valueQuantity={"value": 39.5, "unit": "C", "code": "Cel"},
    )
    assert run(app, request)[0].fired[0] == "R-08"


def test_infection_risk_factor_without_fever_is_not_deferred_but_not_urgent(app):
    assessment, response = run(app, condition(load_request("acute-lbp-defer"), ICD, "F11.20", onset="2023-01-01"))
    assert assessment.fired[0] == "R-04" and topics(response) == ["infection-risk-factors"]
    assert response["cards"][0]["indicator"] == "info"


def test_raised_crp_counts_as_an_infection_risk_factor(app):
    request = observation(
        load_request("acute-lbp-defer"),
        "1988-5",
        "2026-05-30T08:00:00Z",
        valueQuantity={"value": 48, "unit": "mg/L"},
        referenceRange=[{"high": {"value": 10, "unit": "mg/L"}}],
    )
    assert run(app, request)[0].fired[0] == "R-04"


@pytest.mark.parametrize(
    "site, saddle",
    [
        ({"coding": [{"system": SCT, "code": "38864007"}]}, True),
        ({"text": "saddle area"}, True),
        ({"text": "left foot"}, False),
    ],
)
def test_numbness_counts_as_cauda_equina_only_in_the_saddle_area(app, site, saddle):
    request = condition(load_request("acute-lbp-defer"), ICD, "R20.0", bodySite=[site])
    assert (run(app, request)[0].fired[0] == "R-01") is saddle


def test_bilateral_sciatica_suggests_cauda_equina(app):
    request = condition(condition(load_request("acute-lbp-defer"), ICD, "M54.31"), ICD, "M54.32")
    assert run(app, request)[0].fired[0] == "R-01"


def test_old_bladder_dysfunction_is_not_a_new_red_flag(app):
    request = condition(load_request("acute-lbp-defer"), ICD, "N31.9", onset="2015-03-01")
    assert run(app, request)[0].fired[0] == "R-08"


def test_one_new_weakness_is_a_warning_two_deficits_are_critical(app):
    one = condition(load_request("acute-lbp-defer"), SCT, "713514005")
    assessment, response = run(app, one)
    assert assessment.fired[0] == "R-02" and response["cards"][0]["indicator"] == "warning"
    two = condition(one, ICD, "M62.81")
    assert run(app, two)[1]["cards"][0]["indicator"] == "critical"


def test_weakness_documented_as_progressive_is_critical(app):
    request = condition(load_request("acute-lbp-defer"), SCT, "713514005")
    request["prefetch"]["conditions"]["entry"][-1]["resource"]["code"]["text"] = "Progressive weakness of left leg"
    assessment, response = run(app, request)
    assert response["cards"][0]["indicator"] == "critical"
    assert response["cards"][0]["suggestions"][0]["actions"][0]["resource"]["priority"] == "stat"


def test_under_six_weeks_with_care_started_is_still_deferred(app):
    request = resource(
        load_request("acute-lbp-defer"),
        "procedures",
        resourceType="Procedure",
        id="pt-1",
        status="completed",
        code={"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97110"}]},
        performedDateTime="2026-05-25",
    )
    assessment, _ = run(app, request)
    assert assessment.fired[0] == "R-08" and assessment.rating == "not-appropriate"


def test_unknown_duration_without_conservative_care_defers_and_says_so(app):
    request = load_request("acute-lbp-defer")
    request["prefetch"]["conditions"]["entry"] = []  # indication only from the order's reason
    assessment, response = run(app, request)
    assert assessment.fired[0] == "R-09"
    assert "duration of the back pain is not recorded" in response["cards"][0]["detail"]


def test_repeat_imaging_is_not_flagged_after_interval_surgery(app):
    request = resource(
        load_request("repeat-imaging"),
        "procedures",
        resourceType="Procedure",
        id="op",
        status="completed",
        code={"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "63030"}]},
        performedDateTime="2026-03-01",
    )
    assessment, _ = run(app, request)
    assert "R-11" not in assessment.fired and assessment.rating == "appropriate"


def test_imaging_older_than_the_look_back_is_not_a_repeat(app, make_app):
    assert run(make_app(thresholds={"repeat_imaging_months": 3}), load_request("repeat-imaging"))[0].fired[0] == "R-10"


def test_symptoms_that_predate_the_surgery_are_not_new(app):
    request = load_request("prior-surgery")
    request["prefetch"]["conditions"]["entry"][0]["resource"]["onsetDateTime"] = "2024-01-01"
    assert "R-07" not in run(app, request)[0].fired


@pytest.mark.parametrize(
    "safety, expected",
    [("C106047", "ct-alternative"), (None, "ct-alternative"), ("C106046", "mri-safety"), ("C106045", None)],
)
def test_device_mr_labelling_decides_between_ct_and_verification(app, safety, expected):
    device = {
        "resourceType": "Device",
        "id": "d1",
        "status": "active",
        "deviceName": [{"name": "Neurostimulator", "type": "user-friendly-name"}],
    }
    if safety:
        device["safety"] = [{"coding": [{"system": "urn:oid:2.16.840.1.113883.3.26.1.1", "code": safety}]}]
    request = load_request("failed-care-candidate")
    request["prefetch"]["devices"]["entry"].append({"resource": {**device, "patient": {"reference": "Patient/pt-v3"}}})
    _, response = run(app, request)
    assert topics(response) == ([expected] if expected else [])


def test_an_inactive_device_is_ignored(app):
    request = load_request("failed-care-candidate")
    request["prefetch"]["devices"]["entry"].append(
        {
            "resource": {
                "resourceType": "Device",
                "id": "old",
                "status": "inactive",
                "patient": {"reference": "Patient/pt-v3"},
            }
        }
    )
    assert topics(run(app, request)[1]) == []


def test_a_positive_urine_hcg_means_pregnancy(app):
    request = load_request("failed-care-contrast-72158")
    observation(
        request,
        "2106-3",
        "2026-05-29T09:00:00Z",
        valueCodeableConcept={"coding": [{"system": SCT, "code": "10828004"}]},
    )
    assert topics(run(app, request)[1]) == ["gadolinium-pregnancy"]


def test_the_latest_egfr_decides(app):
    request = load_request("low-egfr-contrast")
    observation(request, "98979-8", "2026-05-30T08:00:00Z", valueQuantity={"value": 55, "unit": "mL/min/{1.73_m2}"})
    assert "gadolinium-kidney" not in topics(run(app, request)[1])


def test_thresholds_are_configuration(make_app):
    assert (
        run(make_app(thresholds={"elderly_age": 80}), load_request("fracture-risk"))[0].fired[0] == "R-06"
    )  # osteoporosis
    aged = load_request("pacemaker-ct-alternative")
    assert "R-06" not in run(make_app(), aged)[0].fired
    assert "R-06" in run(make_app(thresholds={"elderly_age": 60}), aged)[0].fired
    assert run(make_app(), aged)[0].fired[0] == "R-03"  # age 60 and no improvement after a month of care
    assert run(make_app(thresholds={"cancer_risk_age": 65}), aged)[0].fired[0] == "R-10"
    assert run(make_app(thresholds={"acute_episode_days": 10}), load_request("acute-lbp-defer"))[0].fired[0] == "R-09"


def test_72149_is_never_appropriate_even_with_a_red_flag(app):
    request = load_request("cauda-equina")
    request["context"]["draftOrders"]["entry"][0]["resource"]["code"]["coding"][0]["code"] = "72149"
    assessment, response = run(app, request)
    assert assessment.rating == "not-appropriate" and topics(response) == ["urgent-imaging", "contrast-choice"]


def test_rating_for_variant_3_with_and_without_contrast_is_may_be_appropriate(app):
    assessment, _ = run(app, load_request("failed-care-contrast-72158"))
    assert (assessment.rating, assessment.category) == ("appropriate", "MBA")


def test_weight_loss_alone_is_named_on_the_deferral(app):
    request = condition(load_request("acute-lbp-defer"), ICD, "R63.4")
    assessment, response = run(app, request)
    assert assessment.fired[0] == "R-08" and "weaker cancer risk factor" in response["cards"][0]["detail"]


def test_age_is_not_recorded_means_no_age_rules(app):
    request = load_request("acute-lbp-defer")
    del request["prefetch"]["patient"]["birthDate"]
    assert run(app, request)[0].fired[0] == "R-08"


def test_high_energy_trauma_means_ct_first_on_the_trauma_pathway(app):
    assessment, response = run(app, condition(load_request("acute-lbp-defer"), ICD, "V43.52XA"))
    assert assessment.fired[0] == "R-TRAUMA-MAJOR" and assessment.rating == "no-criteria-apply"
    [card] = response["cards"]
    assert topics(response) == ["ct-alternative"] and card["indicator"] == "critical"
    [first, _] = card["suggestions"]
    update, thoracic_and_lumbar = first["actions"]  # the trauma pathway images the thoracic and lumbar spine
    assert first["isRecommended"] and update["resource"]["code"]["coding"][0]["code"] == "72128"
    assert thoracic_and_lumbar["resource"]["code"]["coding"][0]["code"] == "72131"
    assert update["resource"]["priority"] == thoracic_and_lumbar["resource"]["priority"] == "stat"


@pytest.mark.parametrize("code", ["W01.0XXA", "V00.131A"])  # a fall on the same level; a skateboard fall
def test_low_energy_injuries_are_not_the_trauma_pathway(app, code):
    assessment, _ = run(app, condition(load_request("acute-lbp-defer"), ICD, code))
    assert "R-TRAUMA-MAJOR" not in assessment.fired


def test_a_collision_years_before_this_episode_does_not_count(app):
    assessment, response = run(app, condition(load_request("acute-lbp-defer"), ICD, "V43.52XA", onset="2019-03-01"))
    assert assessment.fired[0] == "R-08" and "defer-imaging" in topics(response)


@pytest.mark.parametrize("code, rule", [("V43.52XA", "R-TRAUMA-MAJOR"), ("W19.XXXA", "R-06")])
def test_an_injury_in_the_days_before_the_pain_began_counts(app, code, rule):
    """The acute-lbp episode began on 2026-05-18; the injury came 8 days earlier (22 days before the clock)."""
    assessment, response = run(app, condition(load_request("acute-lbp-defer"), ICD, code, onset="2026-05-10"))
    assert assessment.fired[0] == rule and "defer-imaging" not in topics(response)


def test_high_energy_trauma_in_pregnancy_leaves_the_study_to_radiology(app):
    request = condition(condition(load_request("acute-lbp-defer"), ICD, "V43.52XA"), ICD, "Z33.1")
    _, response = run(app, request)
    [card] = [c for c in response["cards"] if c["source"]["topic"]["code"] == "ct-alternative"]
    codes = [
        a["resource"]["code"]["coding"][0]["code"]
        for s in card.get("suggestions", [])
        for a in s["actions"]
        if a.get("resource", {}).get("code")
    ]
    assert "72131" not in codes and "radiology" in card["summary"]


def test_axial_spondyloarthritis_is_not_deferred_and_not_rated_by_these_criteria(app):
    assessment, response = run(
        app, condition(load_request("subacute-no-conservative-care"), ICD, "M45.6", onset="2024-02-01")
    )
    assert assessment.fired[0] == "R-AS" and assessment.rating == "no-criteria-apply"
    assert topics(response) == ["inflammatory-back-pain"] and response["cards"][0]["indicator"] == "info"
    [rating] = response["systemActions"]
    [extension] = [e for e in rating["resource"]["extension"] if e["url"].endswith("pama-rating")]
    assert extension["valueCodeableConcept"]["coding"][0]["code"] == "no-criteria-apply"


def test_a_red_flag_outranks_axial_spondyloarthritis(app):
    request = condition(condition(load_request("acute-lbp-defer"), ICD, "M45.6", onset="2024-02-01"), ICD, "G83.4")
    assessment, response = run(app, request)
    assert assessment.fired[:2] == ["R-01", "R-AS"] and assessment.rating == "appropriate"
    assert topics(response) == ["urgent-imaging"]
