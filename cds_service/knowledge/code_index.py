"""Every value set's codes in one index, built once: a coding's value sets in one dict lookup.

The record scan (reading_list.py) asks it which value sets a resource's codes fall in, and the
facts (facts.py) reuse that answer instead of testing each value set in turn. Its answers are
exactly `ValueSet.first_match`'s (tests/test_code_index.py checks every value set): the same
normalisation of code-system aliases and ICD-10-CM punctuation, ICD-10-CM families by prefix and
by category range, and each value set's exclusions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .value_sets import HasCoding, ValueSet, normalise

# value set id -> the first coding of the concept in it (None: a medicine matched by its name)
Matches = dict[str, Any]


class CodeIndex:
    def __init__(self, value_sets: Mapping[str, ValueSet]) -> None:
        self._codes: dict[tuple[str, str], tuple[str, ...]] = {}
        self._prefixes: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {}
        self._ranges: dict[str, tuple[tuple[str, str, str], ...]] = {}
        self._excluded: dict[str, dict[str, tuple[str, ...]]] = {}
        for value_set in value_sets.values():
            for key in value_set.codes:
                self._codes[key] = self._codes.get(key, ()) + (value_set.id,)
            for system, prefixes in value_set.prefixes.items():
                pairs = self._prefixes.get(system, ((), ()))[1] + tuple((p, value_set.id) for p in prefixes)
                self._prefixes[system] = (tuple(prefix for prefix, _ in pairs), pairs)
            for system, bounds in value_set.ranges.items():
                self._ranges[system] = self._ranges.get(system, ()) + tuple((lo, hi, value_set.id) for lo, hi in bounds)
            if value_set.excluded:
                self._excluded[value_set.id] = dict(value_set.excluded)
        self._named = tuple(value_set for value_set in value_sets.values() if value_set.names)
        self._families = set(self._prefixes) | set(self._ranges)
        self._systems = {system for system, _ in self._codes} | self._families
        self._plain = self._systems - self._families  # matched by exact code: no families, no punctuation

    def matches(self, codings: Iterable[HasCoding], text: str | None = None) -> Matches:
        """The value sets the codings fall in, each with the first coding in it; with `text` (a
        medicine's text and displays), also the value sets that name an ingredient it contains."""
        found: Matches = {}
        for coding in codings:
            system, code = coding.system, coding.code
            if not code or not isinstance(code, str):
                continue
            if system in self._plain:  # SNOMED CT, LOINC, CPT, RxNorm: one dict lookup
                ids = self._codes.get((system, code.strip()))
                if ids is None:
                    continue
                if self._excluded:
                    ids = self._included(ids, system, code.strip())
            else:
                key = normalise(system, code)
                if key is None or key[0] not in self._systems:
                    continue  # local and proprietary code systems: by far most codings in a real chart
                ids = self._value_sets_of(key)
            for value_set_id in ids:
                if value_set_id not in found:
                    found[value_set_id] = coding
        if text:
            for value_set in self._named:
                if value_set.id not in found and value_set.name_in(text):
                    found[value_set.id] = None
        return found

    def _value_sets_of(self, key: tuple[str, str]) -> tuple[str, ...]:
        ids = self._codes.get(key, ())
        system, code = key
        if system in self._families:
            prefixes, pairs = self._prefixes.get(system, ((), ()))
            if prefixes and code.startswith(prefixes):
                ids += tuple(value_set_id for prefix, value_set_id in pairs if code.startswith(prefix))
            ids += tuple(value_set_id for lo, hi, value_set_id in self._ranges.get(system, ()) if lo <= code[:3] <= hi)
        return self._included(ids, system, code) if self._excluded and ids else ids

    def _included(self, ids: tuple[str, ...], system: str, code: str) -> tuple[str, ...]:
        return tuple(v for v in ids if not code.startswith(self._excluded.get(v, {}).get(system, ())))
