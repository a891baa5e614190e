"""Feedback: validated per CDS Hooks 2.0, stored durably, idempotent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from helpers import FEEDBACK, accepted, issue_cards, overridden, stored_rows

from cds_service import create_app


@pytest.fixture(autouse=True)
def shown_cards(app):
    """The cards the feedback below is about, as issued to the (unauthenticated) trial client."""
    issue_cards(app, overridden()["card"], accepted()["card"], *(f"card-{i}" for i in range(3)))


def test_overridden_feedback_is_stored_with_its_reason(app, client):
    response = client.post(FEEDBACK, json={"feedback": [overridden()]})
    assert response.status_code == 200
    assert response.get_json() == {"stored": 1, "duplicates": 0}
    [row] = stored_rows(app)
    assert row["service_id"] == "lumbar-mri-order-select"
    assert row["outcome"] == "overridden"
    assert row["override_reason_code"] == "red-flag-not-in-record"
    assert row["override_reason_display"] == "Red flag present, not yet documented"
    assert row["user_comment"] == "Saddle numbness on exam today"
    assert row["outcome_timestamp"].replace(tzinfo=UTC) == datetime(2026, 6, 1, 12, 3, 4, 500000, tzinfo=UTC)


def test_accepted_feedback_is_stored_with_its_suggestions_in_utc(app, client):
    assert client.post(FEEDBACK, json={"feedback": [accepted()]}).status_code == 200
    [row] = stored_rows(app)
    assert row["accepted_suggestions"] == ["suggestion-1"]
    assert row["outcome_timestamp"].replace(tzinfo=UTC) == datetime(2026, 6, 1, 10, 5, tzinfo=UTC)


def test_sandbox_dismissal_without_display_or_comment_is_accepted(app, client):
    """The sandbox sends overrideReason.reason = {code, system} only."""
    entry = overridden()
    entry["overrideReason"] = {
        "reason": {"code": "patient-informed-decision", "system": "https://example.org/override"}
    }
    assert client.post(FEEDBACK, json={"feedback": [entry]}).status_code == 200
    assert stored_rows(app)[0]["override_reason_display"] is None


def test_a_batch_is_stored_whole(app, client):
    batch = [overridden(card=f"card-{i}") for i in range(3)] + [accepted()]
    assert client.post(FEEDBACK, json={"feedback": batch}).get_json() == {"stored": 4, "duplicates": 0}
    assert len(stored_rows(app)) == 4


def test_a_repeated_entry_is_stored_once(app, client):
    client.post(FEEDBACK, json={"feedback": [overridden()]})
    again = client.post(FEEDBACK, json={"feedback": [overridden(), accepted()]})
    assert again.get_json() == {"stored": 1, "duplicates": 1}
    assert len(stored_rows(app)) == 2


def test_the_same_card_reported_again_with_a_new_outcome_is_a_new_entry(app, client):
    client.post(FEEDBACK, json={"feedback": [overridden()]})
    client.post(FEEDBACK, json={"feedback": [overridden(outcomeTimestamp="2026-06-01T13:00:00Z")]})
    assert len(stored_rows(app)) == 2


def test_feedback_survives_a_new_application_instance(database_url, client):
    client.post(FEEDBACK, json={"feedback": [overridden()]})
    restarted = create_app({"database_url": database_url, "auth": "off"})
    assert [row["card_uuid"] for row in stored_rows(restarted)] == ["2c8f8b9e-1a34-4c57-9a55-0c3c6f1d0a01"]


def test_an_invalid_entry_rejects_the_batch_and_stores_nothing(app, client):
    batch = [overridden(), {"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-06-01T12:00:00Z"}]
    response = client.post(FEEDBACK, json={"feedback": batch})
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["feedback.1.acceptedSuggestions"]
    assert stored_rows(app) == []


def test_database_unavailable_is_503_with_retry_after(app, client):
    from sqlalchemy import text

    with app.extensions["cds"].store.engine.begin() as connection:
        connection.execute(text("DROP TABLE feedback"))
    response = client.post(FEEDBACK, json={"feedback": [overridden()]})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert response.get_json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("service", ["lumbar-mri-order-select", "lumbar-mri-order-sign"])
def test_each_service_has_its_feedback_endpoint(client, service):
    assert client.post(f"/cds-services/{service}/feedback", json={"feedback": [accepted()]}).status_code == 200
