"""Value sets: the codes each rule reads, loaded from one JSON file per concept in value_sets/.

Codes are compared after normalising code-system aliases (OIDs) and ICD-10-CM punctuation
("M5450" and "m54.50" both mean M54.50). ICD-10-CM families are matched by prefix or by
three-character category range where the file says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NCI_DEVICE_SAFETY = "urn:oid:2.16.840.1.113883.3.26.1.1"

_SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "http://hl7.org/fhir/sid/icd-10-cm/": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "http://snomed.info/sct/": SNOMED,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "http://loinc.org/": LOINC,
    "urn:oid:2.16.840.1.113883.6.12": CPT,
    "http://www.ama-assn.org/go/cpt/": CPT,
    "https://www.ama-assn.org/go/cpt": CPT,
    "http://ncithesaurus-stage.nci.nih.gov": NCI_DEVICE_SAFETY,
}

DIRECTORY = Path(__file__).resolve().parent / "value_sets"


class HasCoding(Protocol):
    @property
    def system(self) -> Any: ...
    @property
    def code(self) -> Any: ...


def normalise(system: Any, code: Any) -> tuple[str, str] | None:
    """(system, code) with code-system aliases and ICD-10-CM punctuation normalised; None unless both
    are non-empty strings (clients send numbers, lists and objects there too)."""
    if not isinstance(system, str) or not isinstance(code, str):
        return None
    return _normalise(system, code)


@lru_cache(maxsize=65536)
def _normalise(system: str, code: str) -> tuple[str, str] | None:
    if not system or not code:
        return None
    system = _SYSTEM_ALIASES.get(system.strip(), system.strip())
    code = code.strip()
    if system == ICD10CM:
        code = code.replace(".", "").replace(" ", "").upper()
    return system, code


@dataclass(frozen=True)
class ValueSet:
    id: str
    title: str
    basis: str
    codes: Mapping[tuple[str, str], str]  # (system, normalised code) -> display
    prefixes: Mapping[str, tuple[str, ...]]  # system -> normalised code prefixes
    ranges: Mapping[str, tuple[tuple[str, str], ...]]  # system -> inclusive 3-character category ranges
    roles: Mapping[tuple[str, str], str] = field(default_factory=dict)  # per-code role, e.g. "history"
    prefix_roles: Mapping[tuple[str, str], str] = field(default_factory=dict)
    range_roles: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # any other keys of the file
    names: tuple[str, ...] = ()  # ingredient names: a product whose text or display names one is a member
    excluded: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # system -> codes or prefixes left out

    def name_in(self, text: str | None) -> str | None:
        """The first of `names` that `text` contains as a word ("Ibuprofen 800 MG Oral Tablet")."""
        if not self.names or not text:
            return None
        match = names_pattern(self.names).search(text)
        return match.group(0).lower() if match else None

    def _matches(self, key: tuple[str, str]) -> bool:
        system, code = key
        if self.excluded and code.startswith(self.excluded.get(system, ())):
            return False  # e.g. non-melanoma skin cancer inside the Z85 and C00-C96 families
        if key in self.codes:
            return True
        if code.startswith(self.prefixes.get(system, ())):
            return True
        return any(low <= code[:3] <= high for low, high in self.ranges.get(system, ()))

    def contains(self, system: str | None, code: str | None) -> bool:
        key = normalise(system, code)
        return key is not None and self._matches(key)

    def first_match(self, codings: Iterable[HasCoding] | None) -> HasCoding | None:
        for coding in codings or ():
            if self.contains(coding.system, coding.code):
                return coding
        return None

    def role(self, system: str | None, code: str | None) -> str | None:
        key = normalise(system, code)
        if key is None:
            return None
        if key in self.roles:
            return self.roles[key]
        for (prefix_system, prefix), role in self.prefix_roles.items():
            if prefix_system == key[0] and key[1].startswith(prefix):
                return role
        for (range_system, low, high), role in self.range_roles.items():
            if range_system == key[0] and low <= key[1][:3] <= high:
                return role
        return None

    def display(self, system: str | None, code: str | None) -> str | None:
        key = normalise(system, code)
        return self.codes.get(key) if key else None


@lru_cache(maxsize=64)
def names_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(re.escape(name) for name in names) + r")\b", re.IGNORECASE)


def _load(path: Path) -> ValueSet:
    raw = json.loads(path.read_text(encoding="utf-8"))
    codes: dict[tuple[str, str], str] = {}
    prefixes: dict[str, list[str]] = {}
    ranges: dict[str, list[tuple[str, str]]] = {}
    roles: dict[tuple[str, str], str] = {}
    prefix_roles: dict[tuple[str, str], str] = {}
    range_roles: dict[tuple[str, str, str], str] = {}
    for include in raw["include"]:
        system = include["system"]
        role = include.get("role")
        for code, display in (include.get("codes") or {}).items():
            key = normalise(system, code)
            if key is None:
                raise ValueError(f"{path.name}: an empty code in {system}")
            codes[key] = display
            if role:
                roles[key] = role
        for prefix in include.get("prefixes", ()):
            normalised = (normalise(system, prefix) or ("", ""))[1]
            prefixes.setdefault(system, []).append(normalised)
            if role:
                prefix_roles[(system, normalised)] = role
        for low, high in include.get("ranges", ()):
            ranges.setdefault(system, []).append((low.upper(), high.upper()))
            if role:
                range_roles[(system, low.upper(), high.upper())] = role
    known = {"id", "title", "basis", "include", "names", "exclude"}
    excluded: dict[str, list[str]] = {}
    for exclude in raw.get("exclude", ()):
        system = exclude["system"]
        for code in [*(exclude.get("codes") or {}), *exclude.get("prefixes", ())]:
            excluded.setdefault(system, []).append((normalise(system, code) or ("", ""))[1])
    return ValueSet(
        id=raw["id"],
        title=raw["title"],
        basis=raw.get("basis", ""),
        codes=codes,
        prefixes={system: tuple(values) for system, values in prefixes.items()},
        ranges={system: tuple(values) for system, values in ranges.items()},
        roles=roles,
        prefix_roles=prefix_roles,
        range_roles=range_roles,
        extra={key: value for key, value in raw.items() if key not in known},
        names=tuple(name.lower() for name in raw.get("names", ())),
        excluded={system: tuple(codes) for system, codes in excluded.items()},
    )


def load_value_sets(directory: Path = DIRECTORY) -> dict[str, ValueSet]:
    sets = {}
    for path in sorted(directory.glob("*.json")):
        value_set = _load(path)
        if value_set.id != path.stem:
            raise ValueError(f"{path.name}: id {value_set.id!r} does not match the file name")
        sets[value_set.id] = value_set
    return sets
