"""Golden request/response fixtures: one per clinical scenario in fixtures/scenarios.json.

Each expected file (fixtures/expected/NAME.json) was reviewed against the clinical specification.
After a deliberate change of the rules: UPDATE_GOLDEN=1 pytest tests/test_golden.py, then review
the diff of fixtures/expected/ before committing it."""

from __future__ import annotations

import json
import os

import pytest
from conftest import FIXTURES, SCENARIOS, load_request
from golden import summarize

from cds_service.protocol.fhir import decode_hook_request

NAMES = sorted(SCENARIOS["scenarios"])
SERVICE_FOR = {"order-select": "lumbar-mri-order-select", "order-sign": "lumbar-mri-order-sign"}


@pytest.mark.parametrize("name", NAMES)
def test_scenario_matches_its_golden_response(app, name):
    scenario = SCENARIOS["scenarios"][name]
    rt = app.extensions["cds"]
    evaluation = rt.evaluator.evaluate(
        rt.services[SERVICE_FOR[scenario["hook"]]], decode_hook_request(json.dumps(load_request(name)).encode())
    )
    actual = summarize(evaluation.response, evaluation.rules_fired)
    path = FIXTURES / "expected" / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps({"description": scenario["description"], **actual}, indent=1) + "\n")
    expected = json.loads(path.read_text())
    expected.pop("description")
    assert actual == expected


@pytest.mark.parametrize("name", NAMES)
def test_the_http_answer_is_the_evaluated_answer(client, name):
    scenario = SCENARIOS["scenarios"][name]
    response = client.post(f"/cds-services/{SERVICE_FOR[scenario['hook']]}", json=load_request(name))
    assert response.status_code == 200
    expected = json.loads((FIXTURES / "expected" / f"{name}.json").read_text())
    assert summarize(response.get_json(), expected["rules"]) == {
        k: v for k, v in expected.items() if k != "description"
    }


def test_every_scenario_has_a_golden_file_and_no_stale_ones():
    assert sorted(p.stem for p in (FIXTURES / "expected").glob("*.json")) == NAMES
