"""Clinical knowledge: value sets, facts read from the patient record, and the rules.

Everything here is a pure function of its inputs (a patient record, an order, a clock and the
thresholds): no HTTP, no Flask, no module-level state beyond constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .code_index import CodeIndex
from .fact_table import FACTS
from .facts import Fact, sources_by_type
from .orders import OrderedStudy, codings_of
from .reading_list import ReadingList
from .rules import RULES, Rule
from .value_sets import DIRECTORY, SNOMED, ValueSet, load_value_sets, normalise


class Knowledge:
    """Loaded once at start-up and shared read-only by every request."""

    def __init__(
        self, value_set_dir: Path = DIRECTORY, facts: Sequence[Fact] = FACTS, rules: Sequence[Rule] = RULES
    ) -> None:
        self.value_sets: Mapping[str, ValueSet] = load_value_sets(value_set_dir)
        self.facts = tuple(facts)
        self.rules = tuple(rules)
        missing = sorted({v for fact in self.facts for s in fact.sources for v in s.value_sets} - set(self.value_sets))
        if missing:
            raise ValueError(f"facts name value sets that do not exist: {', '.join(missing)}")
        self.code_index = CodeIndex(self.value_sets)  # one index for the record scan and the facts
        self.sources_by_type = sources_by_type(self.facts)  # the date windows per type: reading list, facts
        self.reading_list = ReadingList(self.value_sets, self.facts, self.code_index, self.sources_by_type)

    def value_sets_read_from(self, resource_type: str) -> list[ValueSet]:
        """The value sets some fact matches in `resource_type` resources of the record."""
        ids = {v for fact in self.facts for s in fact.sources if s.element.from_record
               and s.element.resource_type == resource_type for v in s.value_sets}  # fmt: skip
        return [self.value_sets[v] for v in sorted(ids)]

    def __getitem__(self, value_set_id: str) -> ValueSet:
        return self.value_sets[value_set_id]

    def lumbar_mri_study(self, order: Mapping[str, Any]) -> OrderedStudy | None:
        """The lumbar MRI coded on a draft ServiceRequest (a dict as the client sent it), or None.

        Tolerates what clients really send: `code: {"coding": [{}]}`, missing code, odd types."""
        mri = self.value_sets["order-mri-lumbar-spine"]
        contrast: Mapping[str, str] = mri.extra.get("contrast", {})
        for coding in codings_of(order.get("code")):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str) and mri.contains(system, code):
                return OrderedStudy(system, code, mri.display(system, code) or code, contrast.get(code, "unspecified"))
        generic = mri.extra.get("spineNeedsLumbarBodySite", {})
        lumbar_sites = self.value_sets["lumbar-body-site"]
        for coding in codings_of(order.get("code")):
            key = normalise(coding.get("system"), coding.get("code"))
            if key and key[0] == SNOMED and key[1] in generic.get("codes", {}):
                sites = order.get("bodySite")
                sites = sites if isinstance(sites, list) else []
                if any(
                    lumbar_sites.contains(c.get("system"), c.get("code")) for site in sites for c in codings_of(site)
                ):
                    contrast_kind = "with" if key[1] == "431985004" else "unspecified"
                    return OrderedStudy(key[0], key[1], generic["codes"][key[1]], contrast_kind)
        return None
