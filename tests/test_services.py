"""Service definitions in hooks/ and the discovery endpoint."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT

from cds_service.knowledge import Knowledge
from cds_service.knowledge.value_sets import LOINC
from cds_service.resource_types import BY_PREFETCH_KEY, RESOURCE_TYPES, SEARCHES
from cds_service.services import DISCOVERY_FIELDS, DefinitionError, load_services, render_template

TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def test_discovery_lists_the_order_select_order_sign_and_patient_view_services(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.get_json()["services"]
    assert sorted(s["hook"] for s in services) == ["order-select", "order-sign", "patient-view"]
    assert len({s["id"] for s in services}) == 3  # the sandbox keys services by id


def test_discovery_entries_carry_only_spec_fields_and_no_empty_values(client):
    for service in client.get("/cds-services").get_json()["services"]:
        assert set(service) <= set(DISCOVERY_FIELDS)
        for field in ("id", "hook", "title", "description", "usageRequirements", "prefetch"):
            assert service[field], field
        assert "silent" not in service and "prefetchFailurePolicy" not in service


def test_prefetch_uses_only_cds_hooks_2_tokens(client):
    for service in client.get("/cds-services").get_json()["services"]:
        for template in service["prefetch"].values():
            assert TOKEN.findall(template) in (["context.patientId"], ["context.encounterId"]), template
            assert "today()" not in template


def test_prefetch_asks_for_the_resources_the_rules_read(client):
    service = client.get("/cds-services").get_json()["services"][0]
    targets = {template.split("?")[0].split("/")[0] for template in service["prefetch"].values()}
    assert targets == set(RESOURCE_TYPES)


def test_shipped_prefetch_templates_are_the_resource_type_table_searches():
    """One place per resource type: each shipped key is a RESOURCE_TYPES entry, searched as the table says
    (a service may only narrow the search, as the Observation template does with its codes)."""
    for path in (ROOT / "hooks").glob("*.json"):
        prefetch = json.loads(path.read_text())["prefetch"]
        assert set(prefetch) == set(BY_PREFETCH_KEY), path.name
        for key, template in prefetch.items():
            search = SEARCHES[key]
            assert template == search or template.startswith(search + "&"), (path.name, key)


def test_observation_prefetch_names_exactly_the_loinc_codes_of_the_observation_value_sets():
    knowledge = Knowledge()
    wanted = {
        code for vs in knowledge.value_sets_read_from("Observation") for system, code in vs.codes if system == LOINC
    }
    assert wanted
    for path in (ROOT / "hooks").glob("*.json"):
        template = json.loads(path.read_text())["prefetch"]["observations"]
        listed = {item.split("|")[1] for item in template.split("code=")[1].split(",")}
        assert listed == wanted, path.name


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prefetch": {"recent": "Observation?patient={{context.patientId}}&date=ge{{today() - 90 days}}"}}, "today()"),
        ({"hook": "encounter-start"}, "hook"),
        ({"id": "has spaces"}, "URL-safe"),
        ({"description": ""}, "description"),
        ({"prefetchFailurePolicy": {"nope": "omit"}}, "unknown keys"),
        ({"prefetchFailurePolicy": {"patient": "sometimes"}}, "sometimes"),
    ],
)
def test_invalid_definitions_are_refused_at_start_up(tmp_path, change, message):
    definition = json.loads((ROOT / "hooks" / "order-select.json").read_text())
    definition.update(change)
    (tmp_path / "bad.json").write_text(json.dumps(definition))
    with pytest.raises(DefinitionError) as raised:
        load_services(tmp_path)
    assert "bad.json" in str(raised.value) and message in str(raised.value)


def test_duplicate_service_ids_are_refused(tmp_path):
    text = (ROOT / "hooks" / "order-select.json").read_text()
    (tmp_path / "a.json").write_text(text)
    (tmp_path / "b.json").write_text(text)
    with pytest.raises(DefinitionError, match="duplicate"):
        load_services(tmp_path)


def test_hooks_dir_is_configurable(tmp_path, make_app):
    definition = json.loads((ROOT / "hooks" / "order-sign.json").read_text())
    definition["id"] = "site-specific-sign"
    (tmp_path / "only.json").write_text(json.dumps(definition))
    services = make_app(hooks_dir=tmp_path).test_client().get("/cds-services").get_json()["services"]
    assert [s["id"] for s in services] == ["site-specific-sign"]


def test_template_tokens_are_filled_and_only_with_fhir_ids():
    """A value that is not a FHIR id ("a b&c=d", "..") is never substituted into a query."""
    context = {"patientId": "a b&c=d", "userId": "Practitioner/77"}
    assert render_template("Condition?patient={{context.patientId}}", context) is None
    assert render_template("Patient/{{context.patientId}}", {"patientId": ".."}) is None
    assert (
        render_template("Condition?patient={{context.patientId}}", {"patientId": "e.Xy-9"})
        == "Condition?patient=e.Xy-9"
    )
    assert (
        render_template("PractitionerRole?practitioner={{userPractitionerId}}", context)
        == "PractitionerRole?practitioner=77"
    )


def test_template_with_an_unresolvable_token_is_not_rendered():
    assert render_template("Encounter/{{context.encounterId}}", {"patientId": "1"}) is None
    assert render_template("RelatedPerson/{{userRelatedPersonId}}", {"userId": "Practitioner/1"}) is None
