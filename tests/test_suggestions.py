"""Suggestions a clinician can accept safely: whatever subset of a response's suggestions a client
applies, in whatever order (Epic lets a clinician accept any number), the urgency is never lost and
no contraindicated contrast or CT comes back. Assertions are on the actions applied, not on wording."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from conftest import SCENARIOS, load_request

from cds_service.protocol.fhir import decode_hook_request

SERVICE_FOR = {"order-select": "lumbar-mri-order-select", "order-sign": "lumbar-mri-order-sign"}
GADOLINIUM = {"72149", "72158"}
CT = {"72131", "72128", "72132", "62284"}
RANK = {None: 0, "urgent": 1, "stat": 2}
NOT_STUDIES = {"97161"}  # a physical therapy referral carries no imaging priority


def evaluate(app, name):
    rt = app.extensions["cds"]
    request = load_request(name)
    evaluation = rt.evaluator.evaluate(
        rt.services[SERVICE_FOR[request["hook"]]], decode_hook_request(json.dumps(request).encode())
    )
    return request, evaluation


def code_of(resource):
    return (resource.get("code", {}).get("coding") or [{}])[0].get("code")


def apply(drafts, suggestions):
    """A client applying accepted suggestions in turn: update upserts, create adds, delete removes."""
    orders = {r["id"]: r for r in drafts}
    touched = []
    for suggestion in suggestions:
        for action in suggestion["actions"]:
            if action["type"] == "delete":
                orders.pop(action["resourceId"].split("/")[-1], None)
            elif action["type"] == "update":
                orders[action["resource"]["id"]] = action["resource"]
                touched.append(action["resource"])
            else:
                orders[f"created-{len(orders)}"] = action["resource"]
                touched.append(action["resource"])
    return orders, touched


def orderings(suggestions, rng):
    for size in range(1, len(suggestions) + 1):
        for subset in itertools.combinations(suggestions, size):
            permutations = list(itertools.permutations(subset)) if size <= 4 else [
                rng.sample(subset, size) for _ in range(24)]  # fmt: skip
            yield from permutations


@pytest.mark.parametrize("name", sorted(SCENARIOS["scenarios"]))
def test_any_subset_of_suggestions_in_any_order_is_a_safe_order(app, name):
    request, evaluation = evaluate(app, name)
    response = evaluation.response
    suggestions = [s for card in response["cards"] for s in card.get("suggestions", [])]
    resources = [a["resource"] for s in suggestions for a in s["actions"] if "resource" in a]
    plan = max((r.get("priority") for r in resources if code_of(r) not in NOT_STUDIES), key=RANK.get, default=None)
    facts = [a.facts for a in evaluation.assessments]
    pregnant = any(f.pregnancy for f in facts)
    kidney_card = any(c["source"]["topic"]["code"] == "gadolinium-kidney" for c in response["cards"])
    low_egfr = any(f.low_egfr for f in facts)
    emergency = any(c["indicator"] == "critical" and c["source"]["topic"]["code"] in ("urgent-imaging", "ct-alternative")
                    for c in response["cards"])  # fmt: skip
    drafts = [e["resource"] for e in request["context"]["draftOrders"]["entry"]]
    rng = random.Random(name)
    for accepted in orderings(suggestions, rng):
        _, touched = apply(drafts, accepted)
        for resource in touched:
            code = code_of(resource)
            if code in NOT_STUDIES:
                continue
            where = (name, [s["label"] for s in accepted], code)
            assert resource.get("priority") == plan, where  # the most urgent any card asks for, on every study
            if emergency:
                assert resource.get("priority") == "stat", where
            if pregnant:
                assert code not in GADOLINIUM and code not in CT, where
            if low_egfr and code in GADOLINIUM:
                assert kidney_card, where  # never without the group II advice


def test_pregnant_foot_drop_with_contrast_ordered_ends_as_plain_mri_at_stat(app):
    _, evaluation = evaluate(app, "pregnancy-foot-drop-contrast")
    actions = [a for c in evaluation.response["cards"] for s in c.get("suggestions", []) for a in s["actions"]]
    assert [(code_of(a["resource"]), a["resource"].get("priority")) for a in actions] == [("72148", "stat")]


def test_mri_unsafe_with_suspected_cauda_equina_recommends_ct_myelography_first_and_the_device_check(app):
    _, evaluation = evaluate(app, "pacemaker-cauda-equina")
    [implant] = [c for c in evaluation.response["cards"] if c["source"]["topic"]["code"] == "ct-alternative"]
    first = implant["suggestions"][0]
    assert first.get("isRecommended") and [code_of(a["resource"]) for a in first["actions"] if "resource" in a] == [
        "62284", "72132"]  # fmt: skip
    assert all(
        a["resource"]["priority"] == "stat" for s in implant["suggestions"] for a in s["actions"] if "resource" in a
    )
    assert "device clinic" in implant["detail"] and "reprogramming" in implant["detail"]


def test_febrile_iv_drug_use_is_critical_mri_today(app):
    _, evaluation = evaluate(app, "infection-fever-ivdu")
    [card] = evaluation.response["cards"]
    assert card["indicator"] == "critical" and "today" in card["summary"]


def test_infection_with_low_egfr_offers_contrast_only_with_the_group_ii_advice(app):
    _, evaluation = evaluate(app, "low-egfr-infection")
    topics = [c["source"]["topic"]["code"] for c in evaluation.response["cards"]]
    assert topics == ["urgent-imaging", "gadolinium-kidney"]
    contrast = [s for s in evaluation.response["cards"][0]["suggestions"] if "72158" in json.dumps(s)]
    assert contrast and all("group II" in s["label"] for s in contrast)


def test_prior_surgery_and_low_egfr_give_one_decision_not_two(app):
    _, evaluation = evaluate(app, "low-egfr-contrast")
    cards = {c["source"]["topic"]["code"]: c for c in evaluation.response["cards"]}
    assert "preferred" not in cards["prior-lumbar-surgery"]["summary"]
    assert "kidney function card" in cards["prior-lumbar-surgery"]["summary"]
    assert "Contrast helps" in cards["gadolinium-kidney"]["detail"]
    assert not any(s.get("isRecommended") for s in cards["gadolinium-kidney"].get("suggestions", []))


def test_trauma_pathway_images_the_thoracic_and_lumbar_spine_at_stat(app):
    _, evaluation = evaluate(app, "high-energy-trauma")
    first = evaluation.response["cards"][0]["suggestions"][0]
    assert [(code_of(a["resource"]), a["resource"]["priority"]) for a in first["actions"]] == [
        ("72128", "stat"), ("72131", "stat")]  # fmt: skip


def test_non_melanoma_skin_cancer_is_not_a_red_flag_but_other_cancer_history_is(app):
    _, evaluation = evaluate(app, "skin-cancer-history")
    assert evaluation.assessments[0].fired[0] == "R-08"
    from test_rules import ICD, condition, run

    for code in ("Z85.820", "Z85.3", "C43.9"):  # melanoma history, breast cancer history, melanoma
        assert run(app, condition(load_request("acute-lbp-defer"), ICD, code))[0].fired[0] == "R-03", code
    for code in ("Z85.828", "C44.91"):
        assert run(app, condition(load_request("acute-lbp-defer"), ICD, code))[0].fired[0] == "R-08", code


def test_a_vertebral_fracture_without_risk_or_trauma_raises_a_pathological_fracture(app):
    _, evaluation = evaluate(app, "vertebral-fracture")
    [card] = evaluation.response["cards"]
    assert "pathological" in card["summary"] and not card.get("suggestions")


def test_isolated_foot_drop_is_rated_appropriate_without_a_borrowed_acr_variant(app):
    _, evaluation = evaluate(app, "foot-drop")
    assessment = evaluation.assessments[0]
    assert assessment.rating == "appropriate" and assessment.category is None and assessment.variant is None
    card = evaluation.response["cards"][0]
    assert "variant 4" not in card["detail"] and "bladder" in card["detail"] and "saddle" in card["detail"]


def test_repeat_imaging_and_failed_care_without_candidacy_carry_no_acr_category(app):
    repeat = evaluate(app, "repeat-imaging")[1].assessments[0]
    assert repeat.rating == "not-appropriate" and repeat.category is None
    no_candidacy = evaluate(app, "failed-care-not-candidate")[1].assessments[0]
    assert no_candidacy.rating == "no-criteria-apply" and no_candidacy.variant is None


@pytest.mark.parametrize(
    "name, rule, reason",
    [
        ("vertebral-fracture", None, None),
        ("fall-fracture", "R-17", "mri-needed-deficit-or-fracture-age"),
        ("high-energy-trauma", "R-TRAUMA-MAJOR", "trauma-team-decision"),
        ("pacemaker-ct-alternative", "R-13", "mr-status-verified-conditional"),
        ("failed-care-not-candidate", "R-10b", "intervention-being-considered"),
        ("pregnancy-contrast", "R-16", "contrast-essential-radiology"),
        ("pregnancy-with-implant", "R-13", "not-pregnant"),
    ],
)
def test_override_reasons_fit_their_card(app, name, rule, reason):
    _, evaluation = evaluate(app, name)
    for result in evaluation.results:
        for card in result.cards:
            codes = [r["code"] for r in card.json["overrideReasons"]]
            if card.rule_id != "R-13" or card.topic.value == "ct-alternative":
                assert "mr-status-verified-conditional" not in codes or card.rule_id == "R-13", (card.rule_id, codes)
            if card.rule_id == rule and reason is not None:
                assert reason in codes, (card.rule_id, codes)
            assert "not-relevant" not in codes or card.topic.value not in ("mri-safety", "gadolinium-pregnancy")


def test_safety_cards_name_their_own_source(app):
    _, evaluation = evaluate(app, "low-egfr-contrast")
    labels = {c["source"]["topic"]["code"]: c["source"]["label"] for c in evaluation.response["cards"]}
    assert labels["gadolinium-kidney"].startswith("Gadolinium and kidney function")
    assert labels["prior-lumbar-surgery"].startswith("Lumbar MRI appropriateness")
