"""`cds-service evaluate`: the logic, readable without an EHR."""

from __future__ import annotations

import json

from conftest import FIXTURES, SCENARIOS

from cds_service.cli import main

NOW = SCENARIOS["clock"]


def test_evaluate_explains_the_rules_and_the_cards(capsys):
    assert main(["evaluate", str(FIXTURES / "requests" / "urinary-retention.json"), "--now", NOW]) == 0
    out = capsys.readouterr().out
    assert "Rating: appropriate, ACR Usually Appropriate, ACR variant 4" in out
    assert "R-01  Suspected cauda equina syndrome" in out
    assert "ces signs: Acute retention of urine (SNOMED CT 236648008) (problem list, 2026-05-30)" in out
    assert "[CRITICAL] urgent-imaging: Possible cauda equina syndrome" in out
    assert "suggestion (recommended): Keep the MRI and make it STAT" in out


def test_evaluate_prints_the_cds_hooks_response_as_json(capsys):
    assert main(["evaluate", str(FIXTURES / "requests" / "acute-lbp-defer.json"), "--now", NOW, "--json"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["cards"][0]["source"]["topic"]["code"] == "defer-imaging"


def test_evaluate_of_an_order_that_is_not_ours(capsys):
    assert main(["evaluate", str(FIXTURES / "requests" / "other-imaging.json"), "--now", NOW]) == 0
    assert "No draft lumbar spine MRI order to evaluate" in capsys.readouterr().out


def test_evaluate_reports_a_bad_request_without_a_trace(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hook": "order-select"}')
    assert main(["evaluate", str(bad)]) == 1
    assert "400: Invalid request at hookInstance" in capsys.readouterr().err


def test_evaluate_of_a_missing_file(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_evaluate_lists_every_fact_that_is_set_including_trauma(capsys):
    """Regression: the CLI had its own list of fact names and missed the trauma facts."""
    assert main(["evaluate", str(FIXTURES / "requests" / "high-energy-trauma.json"), "--now", NOW]) == 0
    out = capsys.readouterr().out
    assert "R-TRAUMA-MAJOR  High-energy trauma" in out
    assert "    major trauma: " in out
