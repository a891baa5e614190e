"""Override analytics from a known set of stored rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from cds_service.analytics import build_report, parse_since, render
from cds_service.cli import main
from cds_service.storage import Store

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def consultation(store, n, *, topics, rating="not-appropriate", code="72148", silent=False, when=NOW, rule="R-08",
                 practitioner="pr-aaaa", fallback=False, latency=3.0, service="lumbar-mri-order-select"):  # fmt: skip
    store.add_audit(
        [
            {
                "created_at": when,
                "service_id": service,
                "hook": "order-select",
                "hook_instance": f"h{n}",
                "tenant": None,
                "practitioner": practitioner,
                "consult_id": f"urn:uuid:{n}",
                "patient_key": "k",
                "order_system": "cpt",
                "order_code": code,
                "rating": rating,
                "acr_category": None,
                "variant": None,
                "rules_fired": [rule, "R-18"],
                "card_topics": topics,
                "fallback_used": fallback,
                "silent": silent,
                "latency_ms": latency,
                "cards": [
                    {"card_uuid": f"card-{n}-{i}", "topic": t, "rule_id": rule, "indicator": "warning"}
                    for i, t in enumerate(topics)
                ],
            }
        ]
    )


def feedback(store, card, outcome, reason=None, at="2026-06-01T12:05:00Z"):
    entry = {"card": card, "outcome": outcome, "outcomeTimestamp": at}
    row = {
        "raw": entry,
        "card_uuid": card,
        "outcome": outcome,
        "accepted_suggestions": ["s"] if outcome == "accepted" else None,
        "override_reason_system": "urn:x" if reason else None,
        "override_reason_code": reason,
        "override_reason_display": reason.replace("-", " ").capitalize() if reason else None,
        "user_comment": None,
        "outcome_timestamp": datetime.fromisoformat(at),
        "received_at": NOW,
    }
    store.add_feedback("lumbar-mri-order-select", [row])


@pytest.fixture
def store(database_url):
    store = Store(database_url)
    store.migrate()
    for n in range(1, 5):  # four deferrals
        consultation(store, n, topics=["defer-imaging"])
    consultation(store, 5, topics=["urgent-imaging"], rating="appropriate", rule="R-01")
    consultation(store, 6, topics=["defer-imaging"], code="72149", silent=True)
    consultation(store, 7, topics=["defer-imaging"], when=NOW - timedelta(days=60))  # outside 30 days
    feedback(store, "card-1-0", "overridden", "red-flag-not-in-record")
    feedback(store, "card-2-0", "overridden", "red-flag-not-in-record")
    feedback(store, "card-3-0", "overridden", "patient-informed-decision", at="2026-06-01T12:01:00Z")
    feedback(store, "card-3-0", "accepted", at="2026-06-01T12:09:00Z")  # changed their mind: latest counts
    feedback(store, "card-5-0", "accepted")
    return store


def test_report_counts_cards_outcomes_and_reasons(store):
    report = build_report(store, NOW - timedelta(days=30))
    defer = report["by_topic"]["defer-imaging"]
    assert (defer["shown"], defer["accepted"], defer["overridden"], defer["no_feedback"], defer["silent"]) == (
        4,
        1,
        2,
        1,
        1,
    )
    assert defer["override_reasons"] == {"red-flag-not-in-record": {"display": "Red flag not in record", "count": 2}}
    assert defer["override_rate"] == 0.667  # overridden / (accepted + overridden) = 2 / 3
    assert defer["feedback_coverage"] == 0.75  # (accepted + overridden) / shown = 3 / 4
    assert report["by_topic"]["urgent-imaging"]["accepted"] == 1
    assert report["by_rule"]["R-08"]["shown"] == 4 and report["by_rule"]["R-01"]["shown"] == 1
    assert report["ratings_by_ordered_code"] == {
        "72148": {"not-appropriate": 4, "appropriate": 1},
        "72149": {"not-appropriate": 1},
    }
    assert (report["consultations"], report["silent_consultations"]) == (6, 1)


def test_report_over_all_time_includes_older_rows(store):
    assert build_report(store)["by_topic"]["defer-imaging"]["shown"] == 5


def test_formats(store):
    report = build_report(store, NOW - timedelta(days=30))
    assert json.loads(render(report, "json"))["consultations"] == 6
    csv_text = render(report, "csv")
    assert "by_topic,defer-imaging,4,1,2,1,0.667,0.75,1" in csv_text
    assert "by_topic.override_reason,defer-imaging,,,,,,,,Red flag not in record,red-flag-not-in-record,2" in csv_text
    table = render(report, "table")
    assert "defer-imaging" in table and "overridden: Red flag not in record [red-flag-not-in-record] (2)" in table


def test_report_per_practitioner_and_per_week(store):
    consultation(store, 8, topics=["defer-imaging"], practitioner="pr-bbbb")
    feedback(store, "card-8-0", "overridden", "other")
    report = build_report(store, NOW - timedelta(days=30))
    ranked = list(report["practitioners_most_overrides"])
    assert ranked == ["pr-aaaa", "pr-bbbb"]  # 2 overrides, then 1
    assert report["practitioners_most_overrides"]["pr-bbbb"]["override_rate"] == 1.0
    assert report["practitioner_override_rates"] == {"practitioners": 2, "min": 0.5, "median": 1.0, "max": 1.0}
    week = NOW.isocalendar()
    assert report["by_week"][f"{week[0]}-W{week[1]:02d}"]["shown"] == 6
    assert sum(report["ratings_by_week"][f"{week[0]}-W{week[1]:02d}"].values()) == 7


@pytest.mark.parametrize(
    "value, expected",
    [
        ("30d", NOW - timedelta(days=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2026-05-01", datetime(2026, 5, 1, tzinfo=UTC)),
        (None, None),
    ],
)
def test_since(value, expected):
    assert parse_since(value, NOW) == expected


def test_report_command(store, database_url, monkeypatch, capsys):
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    assert main(["report", "--since", "all", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["consultations"] == 7
    assert main(["report", "--since", "soon"]) == 2


def test_report_gives_the_fhir_fallback_rate_and_latency_percentiles_per_service(store):
    consultation(store, 8, topics=["defer-imaging"], fallback=True, latency=40.0)
    consultation(store, 9, topics=["defer-imaging"], fallback=True, latency=900.0, service="lumbar-mri-order-sign")
    report = build_report(store, NOW - timedelta(days=30), service="lumbar-mri-order-select")
    assert report["fhir_fallback"] == {"calls": 1, "rate": 0.143}  # 1 of 7 order-select calls
    assert report["latency_ms"] == {"p50": 3.0, "p95": 3.0, "p99": 3.0}  # six at 3 ms, one at 40
    everything = build_report(store, NOW - timedelta(days=30))
    assert everything["fhir_fallback"]["calls"] == 2 and everything["latency_ms"]["p99"] == 40.0
    assert "FHIR fallback: 2 calls" in render(everything, "table")
