"""The rule table and the fact table decide: an entry added there runs, with no other code changed."""

from __future__ import annotations

import json

import pytest
from conftest import CLOCK, SCENARIOS, load_request

from cds_service.configuration import load_settings
from cds_service.evaluation import Evaluator
from cds_service.knowledge import Knowledge
from cds_service.knowledge.fact_table import FACTS
from cds_service.knowledge.facts import Fact, conditions
from cds_service.knowledge.guidelines import ACR_LBP
from cds_service.knowledge.rules import RULES, Finding, Group, Rule, Topic
from cds_service.knowledge.statuses import StatusPolicy
from cds_service.protocol.fhir import decode_hook_request

SERVICE_FOR = {"order-select": "lumbar-mri-order-select", "order-sign": "lumbar-mri-order-sign"}


def evaluate(app_or_evaluator, name):
    if isinstance(app_or_evaluator, Evaluator):
        evaluator, services = app_or_evaluator, None
    else:
        rt = app_or_evaluator.extensions["cds"]
        evaluator, services = rt.evaluator, rt.services
    request = decode_hook_request(json.dumps(load_request(name)).encode())
    from cds_service.services import load_services

    services = services or load_services(evaluator.settings.hooks_dir)
    return evaluator.evaluate(services[SERVICE_FOR[request.hook]], request)


def evaluator_with(**knowledge):
    settings = load_settings(environ={}, overrides={"auth": "off"})
    return Evaluator(settings, Knowledge(**knowledge), clock=lambda: CLOCK)


def topics(evaluation):
    return [card.topic for result in evaluation.results for card in result.cards]


def test_every_rule_of_the_table_fires_on_some_patient_fixture(app):
    fired = set()
    for name in SCENARIOS["scenarios"]:
        fired |= set(evaluate(app, name).rules_fired)
    assert {rule.id for rule in RULES} - fired == set()


def test_a_red_flag_rule_added_to_the_table_runs_and_rules_out_deferral():
    probe = Rule(
        "R-PROBE", "Probe red flag", Group.URGENT, Topic.URGENT_IMAGING, None, (ACR_LBP,),
        lambda f, t, a: Finding(f.indication[:1], "warning", "Probe: image urgently", "Probe advice."),
    )  # fmt: skip
    before = evaluate(evaluator_with(), "acute-lbp-defer")
    after = evaluate(evaluator_with(rules=RULES + (probe,)), "acute-lbp-defer")
    assert topics(before) == [Topic.DEFER_IMAGING]
    assert topics(after) == [Topic.URGENT_IMAGING]
    assert after.results[0].cards[0].rule_id == "R-PROBE"
    assert after.results[0].cards[0].json["summary"] == "Probe: image urgently"
    assert after.ratings == ["appropriate"] and "R-PROBE" in after.rules_fired


def test_a_deferral_rule_added_before_the_others_decides_in_its_group():
    probe = Rule(
        "R-PROBE", "Probe deferral", Group.REPEAT, Topic.DEFER_IMAGING, None, (ACR_LBP,),
        lambda f, t, a: Finding(f.indication[:1], "warning", "Probe: defer", "Probe advice."),
    )  # fmt: skip
    evaluation = evaluate(evaluator_with(rules=(probe, *RULES)), "acute-lbp-defer")
    assert [card.rule_id for card in evaluation.results[0].cards] == ["R-PROBE"]
    assert evaluation.ratings == ["not-appropriate"]  # the group defers: the study is rated usually not appropriate
    red_flag = evaluate(evaluator_with(rules=(probe, *RULES)), "cauda-equina")
    assert "R-PROBE" not in red_flag.rules_fired  # red-flag groups come first and end the walk


def test_a_fact_added_to_the_fact_table_is_read_and_listed():
    probe = Fact("probe_cancer", "probe", (conditions("malignancy", status=StatusPolicy.CURRENT_OR_HISTORY),))
    rule = Rule(
        "R-PROBE", "Probe", Group.ADVICE, Topic.IMAGING_APPROPRIATE, None, (ACR_LBP,),
        lambda f, t, a: Finding(f.probe_cancer, "info", "Probe fact found", "") if f.probe_cancer else None,
    )  # fmt: skip
    evaluation = evaluate(evaluator_with(facts=FACTS + (probe,), rules=(rule,)), "cancer-history")
    facts = evaluation.assessments[0].facts
    assert [name for name, _ in facts.recorded()][-1] == "probe_cancer"
    assert [card.rule_id for card in evaluation.results[0].cards] == ["R-PROBE"]


def test_a_rule_without_a_citation_is_refused_when_the_table_is_built():
    with pytest.raises(ValueError, match="R-UNCITED has no citation"):
        Rule("R-UNCITED", "Uncited", Group.ADVICE, Topic.IMAGING_APPROPRIATE, None, (), lambda f, t, a: None)


def test_a_fact_naming_an_unknown_value_set_fails_at_start():
    with pytest.raises(ValueError, match="no-such-value-set"):
        Knowledge(facts=FACTS + (Fact("typo", "", (conditions("no-such-value-set"),)),))


def test_no_fixture_carries_a_false_data_quality_note(app):
    """Regression: the subject was stripped before typing, so every Condition failed validation once
    and every request carried "Condition: 1 invalid element(s) dropped or defaulted"."""
    for name in SCENARIOS["scenarios"]:
        evaluation = evaluate(app, name)
        assert evaluation.record is None or evaluation.record.data_quality == [], name


def test_cards_are_typed_values_that_match_their_json(app):
    evaluation = evaluate(app, "pacemaker-ct-alternative")
    for result in evaluation.results:
        assert result.consult_id == result.rating.json["resource"]["extension"][-1]["valueUri"]
        for card in result.cards:
            assert card.json["uuid"] == card.uuid
            assert card.json["source"]["topic"]["code"] == card.topic.value
            assert card.json["indicator"] == card.indicator
            assert f"_Rule {card.rule_id}: " in card.json["detail"]
