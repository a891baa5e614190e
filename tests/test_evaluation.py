"""Which draft orders the service evaluates."""

from __future__ import annotations

import json

import pytest
from conftest import load_request

from cds_service.protocol import HookRequest, decode


def evaluated(app, request, service_id):
    rt = app.extensions["cds"]
    service = rt.services[service_id]
    return [
        o.reference for o in rt.evaluator.orders_to_evaluate(service, decode(json.dumps(request).encode(), HookRequest))
    ]


SELECT_ID, SIGN_ID = "lumbar-mri-order-select", "lumbar-mri-order-sign"


@pytest.mark.parametrize(
    "scenario, service, expected",
    [
        ("acute-lbp-defer", SELECT_ID, ["ServiceRequest/draft-order-1"]),
        ("acute-lbp-order-sign", SIGN_ID, ["ServiceRequest/draft-order-1"]),
        ("order-sign-mixed-orders", SIGN_ID, ["ServiceRequest/lumbar-mri"]),
        ("unselected-order", SELECT_ID, []),
        ("other-imaging", SELECT_ID, []),
        ("medication-order", SELECT_ID, []),
        ("sandbox-empty-order", SELECT_ID, []),
    ],
)
def test_orders_evaluated_per_scenario(app, scenario, service, expected):
    assert evaluated(app, load_request(scenario), service) == expected


def test_order_sign_evaluates_every_lumbar_mri_draft(app):
    request = load_request("acute-lbp-order-sign")
    second = json.loads(json.dumps(request["context"]["draftOrders"]["entry"][0]))
    second["resource"]["id"] = "second-mri"
    request["context"]["draftOrders"]["entry"].append(second)
    assert evaluated(app, request, SIGN_ID) == ["ServiceRequest/draft-order-1", "ServiceRequest/second-mri"]


def test_orders_that_are_not_drafts_are_not_evaluated(app):
    request = load_request("acute-lbp-order-sign")
    request["context"]["draftOrders"]["entry"][0]["resource"]["status"] = "active"
    assert evaluated(app, request, SIGN_ID) == []


@pytest.mark.parametrize(
    "coding",
    [
        {"system": "http://www.ama-assn.org/go/cpt", "code": "72149"},
        {"system": "http://www.ama-assn.org/go/cpt", "code": "72158"},
        {"system": "urn:oid:2.16.840.1.113883.6.12", "code": "72148"},
        {"system": "http://loinc.org", "code": "24967-2"},
        {"system": "http://loinc.org", "code": "30679-5"},
        {"system": "http://snomed.info/sct", "code": "394451000119106"},
    ],
)
def test_lumbar_mri_is_recognised_in_cpt_loinc_and_snomed(app, coding):
    request = load_request("acute-lbp-defer")
    request["context"]["draftOrders"]["entry"][0]["resource"]["code"] = {"coding": [coding]}
    assert evaluated(app, request, SELECT_ID) == ["ServiceRequest/draft-order-1"]


def test_generic_spine_mri_counts_only_with_a_lumbar_body_site(app):
    request = load_request("acute-lbp-defer")
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order["code"] = {"coding": [{"system": "http://snomed.info/sct", "code": "241645008"}]}
    assert evaluated(app, request, SELECT_ID) == []
    order["bodySite"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "122496007"}]}]
    assert evaluated(app, request, SELECT_ID) == ["ServiceRequest/draft-order-1"]


@pytest.mark.parametrize("code", [None, "not-an-object", {"coding": "nope"}, {"coding": [{}, 5, {"code": "72148"}]}])
def test_odd_order_codes_are_not_ours_and_do_not_crash(client, code):
    request = load_request("acute-lbp-defer")
    request["context"]["draftOrders"]["entry"][0]["resource"]["code"] = code
    response = client.post("/cds-services/lumbar-mri-order-select", json=request)
    assert response.status_code == 200 and response.get_json() == {"cards": []}


def test_a_draft_order_with_an_invalid_reason_is_read_and_the_order_sent_back_is_as_it_came(client):
    """The rating's resource is the order as the client sent it; repairing an invalid element for the
    rules' typed copy must not change it."""
    request = load_request("acute-lbp-defer")
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    draft["reasonReference"] = [{"reference": 42}]  # not a string: dropped from the rules' typed copy
    response = client.post("/cds-services/lumbar-mri-order-select", json=request)
    assert response.status_code == 200
    rated = response.get_json()["systemActions"][0]["resource"]
    assert rated["reasonReference"] == [{"reference": 42}]
    assert response.get_json()["cards"]  # the order was still judged


def test_a_draft_order_whose_reason_reference_names_no_resource_is_judged(client):
    """Regression: a reasonReference with only a display (valid FHIR) answered 500."""
    request = load_request("acute-lbp-defer")
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    draft["reasonReference"] = [{"display": "Low back pain"}]
    response = client.post("/cds-services/lumbar-mri-order-select", json=request)
    assert response.status_code == 200
    assert response.get_json()["cards"]
