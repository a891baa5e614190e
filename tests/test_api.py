"""HTTP behaviour of the service endpoints: bad input always gets an OperationOutcome, never a 500."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, SELECT, load_request

NEGATIVE = sorted((FIXTURES / "negative").glob("*.json"))


def assert_operation_outcome(response, expression: str | None = None) -> dict:
    assert response.mimetype == "application/json"
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] and all(issue["severity"] == "error" for issue in outcome["issue"][:1])
    text = json.dumps(outcome)
    assert "Traceback" not in text and ".py" not in text
    if expression is not None:
        named = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
        assert any(e.startswith(expression) for e in named), named
    return outcome


@pytest.mark.parametrize("path", NEGATIVE, ids=[p.stem for p in NEGATIVE])
def test_negative_fixture(client, path):
    case = json.loads(path.read_text())
    body = case["raw"].encode() if "raw" in case else json.dumps(case["body"]).encode()
    response = client.post(case["path"], data=body, content_type=case.get("contentType", "application/json"))
    expected = case["expect"]["status"]
    assert response.status_code in (expected if isinstance(expected, list) else [expected]), response.get_json()
    if response.status_code >= 400:
        assert_operation_outcome(response, case["expect"].get("expression"))


def test_valid_request_is_answered_with_cards(client):
    response = client.post(SELECT, json=load_request("acute-lbp-defer"))
    assert response.status_code == 200
    assert isinstance(response.get_json()["cards"], list)


def test_unknown_fields_everywhere_are_tolerated(client):
    request = load_request("acute-lbp-defer")
    request["extension"] = {"com.example.trace": {"id": 1}}
    request["context"]["somethingNew"] = [1, 2]
    request["context"]["draftOrders"]["entry"][0]["resource"]["_status"] = {"extension": []}
    request["prefetch"]["conditions"]["meta"] = {"lastUpdated": "2026-06-01T00:00:00Z"}
    response = client.post(SELECT, json=request)
    assert response.status_code == 200
    plain = client.post(SELECT, json=load_request("acute-lbp-defer")).get_json()
    topics = [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]
    assert topics == [card["source"]["topic"]["code"] for card in plain["cards"]] == ["defer-imaging"]


def test_body_over_the_limit_is_413(make_app):
    client = make_app(max_body_bytes=2048).test_client()
    response = client.post(SELECT, json=load_request("acute-lbp-defer"))
    assert response.status_code == 413
    assert_operation_outcome(response)


def test_body_without_content_type_is_415(client):
    response = client.post(SELECT, data=json.dumps(load_request("acute-lbp-defer")))
    assert response.status_code == 415
    assert_operation_outcome(response, "Content-Type")


def test_fhir_json_content_type_is_accepted(client):
    response = client.post(
        SELECT, data=json.dumps(load_request("acute-lbp-defer")), content_type="application/fhir+json"
    )
    assert response.status_code == 200
    assert [card["source"]["topic"]["code"] for card in response.get_json()["cards"]] == ["defer-imaging"]


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_wrong_method_on_a_service_is_405(client, method):
    response = getattr(client, method)(SELECT)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert_operation_outcome(response)


def test_unknown_path_is_404_operation_outcome(client):
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert_operation_outcome(response)


def test_unexpected_failure_is_500_without_details(app, client, monkeypatch, caplog):
    def broken(*_args, **_kwargs):
        raise RuntimeError("Jane Doe MRN-123 leaked into an exception message")

    monkeypatch.setattr(app.extensions["cds"].evaluator, "evaluate", broken)
    response = client.post(SELECT, json=load_request("acute-lbp-defer"))
    assert response.status_code == 500
    outcome = assert_operation_outcome(response)
    assert "Jane" not in json.dumps(outcome)
    assert "Jane" not in caplog.text and "RuntimeError" in caplog.text


def test_sandbox_first_call_before_a_study_is_picked(client):
    """The PAMA tab calls on load with `code: {"coding": [{}]}`, no Bundle.type and no prefetch."""
    request = json.loads((FIXTURES / "sandbox" / "pama-tab-opened.json").read_text())
    response = client.post(SELECT, json=request)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_sandbox_lumbar_mri_request_is_accepted(client):
    """A lumbar MRI picked in the PAMA tab, with the sandbox's prefetch (meta, search.mode, no Bundle.type)."""
    request = json.loads((FIXTURES / "sandbox" / "pama-lumbar-mri.json").read_text())
    response = client.post(SELECT, json=request)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["cards"], "the sandbox's lumbar MRI order gets advice"
    [action] = body["systemActions"]
    assert action["type"] == "update" and action["resource"]["resourceType"] == "ServiceRequest"
    assert body["extension"]["systemActions"] == body["systemActions"]  # the sandbox reads only this


@pytest.mark.parametrize("extension", [None, 5, "x", {"url": "http://example.org/x"}])
def test_a_draft_order_whose_extension_is_not_an_array_is_400(client, extension):
    """Regression: the rating was appended to it: a 500 (None, 5), or one extension per character ("x")."""
    request = load_request("acute-lbp-defer")
    request["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = extension
    response = client.post(SELECT, json=request)
    assert response.status_code == 400
    assert_operation_outcome(response, "context.draftOrders.entry.0.resource.extension")


@pytest.mark.parametrize("system", [5, [], {"uri": "http://www.ama-assn.org/go/cpt"}, None])
def test_a_draft_order_coding_with_an_odd_system_is_skipped_not_a_500(client, system):
    """Regression: a non-string system reached the code normaliser (AttributeError, or TypeError for
    an unhashable list): a 500. The odd coding is skipped; the order's other coding still counts."""
    request = load_request("acute-lbp-defer")
    code = request["context"]["draftOrders"]["entry"][0]["resource"]["code"]
    code["coding"].insert(0, {"system": system, "code": "72148"})
    response = client.post(SELECT, json=request)
    assert response.status_code == 200
    assert [card["source"]["topic"]["code"] for card in response.get_json()["cards"]] == ["defer-imaging"]
    code["coding"] = [{"system": system, "code": "72148"}]  # nothing else: not a recognisable lumbar MRI
    response = client.post(SELECT, json=request)
    assert response.status_code == 200
    assert response.get_json()["cards"] == []
