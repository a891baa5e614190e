"""Value sets: the codes the rules read, as data files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cds_service.knowledge import Knowledge
from cds_service.knowledge.value_sets import CPT, DIRECTORY, ICD10CM, LOINC, RXNORM, SNOMED, normalise

KNOWN_SYSTEMS = {ICD10CM, SNOMED, LOINC, CPT, RXNORM, "urn:oid:2.16.840.1.113883.3.26.1.1"}
SOURCE = Path(__file__).resolve().parent.parent / "cds_service"


@pytest.fixture(scope="module")
def knowledge():
    return Knowledge()


def test_every_value_set_file_is_well_formed():
    for path in DIRECTORY.glob("*.json"):
        raw = json.loads(path.read_text())
        assert raw["id"] == path.stem and raw["title"] and "basis" in raw
        for include in raw["include"]:
            assert include["system"] in KNOWN_SYSTEMS, path.name
            assert include.get("codes") or include.get("prefixes") or include.get("ranges"), path.name


def test_every_value_set_the_code_names_exists(knowledge):
    named = set()
    for path in SOURCE.rglob("*.py"):
        named |= set(re.findall(r'(?:self\.vs|value_sets)\["([a-z0-9-]+)"\]', path.read_text()))
        named |= set(re.findall(r'_conditions_in\(conditions, "([a-z0-9-]+)"', path.read_text()))
    assert named and named <= set(knowledge.value_sets), named - set(knowledge.value_sets)


@pytest.mark.parametrize(
    "system, code, expected",
    [
        (ICD10CM, "M54.50", (ICD10CM, "M5450")),
        ("urn:oid:2.16.840.1.113883.6.90", "m54.50 ", (ICD10CM, "M5450")),
        ("urn:oid:2.16.840.1.113883.6.96", "279039007", (SNOMED, "279039007")),
        (LOINC, "8310-5", (LOINC, "8310-5")),
        (None, "72148", None),
        (CPT, "", None),
    ],
)
def test_codes_are_normalised(system, code, expected):
    assert normalise(system, code) == expected


@pytest.mark.parametrize(
    "value_set, system, code, member",
    [
        ("low-back-pain", ICD10CM, "M54.50", True),
        ("low-back-pain", ICD10CM, "M54.5", True),
        ("low-back-pain", ICD10CM, "M54.08", False),  # panniculitis, mislabelled as lumbosacral pain in some lists
        ("bladder-bowel-dysfunction", ICD10CM, "R33.0", False),  # drug-induced retention: a mimic, not escalated
        ("bladder-bowel-dysfunction", ICD10CM, "N39.498", True),
        ("malignancy", ICD10CM, "Z85.3", True),
        ("malignancy", ICD10CM, "C96.9", True),
        ("malignancy", ICD10CM, "D12.6", False),
        ("spinal-infection", ICD10CM, "M46.26", True),
        ("lumbar-disc", ICD10CM, "M51.A3", True),
        (
            "order-mri-lumbar-spine",
            LOINC,
            "24531-6",
            False,
        ),  # US retroperitoneum, listed wrongly as lumbar MRI in places
        ("cauda-equina", SNOMED, "271594007", False),  # syncope, listed wrongly as saddle anaesthesia in places
        ("pregnancy", ICD10CM, "O26.891", True),
        ("egfr", LOINC, "35591-7", False),  # creatinine clearance is not eGFR
    ],
)
def test_membership(knowledge, value_set, system, code, member):
    assert knowledge[value_set].contains(system, code) is member


def test_history_codes_carry_their_role(knowledge):
    malignancy = knowledge["malignancy"]
    assert malignancy.role(ICD10CM, "Z85.3") == "history" and malignancy.role(ICD10CM, "C79.51") == "active"


def test_order_codes_say_which_contrast(knowledge):
    study = knowledge.lumbar_mri_study({"code": {"coding": [{"system": CPT, "code": "72158"}]}})
    assert (study.code, study.contrast) == ("72158", "without-and-with")
