"""patient-view (Oracle Health's client offers only this hook): pending lumbar MRI orders reviewed."""

from __future__ import annotations

import copy

from conftest import load_request

VIEW = "/cds-services/lumbar-mri-patient-view"


def chart_opened(name, status="active"):
    """The scenario's chart opened, with its MRI order already placed (no longer a draft)."""
    request = load_request(name)
    order = copy.deepcopy(request["context"]["draftOrders"]["entry"][0]["resource"])
    order.update(status=status, intent="order", id="placed-mri", authoredOn="2026-05-31")
    request["hook"] = "patient-view"
    request["context"] = {"patientId": request["context"]["patientId"], "userId": "Practitioner/example"}
    request["prefetch"]["serviceRequests"]["entry"].append({"resource": order})
    return request


def test_a_placed_order_without_red_flags_gets_the_deferral_advice_and_no_actions(client):
    body = client.post(VIEW, json=chart_opened("acute-lbp-defer")).get_json()
    [card] = body["cards"]
    assert card["source"]["topic"]["code"] == "defer-imaging" and "no red flag is recorded" in card["detail"].lower()
    assert "suggestions" not in card and body["systemActions"] == [] and "extension" not in body


def test_a_placed_order_with_a_red_flag_gets_the_urgent_card(client):
    body = client.post(VIEW, json=chart_opened("cauda-equina")).get_json()
    assert [c["source"]["topic"]["code"] for c in body["cards"]] == ["urgent-imaging"]


def test_performed_or_cancelled_orders_are_not_reviewed(client):
    for status in ("completed", "revoked"):
        assert client.post(VIEW, json=chart_opened("acute-lbp-defer", status)).get_json() == {"cards": []}


def test_order_hooks_still_require_draft_orders(client):
    request = load_request("acute-lbp-defer")
    del request["context"]["draftOrders"]
    response = client.post("/cds-services/lumbar-mri-order-select", json=request)
    assert response.status_code == 400 and response.get_json()["issue"][0]["expression"] == ["context.draftOrders"]


def test_discovery_lists_the_patient_view_service(client):
    services = {s["id"]: s["hook"] for s in client.get("/cds-services").get_json()["services"]}
    assert services["lumbar-mri-patient-view"] == "patient-view"


def test_an_order_placed_long_ago_and_still_pending_is_reviewed(client):
    # other orders are typed only when their date can count for a fact; pending orders are all read
    request = chart_opened("acute-lbp-defer")
    request["prefetch"]["serviceRequests"]["entry"][-1]["resource"]["authoredOn"] = "2023-01-15"
    assert [c["source"]["topic"]["code"] for c in client.post(VIEW, json=request).get_json()["cards"]] == [
        "defer-imaging"
    ]
