"""The one code -> value-set index agrees with every value set's own membership test."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cds_service.knowledge.code_index import CodeIndex
from cds_service.knowledge.value_sets import ICD10CM, SNOMED, load_value_sets

VALUE_SETS = load_value_sets()
INDEX = CodeIndex(VALUE_SETS)


@dataclass(frozen=True)
class Coding:
    system: str | None
    code: str | None


def probes() -> list[Coding]:
    """Every code, prefix and range bound of every value set, as clients write them (with ICD
    punctuation, lower case, an OID alias, trailing spaces), plus near misses."""
    found: set[Coding] = set()
    for value_set in VALUE_SETS.values():
        for system, code in value_set.codes:
            found |= {Coding(system, code), Coding(system, code + "9"), Coding(system, f" {code} ")}
        for system, prefixes in value_set.prefixes.items():
            for prefix in prefixes:
                found |= {Coding(system, prefix), Coding(system, prefix + "1"), Coding(system, prefix[:-1] or "X")}
        for system, bounds in value_set.ranges.items():
            for low, high in bounds:
                found |= {Coding(system, low + "0"), Coding(system, high + "9"), Coding(system, low[:2] + "0")}
        for system, excluded in value_set.excluded.items():
            found |= {Coding(system, code + "1") for code in excluded}
    icd = [c for c in found if c.system == ICD10CM and c.code and len(c.code) > 3]
    found |= {Coding(ICD10CM, c.code[:3] + "." + c.code[3:]) for c in icd}  # "M54.50"
    found |= {Coding("urn:oid:2.16.840.1.113883.6.90", c.code.lower()) for c in icd}
    found |= {Coding("http://example.org/local", "M5450"), Coding(SNOMED, None), Coding(None, "M5450")}
    return sorted(found, key=lambda c: (c.system or "", c.code or ""))


PROBES = probes()


def test_the_probes_cover_every_value_set():
    hit = {v for c in PROBES for v in INDEX.matches([c])}
    assert hit >= {v.id for v in VALUE_SETS.values() if v.codes or v.prefixes or v.ranges}


@pytest.mark.parametrize("value_set_id", sorted(VALUE_SETS))
def test_the_index_finds_exactly_the_codes_each_value_set_contains(value_set_id):
    value_set = VALUE_SETS[value_set_id]
    wrong = [c for c in PROBES if (value_set_id in INDEX.matches([c])) != (value_set.first_match([c]) is not None)]
    assert wrong == []


def test_each_value_set_gets_the_first_of_the_concepts_codings_it_contains():
    first, second = Coding(ICD10CM, "M54.50"), Coding(ICD10CM, "M54.59")
    matches = INDEX.matches([Coding("http://example.org/local", "1"), first, second])
    for value_set_id, coding in matches.items():
        assert coding is VALUE_SETS[value_set_id].first_match([first, second])


def test_a_medicine_is_matched_by_an_ingredient_named_in_its_text_only_when_asked():
    named = next(v for v in VALUE_SETS.values() if v.names)
    text = f"{named.names[0].title()} 500 MG Oral Tablet"
    assert INDEX.matches([], text) == {named.id: None}
    assert INDEX.matches([]) == {}
