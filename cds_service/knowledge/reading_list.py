"""The prefetch reading list: which resources the rules read, derived from the fact declarations.

A resource is typed (given an R4B model) only when one of its codes is in a value set that a fact
reads from that resource type and, where the fact looks back a fixed time, it is recent enough.
Everything else in a large chart is counted and skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec

from .code_index import CodeIndex, Matches
from .facts import OBSERVATION_BASE, Fact, Source, Window, sources_by_type, window_bounded
from .units import celsius
from .value_sets import ValueSet

EVERYTHING: frozenset[str] = frozenset({"*"})  # the rules may read any element of the resource
CHECKED: frozenset[str] = frozenset()  # matched and looked at, but it cannot change a decision: not read


class _Quantity(msgspec.Struct):
    value: float | None = None
    unit: str | None = None
    code: str | None = None


_quantity = msgspec.json.Decoder(_Quantity)


@dataclass
class ReadPlan:
    """How one value set is read, merged over every fact source that names it."""

    resource_types: set[str] = field(default_factory=set)
    lookbacks: list[str | int | None] = field(default_factory=list)  # None: some source reads any date
    elements: set[str] | None = field(default_factory=set)  # None: every element the rules read
    floor: str | None = None  # a Thresholds field: values below it are checked, not read
    contrast_only: bool = True

    def lookback_days(self, thresholds: Any) -> int | None:
        """The loosest window of the sources (a fixed window only when every source has one)."""
        if not self.lookbacks or None in self.lookbacks:
            return None
        return max(v if isinstance(v, int) else int(getattr(thresholds, str(v))) for v in self.lookbacks)


def read_plans(facts: Sequence[Fact]) -> dict[str, ReadPlan]:
    plans: dict[str, ReadPlan] = {}
    for fact in facts:
        for source in fact.sources:
            if not source.element.from_record:
                continue
            for value_set_id in source.value_sets:
                plan = plans.setdefault(value_set_id, ReadPlan())
                plan.resource_types.add(source.element.resource_type)
                plan.lookbacks.append(source.lookback if source.window is Window.LOOKBACK else None)
                if source.values is None or plan.elements is None:
                    plan.elements = None
                else:
                    plan.elements |= {*OBSERVATION_BASE, *source.values}
                plan.floor = source.read_at_or_above
                plan.contrast_only = plan.contrast_only and source.contrast_orders_only
    return plans


class ReadingList:
    """Which resources the rules read: a resource is kept when one of its codes is in a value set
    a fact reads from its resource type and, for value sets with a look-back window, it is recent
    enough. (Patients and Devices are read whatever their codes: resource_types.py.)

    Called for every resource of a large record: a resource's value sets come from the one code
    index (code_index.py) in a dict lookup per coding, and the record keeps them for the facts."""

    def __init__(
        self,
        value_sets: Mapping[str, ValueSet],
        facts: Sequence[Fact],
        index: CodeIndex | None = None,
        sources: Mapping[str, tuple[Source, ...]] | None = None,
    ):
        self.index = index or CodeIndex(value_sets)
        self._plans = read_plans(facts)
        self._cutoffs: dict[str, str] = {}  # value set id -> earliest ISO date still read
        self._floors: dict[str, float] = {}  # value set id -> lowest value still read
        self._within: dict[tuple[Any, ...], ReadingList] = {}
        read_from: dict[str, set[str]] = {}  # resource type -> the value sets facts read from it
        for value_set_id, plan in self._plans.items():
            for resource_type in plan.resource_types:
                read_from.setdefault(resource_type, set()).add(value_set_id)
        self._read_from = {resource_type: frozenset(ids) for resource_type, ids in read_from.items()}
        self._by_name = {t for t, ids in read_from.items() if any(value_sets[v].names for v in ids)}
        self._elements = {
            value_set_id: frozenset(plan.elements) for value_set_id, plan in self._plans.items() if plan.elements
        }
        # Resource types every fact reads only within a window of dates (the episode, a look-back):
        # medicines, other orders, reports, imaging studies. The record types them once the facts know
        # where their windows begin (patient_record.py, `Deferred`).
        by_type = sources if sources is not None else sources_by_type(facts)
        self.window_bounded = frozenset(t for t, found in by_type.items() if window_bounded(found))

    def reads_by_name(self, resource_type: str) -> bool:
        """Whether facts match this resource type by the ingredient names in its text too (medicines):
        the scan then passes the text to the index (code_index.py)."""
        return resource_type in self._by_name

    def _value_counts(self, value_set_id: str, value: Any) -> bool:
        """For value sets read only at or above a threshold (`Source.read_at_or_above`)."""
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
        for value_set_id, plan in self._plans.items():
            days = plan.lookback_days(thresholds)
            if days is not None and "Observation" in plan.resource_types:  # only Observations are dated here
                clone._cutoffs[value_set_id] = (now - timedelta(days=days)).date().isoformat()
            if plan.contrast_only and not contrast_ordered:
                clone._cutoffs[value_set_id] = "9999-12-31"  # nothing is recent enough: not read
            if plan.floor:
                clone._floors[value_set_id] = float(getattr(thresholds, plan.floor))
        return clone

    def reads(
        self, resource_type: str, matches: Matches, when: str | None = None, value: Any = None
    ) -> frozenset[str] | None:
        """The elements the rules read from this resource, given its `matches` (EVERYTHING when a
        value set does not narrow them); CHECKED when it matched but cannot change a decision; None
        when the rules do not read it at all."""
        read = self._read_from.get(resource_type)
        if read is None:
            return None
        elements: frozenset[str] | None = None
        for value_set_id in matches:
            if value_set_id not in read:
                continue
            cutoff = self._cutoffs.get(value_set_id)
            # ISO dates compare as strings; an undated resource is always read
            if cutoff is None or when is None or when[:10] >= cutoff:
                if not self._value_counts(value_set_id, value):
                    elements = CHECKED if elements is None else elements
                    continue
                narrowed = self._elements.get(value_set_id, EVERYTHING)
                elements = narrowed if elements is None else elements | narrowed
        return elements
