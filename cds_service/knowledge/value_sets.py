"""Value sets: the codes each rule reads, loaded from one JSON file per concept in value_sets/.

Codes are compared after normalising code-system aliases (OIDs) and ICD-10-CM punctuation
("M5450" and "m54.50" both mean M54.50). ICD-10-CM families are matched by prefix or by
three-character category range where the file says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import msgspec

from .units import celsius

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
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
EVERYTHING: frozenset[str] = frozenset({"*"})  # the rules may read any element of the resource
CHECKED: frozenset[str] = frozenset()  # matched and looked at, but it cannot change a decision: not read


class _Quantity(msgspec.Struct):
    value: float | None = None
    unit: str | None = None
    code: str | None = None


_quantity = msgspec.json.Decoder(_Quantity)


class HasCoding(Protocol):
    system: Any
    code: Any


@lru_cache(maxsize=65536)
def normalise(system: str | None, code: str | None) -> tuple[str, str] | None:
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
    resource_types: tuple[str, ...]
    codes: Mapping[tuple[str, str], str]  # (system, normalised code) -> display
    prefixes: Mapping[str, tuple[str, ...]]  # system -> normalised code prefixes
    ranges: Mapping[str, tuple[tuple[str, str], ...]]  # system -> inclusive 3-character category ranges
    roles: Mapping[tuple[str, str], str] = field(default_factory=dict)  # per-code role, e.g. "history"
    prefix_roles: Mapping[tuple[str, str], str] = field(default_factory=dict)
    range_roles: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # any other keys of the file

    def _matches(self, key: tuple[str, str]) -> bool:
        if key in self.codes:
            return True
        system, code = key
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
            codes[key] = display
            if role:
                roles[key] = role
        for prefix in include.get("prefixes", ()):
            normalised = normalise(system, prefix)[1]
            prefixes.setdefault(system, []).append(normalised)
            if role:
                prefix_roles[(system, normalised)] = role
        for low, high in include.get("ranges", ()):
            ranges.setdefault(system, []).append((low.upper(), high.upper()))
            if role:
                range_roles[(system, low.upper(), high.upper())] = role
    known = {"id", "title", "basis", "resourceTypes", "include"}
    return ValueSet(
        id=raw["id"],
        title=raw["title"],
        basis=raw.get("basis", ""),
        resource_types=tuple(raw.get("resourceTypes", ("Condition",))),
        codes=codes,
        prefixes={system: tuple(values) for system, values in prefixes.items()},
        ranges={system: tuple(values) for system, values in ranges.items()},
        roles=roles,
        prefix_roles=prefix_roles,
        range_roles=range_roles,
        extra={key: value for key, value in raw.items() if key not in known},
    )


def load_value_sets(directory: Path = DIRECTORY) -> dict[str, ValueSet]:
    sets = {}
    for path in sorted(directory.glob("*.json")):
        value_set = _load(path)
        if value_set.id != path.stem:
            raise ValueError(f"{path.name}: id {value_set.id!r} does not match the file name")
        sets[value_set.id] = value_set
    return sets


class ReadingList:
    """Which resources the rules read: a resource is kept when one of its codes is in a value set
    declared for its resource type and, for value sets with a look-back window, it is recent enough.
    Patients and Devices are always kept (implants).

    Called for every resource of a large record, so the value sets are merged into one index per
    resource type: a dict lookup per coding, and one `startswith` with a tuple for ICD families."""

    ALWAYS = frozenset({"Patient", "Device"})

    def __init__(self, value_sets: Mapping[str, ValueSet], cutoffs: Mapping[str, str] | None = None) -> None:
        self._value_sets = value_sets
        self._cutoffs = dict(cutoffs or {})  # value set id -> earliest ISO date still read
        self._floors: dict[str, float] = {}  # value set id -> lowest value still read
        self._within: dict[tuple[Any, ...], ReadingList] = {}
        # resource type -> (system, code) -> value set ids; and system -> [(prefix, id)], [(low, high, id)]
        self._codes: dict[str, dict[tuple[str, str], tuple[str, ...]]] = {}
        self._prefixes: dict[str, dict[str, tuple[tuple[str, ...], list[tuple[str, str]]]]] = {}
        self._ranges: dict[str, dict[str, list[tuple[str, str, str]]]] = {}
        for value_set in value_sets.values():
            for resource_type in value_set.resource_types:
                codes = self._codes.setdefault(resource_type, {})
                for key in value_set.codes:
                    codes[key] = codes.get(key, ()) + (value_set.id,)
                prefixes = self._prefixes.setdefault(resource_type, {})
                for system, values in value_set.prefixes.items():
                    _, pairs = prefixes.get(system, ((), []))
                    pairs = pairs + [(prefix, value_set.id) for prefix in values]
                    prefixes[system] = (tuple(prefix for prefix, _ in pairs), pairs)
                ranges = self._ranges.setdefault(resource_type, {})
                for system, values in value_set.ranges.items():
                    ranges.setdefault(system, []).extend((low, high, value_set.id) for low, high in values)
        self._elements = {
            value_set.id: frozenset(value_set.extra["elements"])
            for value_set in value_sets.values()
            if "elements" in value_set.extra
        }
        self._family_systems = {system for index in self._prefixes.values() for system in index} | {
            system for index in self._ranges.values() for system in index
        }
        self._systems = (
            {system for index in self._codes.values() for system, _ in index}
            | {system for index in self._prefixes.values() for system in index}
            | {system for index in self._ranges.values() for system in index}
        )

    def _value_counts(self, value_set_id: str, value: Any) -> bool:
        """For value sets read only above a threshold (`readWhen: at-or-above:<threshold>`)."""
        floor = self._floors.get(value_set_id)
        if floor is None:
            return True
        try:
            quantity = _quantity.decode(value) if isinstance(value, (bytes, msgspec.Raw)) else None
        except msgspec.DecodeError:
            return True  # an odd value: let the typed model and the rules judge it
        if quantity is None:
            return True
        degrees = celsius(quantity.value, quantity.code, quantity.unit)
        return degrees is None or degrees >= floor

    def within(self, now: datetime, thresholds: Any, contrast_ordered: bool = True) -> ReadingList:
        """The same list for one call: each value set's look-back window (`lookbackThreshold`) applied
        at `now`, and value sets read only for contrast orders (`readWhen`) left out when none is.
        Windows are whole days, so one list serves a whole day."""
        key = (now.date(), thresholds, contrast_ordered)
        cached = self._within.get(key)
        if cached is None:
            if len(self._within) > 8:
                self._within.clear()
            cached = self._within[key] = self._make_within(now, thresholds, contrast_ordered)
        return cached

    def _make_within(self, now: datetime, thresholds: Any, contrast_ordered: bool) -> ReadingList:
        clone = object.__new__(ReadingList)
        clone.__dict__.update(self.__dict__)
        clone._cutoffs = {}
        clone._floors = {}
        for value_set in self._value_sets.values():
            threshold = value_set.extra.get("lookbackThreshold")
            if threshold:
                clone._cutoffs[value_set.id] = (now - timedelta(days=getattr(thresholds, threshold))).date().isoformat()
            read_when = value_set.extra.get("readWhen", "")
            if read_when == "contrast-ordered" and not contrast_ordered:
                clone._cutoffs[value_set.id] = "9999-12-31"  # nothing is recent enough: not read
            if read_when.startswith("at-or-above:"):
                clone._floors[value_set.id] = float(getattr(thresholds, read_when.split(":", 1)[1]))
        return clone

    def _value_set_ids(self, resource_type: str, key: tuple[str, str]) -> Iterable[str]:
        ids = self._codes.get(resource_type, {}).get(key, ())
        system, code = key
        if system not in self._family_systems:
            return ids
        prefixes, pairs = self._prefixes.get(resource_type, {}).get(system, ((), ()))
        if prefixes and code.startswith(prefixes):
            ids += tuple(value_set_id for prefix, value_set_id in pairs if code.startswith(prefix))
        for low, high, value_set_id in self._ranges.get(resource_type, {}).get(system, ()):
            if low <= code[:3] <= high:
                ids += (value_set_id,)
        return ids

    def reads(
        self, resource_type: str, codings: Iterable[HasCoding], when: str | None = None, value: Any = None
    ) -> frozenset[str] | None:
        """The elements the rules read from this resource (EVERYTHING when a value set does not
        narrow them); CHECKED when it matched but cannot change a decision; None when the rules
        do not read it at all."""
        if resource_type in self.ALWAYS:
            return EVERYTHING
        index = self._codes.get(resource_type)
        if index is None:
            return None
        elements: frozenset[str] | None = None
        for coding in codings:
            system, code = coding.system, coding.code
            if not code:
                continue
            if system not in self._systems:
                system = _SYSTEM_ALIASES.get(system or "")
                if system is None:
                    continue  # local and proprietary code systems: by far most codings in a real chart
            if system in self._family_systems:  # ICD-10-CM: punctuation-free codes, families by prefix
                key = normalise(system, code)
                ids = self._value_set_ids(resource_type, key) if key else ()
            else:
                ids = index.get((system, code.strip()), ())
            for value_set_id in ids:
                cutoff = self._cutoffs.get(value_set_id)
                # ISO dates compare as strings; an undated resource is always read
                if cutoff is None or when is None or when[:10] >= cutoff:
                    if not self._value_counts(value_set_id, value):
                        elements = CHECKED if elements is None else elements
                        continue
                    narrowed = self._elements.get(value_set_id, EVERYTHING)
                    elements = narrowed if elements is None else elements | narrowed
        return elements
