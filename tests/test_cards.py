"""The card contract an EHR sees (CDS Hooks 2.0 and the PAMA rating), checked on every scenario."""

from __future__ import annotations

import copy
import json
import re

import pytest
from conftest import FIXTURES, SCENARIOS, SELECT, load_request

from cds_service.cards import PAMA_CONSULT_ID, PAMA_RATING, PAMA_RATING_SYSTEM

SELECT_PATH = "/cds-services/lumbar-mri-order-select"
NAMES = sorted(SCENARIOS["scenarios"])
SERVICE_FOR = {"order-select": "lumbar-mri-order-select", "order-sign": "lumbar-mri-order-sign"}
INDICATORS = {"info", "warning", "critical"}


def answer(client, name, request=None):
    scenario = SCENARIOS["scenarios"][name]
    response = client.post(f"/cds-services/{SERVICE_FOR[scenario['hook']]}", json=request or load_request(name))
    assert response.status_code == 200
    return response.get_json()


def card_on(body, topic):
    return next(card for card in body["cards"] if card["source"]["topic"]["code"] == topic)


def all_cards(client):
    for name in NAMES:
        for card in answer(client, name)["cards"]:
            yield name, card


def find_empty(value, path="$"):
    """CDS Hooks 2.0: no null, "", [] or {} anywhere, except "cards": []."""
    if value is None or value == "" or value == [] or value == {}:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from find_empty(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from find_empty(item, f"{path}[{index}]")


@pytest.mark.parametrize("name", NAMES)
def test_responses_carry_no_empty_values(client, name):
    """Empty elements the client sent in its draft (the sandbox's `reasonCode: []`) are echoed
    unchanged in updates: the rating must make no other change. Nothing empty is added."""
    request = load_request(name)
    body = answer(client, name, request)
    expected = json.loads((FIXTURES / "expected" / f"{name}.json").read_text())
    assert len(body["cards"]) == len(expected["cards"])  # the check below is not vacuous where cards are due
    if not expected["cards"] and not expected["ratings"]:
        assert body == {"cards": []}
        return
    echoed = {
        key
        for entry in request["context"]["draftOrders"]["entry"]
        for key, value in entry["resource"].items()
        if value in ([], {}, "")
    }
    introduced = [
        path
        for path in find_empty({k: v for k, v in body.items() if k != "cards"})
        if path.rsplit(".", 1)[-1] not in echoed
    ]
    assert introduced == []
    for card in body["cards"]:  # "cards": [] itself is the one empty value the spec allows
        assert list(find_empty(card)) == []


def test_every_card_meets_the_contract(client):
    seen_uuids = set()
    for name, card in all_cards(client):
        assert card["uuid"] not in seen_uuids
        seen_uuids.add(card["uuid"])
        assert 0 < len(card["summary"]) < 140, (name, card["summary"])
        assert card["indicator"] in INDICATORS
        assert "**Guideline:**" in card["detail"] and "_Rule R-" in card["detail"]
        source = card["source"]
        assert source["label"] and source["url"].startswith("https://")
        assert source["topic"]["system"] and source["topic"]["code"] and source["topic"]["display"]
        for link in card["links"]:
            assert link["type"] == "absolute" and link["url"].startswith("https://") and link["label"]
        for reason in card["overrideReasons"]:
            assert reason["system"] and reason["code"] and reason["display"]
        if card.get("suggestions"):
            assert card["selectionBehavior"] == "at-most-one"
            assert sum(bool(s.get("isRecommended")) for s in card["suggestions"]) <= 1  # cds-resp-1
            for suggestion in card["suggestions"]:
                assert suggestion["uuid"] not in seen_uuids and suggestion["label"]
                seen_uuids.add(suggestion["uuid"])
                for action in suggestion["actions"]:
                    assert action["type"] in {"create", "update", "delete"} and action["description"]
                    if action["type"] == "delete":
                        assert action["resourceId"].startswith("ServiceRequest/") and "resource" not in action


def test_deferral_cards_say_what_was_looked_at_and_that_no_red_flag_is_recorded(client):
    deferrals = [(name, card) for name, card in all_cards(client) if card["source"]["topic"]["code"] == "defer-imaging"]
    assert {name for name, _ in deferrals} >= {"acute-lbp-defer", "subacute-no-conservative-care", "repeat-imaging"}
    for name, card in deferrals:
        assert card["indicator"] == "warning"
        assert "No red flag is recorded" in card["detail"] and "**Looked at:**" in card["detail"]
        # the chart's silence is not the patient's: never word it as an absence of red flags
        assert not re.search(r"without (a )?red flags?", card["detail"], re.IGNORECASE)
        assert "no red flags recorded" in card["summary"] or "no change recorded" in card["summary"]
        assert any(r["code"] == "red-flag-not-in-record" for r in card["overrideReasons"])
        deletes = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
        assert deletes and all(
            a["resourceId"]
            == "ServiceRequest/" + load_request(name)["context"]["draftOrders"]["entry"][0]["resource"]["id"]
            for a in deletes
        )


def test_deferral_offers_a_physical_therapy_referral(client):
    card = answer(client, "acute-lbp-defer")["cards"][0]
    recommended = next(s for s in card["suggestions"] if s.get("isRecommended"))
    created = [a["resource"] for a in recommended["actions"] if a["type"] == "create"]
    assert created[0]["code"]["coding"][0]["code"] == "97161"
    assert created[0]["subject"] == {"reference": "Patient/pt-acute-lbp"} and created[0]["status"] == "draft"


@pytest.mark.parametrize(
    "name, priority",
    [
        ("cauda-equina", "stat"),
        ("foot-drop", "stat"),
        ("cancer-history", "urgent"),
        ("infection-fever-ivdu", "stat"),  # fever with IV drug use: MRI today
        ("infection-sepsis", "stat"),
    ],
)
def test_urgent_cards_raise_the_priority_of_the_draft(client, name, priority):
    card = next(c for c in answer(client, name)["cards"] if c["source"]["topic"]["code"] == "urgent-imaging")
    assert card["indicator"] == ("critical" if priority == "stat" else "warning")
    updates = [a["resource"] for s in card["suggestions"] for a in s["actions"] if a["type"] == "update"]
    assert updates and all(u["priority"] == priority and u["id"] == "draft-order-1" for u in updates)


def test_a_red_flag_card_is_never_combined_with_a_deferral(client):
    for name in NAMES:
        topics = [c["source"]["topic"]["code"] for c in answer(client, name)["cards"]]
        assert not ("urgent-imaging" in topics and "defer-imaging" in topics), name


def test_ct_is_never_suggested_because_of_pregnancy_or_kidney_function(client):
    for name in ("pregnancy-contrast", "pregnancy-non-contrast", "pregnancy-with-implant", "low-egfr-contrast"):
        body = answer(client, name)
        assert "ct-alternative" not in [c["source"]["topic"]["code"] for c in body["cards"]], name
        codes = [
            a["resource"]["code"]["coding"][0]["code"]
            for c in body["cards"]
            for s in c.get("suggestions", [])
            for a in s["actions"]
            if a["type"] != "delete"
        ]
        assert not {"72131", "72132", "62284"} & set(codes), name


def test_ct_alternative_replaces_the_mri_with_the_site_ct_code(client):
    card = card_on(answer(client, "pacemaker-ct-alternative"), "ct-alternative")
    update = card["suggestions"][0]["actions"][0]
    assert card["source"]["topic"]["code"] == "ct-alternative" and card["indicator"] == "warning"
    assert update["type"] == "update" and update["resource"]["code"]["coding"][0]["code"] == "72131"


def test_site_code_map_is_configurable(make_app, tmp_path):
    (tmp_path / "codes.json").write_text(
        json.dumps(
            {
                "ct_lumbar_without_contrast": [
                    {
                        "coding": {
                            "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580",
                            "code": "IMG1234",
                            "display": "CT L-SPINE WO",
                        },
                        "modality": "ct",
                    }
                ]
            }
        )
    )
    client = make_app(site_codes=tmp_path / "codes.json").test_client()
    card = card_on(answer(client, "pacemaker-ct-alternative"), "ct-alternative")
    coding = card["suggestions"][0]["actions"][0]["resource"]["code"]["coding"][0]
    assert (coding["code"], coding["display"]) == ("IMG1234", "CT L-SPINE WO")


@pytest.mark.parametrize("name", NAMES)
def test_every_evaluated_order_gets_one_rating_update_that_changes_nothing_else(client, name):
    request = load_request(name)
    body = answer(client, name, request)
    drafts = {e["resource"]["id"]: e["resource"] for e in request["context"]["draftOrders"]["entry"]}
    expected = json.loads((FIXTURES / "expected" / f"{name}.json").read_text())["ratings"]
    actions = body.get("systemActions", [])
    assert len(actions) == len(expected)
    for action in actions:
        resource = action["resource"]
        assert action["type"] == "update" and action["description"]
        rating = next(e for e in resource["extension"] if e["url"] == PAMA_RATING)["valueCodeableConcept"]["coding"][0]
        assert rating["system"] == PAMA_RATING_SYSTEM and rating["code"] in {
            "appropriate",
            "not-appropriate",
            "no-criteria-apply",
        }
        consult = next(e for e in resource["extension"] if e["url"] == PAMA_CONSULT_ID)["valueUri"]
        assert consult.startswith("urn:uuid:") and len(consult) == 45
        unchanged = copy.deepcopy(resource)
        unchanged["extension"] = [
            e for e in resource["extension"] if not e["url"].startswith("http://fhir.org/argonaut/")
        ]
        if not unchanged["extension"]:
            del unchanged["extension"]
        assert unchanged == drafts[resource["id"]]
    if actions:
        assert body["extension"]["systemActions"] == actions  # the sandbox reads only this copy


def test_consult_ids_are_new_for_every_evaluation(client):
    first, second = answer(client, "acute-lbp-defer"), answer(client, "acute-lbp-defer")
    ids = [
        next(e["valueUri"] for e in b["systemActions"][0]["resource"]["extension"] if e["url"] == PAMA_CONSULT_ID)
        for b in (first, second)
    ]
    assert ids[0] != ids[1]


def test_the_generic_profile_sends_system_actions_as_cds_hooks_2_0_writes_them(make_app):
    body = answer(make_app(client_profile="generic").test_client(), "acute-lbp-defer")
    assert "extension" not in body and body["systemActions"]
    assert {card["selectionBehavior"] for card in body["cards"] if card.get("suggestions")} == {"at-most-one"}


def test_the_epic_profile_allows_any_suggestions_and_adds_the_score_band(make_app):
    body = answer(make_app(client_profile="epic").test_client(), "pacemaker-ct-alternative")
    assert "extension" not in body
    assert {card["selectionBehavior"] for card in body["cards"] if card.get("suggestions")} == {"any"}
    codings = body["systemActions"][0]["resource"]["extension"][-2]["valueCodeableConcept"]["coding"]
    assert {
        "system": "urn:lumbar-mri-cds:epic-score-band",
        "code": "indicated",
        "display": "Indicated (7-9)",
    } in codings
    deferred = answer(make_app(client_profile="epic").test_client(), "acute-lbp-defer")
    codings = deferred["systemActions"][0]["resource"]["extension"][-2]["valueCodeableConcept"]["coding"]
    assert any(c.get("code") == "low-utility" for c in codings)


def test_a_trusted_issuer_names_its_profile_and_its_preference_list_codes(make_app, tmp_path):
    from helpers import EC_KEY, ISS, jwk, token

    codes = tmp_path / "epic-codes.json"
    codes.write_text(json.dumps({"ct_lumbar_without_contrast": [
        {"coding": {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580", "code": "IMG1234",
                    "display": "CT L-SPINE WO"}, "modality": "ct"}]}))  # fmt: skip
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "profile": "epic", "siteCodes": str(codes),
                                                "jwks": {"keys": [jwk(EC_KEY, "ec-1", "ES384")]}}]}))  # fmt: skip
    client = make_app(auth="required", trusted_issuers=issuers).test_client()
    body = client.post(SELECT_PATH, json=load_request("pacemaker-ct-alternative"),
                       headers={"Authorization": f"Bearer {token()}"}).get_json()  # fmt: skip
    ct = card_on(body, "ct-alternative")
    assert ct["selectionBehavior"] == "any"
    assert ct["suggestions"][0]["actions"][0]["resource"]["code"]["coding"][0]["code"] == "IMG1234"


def test_sandbox_applies_our_updates(client):
    """The sandbox's PAMA tab applies an update only if the resource keeps code.coding and reasonCode and
    carries a pama-rating extension (it throws otherwise): every update we suggest or send does."""
    request = json.loads((FIXTURES / "sandbox" / "pama-lumbar-mri.json").read_text())
    body = client.post("/cds-services/lumbar-mri-order-select", json=request).get_json()
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    updates = [
        a for c in body["cards"] for s in c.get("suggestions", []) for a in s["actions"] if a["type"] == "update"
    ]
    updates += body["extension"]["systemActions"]
    assert updates
    for action in updates:
        resource = action["resource"]
        assert resource["code"]["coding"][0]["code"] and resource["reasonCode"] == draft["reasonCode"]
        assert any(e["url"] == PAMA_RATING for e in resource["extension"])


def test_cards_do_not_echo_the_patients_name_or_identifiers(client):
    request = json.loads((FIXTURES / "sandbox" / "pama-lumbar-mri.json").read_text())
    text = json.dumps(client.post("/cds-services/lumbar-mri-order-select", json=request).get_json()["cards"])
    assert "Harness" not in text and "Ada" not in text and "1950-02-03" not in text


@pytest.mark.parametrize("url", [[], {}, 5])
def test_a_draft_order_extension_with_an_odd_url_is_kept_not_a_500(client, url):
    """Regression: the rating's old PAMA extensions were found by looking each url up in a set: a
    list or an object there was a TypeError (a 500). Such an extension is not ours: it is kept."""
    request = load_request("acute-lbp-defer")
    request["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = [{"url": url, "valueString": "site"}]
    response = client.post(SELECT, json=request)
    assert response.status_code == 200
    updated = [a["resource"] for a in response.get_json()["systemActions"] if a["type"] == "update"]
    assert updated and all({"url": url, "valueString": "site"} in r["extension"] for r in updated)
