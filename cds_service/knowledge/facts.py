"""Facts the rules read, taken from the patient record, the draft order and a clock.

A fact is one declaration (fact_table.py): its name, the sources it reads (which resource type
and element, which value sets, which look-back window, which status policy) and, for the few
facts that combine others, a `derive` step. This module is the engine that reads them; the
prefetch reading list (reading_list.py) and the CLI's fact listing are derived from the same
declarations. Each fact carries its evidence (which resource, which code, which date) so that a
card can say exactly what it rests on. Pure functions: no I/O, no globals.

Conventions (the clinical specification, sections 6 and 7):
* a Condition counts as active unless its clinicalStatus is inactive, remission or resolved;
  history codes (Z85 cancer history, Z98.1 arthrodesis status...) count as history whatever
  their clinical status (statuses.py holds every status rule);
* a finding is "new" when its onset (else recordedDate) falls in the current episode or within
  the red-flag window; an undated finding counts as new (the safe reading);
* dates come from onset[x] (else recordedDate) for Conditions, effective[x] (else issued) for
  Observations, authoredOn or occurrence[x] for ServiceRequests, performed[x] for Procedures.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from ..configuration import Thresholds
from .code_index import CodeIndex, Matches
from .fhir_values import age_on, concept_label, resource_date
from .orders import OrderedStudy
from .statuses import SUSPECTED, StatusPolicy, counts, verification
from .value_sets import ValueSet


@dataclass(frozen=True)
class Evidence:
    """One resource a fact rests on, in the words a card can show."""

    resource_type: str
    id: str | None
    label: str
    when: date | None = None
    value: str | None = None
    number: float | None = field(default=None, compare=False)  # the value as a number, for comparisons
    source: str | None = None  # where the chart records it: "problem list", "order reason", ...

    def describe(self) -> str:
        parts = [self.label]
        if self.value:
            parts.append(self.value)
        text = ": ".join(parts)
        where = ", ".join(filter(None, [self.source, self.when.isoformat() if self.when else None]))
        return f"{text} ({where})" if where else text


# --- declarations -------------------------------------------------------------------------------


class Element(enum.Enum):
    """What a source reads: a resource type and the element that carries the code."""

    CONDITION_CODE = ("Condition", "code")  # every category: problem list, encounter diagnosis, health concern
    OBSERVATION_CODE = ("Observation", "code")
    OBSERVATION_VALUE = ("Observation", "valueCodeableConcept")  # a finding recorded as an Observation's answer
    REQUEST_CODE = ("ServiceRequest", "code")  # other orders in the chart (not the one under review)
    PROCEDURE_CODE = ("Procedure", "code")
    MEDICATION_REQUEST = ("MedicationRequest", "medicationCodeableConcept")
    MEDICATION_STATEMENT = ("MedicationStatement", "medicationCodeableConcept")
    REPORT_CODE = ("DiagnosticReport", "code")
    IMAGING_STUDY = ("ImagingStudy", "*")  # every study; `keep` judges it
    DEVICE = ("Device", "*")  # every current device; `keep` judges it
    ORDER_REASON = ("ServiceRequest", "reasonCode")  # the draft order under review
    ORDER_REASON_REFERENCE = ("Condition", "reasonReference")  # Conditions the draft order names as its reason

    @property
    def resource_type(self) -> str:
        return self.value[0]

    @property
    def from_record(self) -> bool:
        """Read from the patient record (and so from prefetch), rather than from the draft order."""
        return self is not Element.ORDER_REASON

    @property
    def where(self) -> str:
        return _WHERE[self]


_WHERE = {
    Element.CONDITION_CODE: "condition",
    Element.OBSERVATION_CODE: "observation",
    Element.OBSERVATION_VALUE: "observation",
    Element.REQUEST_CODE: "order",
    Element.PROCEDURE_CODE: "procedure",
    Element.MEDICATION_REQUEST: "prescription",
    Element.MEDICATION_STATEMENT: "medication reported",
    Element.REPORT_CODE: "radiology report",
    Element.IMAGING_STUDY: "imaging study",
    Element.DEVICE: "device",
    Element.ORDER_REASON: "order reason",
    Element.ORDER_REASON_REFERENCE: "order reason",
}
_CONDITION_CATEGORIES = {
    "problem-list-item": "problem list",
    "encounter-diagnosis": "encounter diagnosis",
    "health-concern": "health concern",
}


class Window(enum.Enum):
    """Which dates count. An undated resource always counts (the safe reading), unless `dated_only`."""

    ANY = "any"
    NEW = "new"  # in the current episode or within red_flag_recent_days of now
    EPISODE = "episode"  # on or after the episode's start (any date when the start is unknown)
    LOOKBACK = "lookback"  # within `lookback` days of now


# Elements every typed Observation keeps: identity, status, code and dates.
OBSERVATION_BASE = ("id", "status", "code", "effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued")


@dataclass(frozen=True)
class Match:
    """One resource whose code is in a source's value set, handed to the source's `keep`."""

    resource_type: str
    resource: Any
    concept: Any  # the CodeableConcept that matched (None for DEVICE sources)
    value_set: ValueSet | None
    when: date | None
    context: FactContext
    element: Element

    def evidence(self, label: str | None = None, value: str | None = None, number: float | None = None) -> Evidence:
        shown = label if label is not None else concept_label(self.concept, self.value_set)
        return Evidence(self.resource_type, getattr(self.resource, "id", None), shown, self.when, value, number,
                        self.where())  # fmt: skip

    def where(self) -> str:
        """Where the chart records it, in a clinician's words: "problem list, provisional"."""
        where = self.element.where
        if self.resource_type == "Condition" and self.element is Element.CONDITION_CODE:
            categories = [c.code for concept in (self.resource.category or []) for c in (concept.coding or [])]
            where = next((_CONDITION_CATEGORIES[c] for c in categories if c in _CONDITION_CATEGORIES), where)
        if self.resource_type == "Condition" and verification(self.resource) in SUSPECTED:
            where += f", {verification(self.resource)}"
        return where


Keep = Callable[[Match], "Evidence | None"]


@dataclass(frozen=True)
class Source:
    """Where a fact is recorded: the resources of one element matched against value sets."""

    element: Element
    value_sets: tuple[str, ...] = ()
    window: Window = Window.ANY
    lookback: str | int | None = None  # LOOKBACK: days, or the name of a Thresholds field
    lead: str | None = None  # NEW: days before the episode began that still count (a Thresholds field)
    status: StatusPolicy = StatusPolicy.CURRENT
    dated_only: bool = False  # an undated resource does not count
    keep: Keep | None = None  # a further test (a value, a body site): the evidence to record, or None
    # for the prefetch reading list (Observations): the value elements read, beyond OBSERVATION_BASE
    values: tuple[str, ...] | None = None
    read_at_or_above: str | None = None  # a Thresholds field: lower values cannot change a decision
    contrast_orders_only: bool = False  # read only when a contrast study is ordered

    def lookback_days(self, thresholds: Thresholds) -> int | None:
        if self.lookback is None:
            return None
        return self.lookback if isinstance(self.lookback, int) else int(getattr(thresholds, self.lookback))


Derive = Callable[["FactContext", list[Evidence]], list[Evidence]]


@dataclass(frozen=True)
class Fact:
    """One fact: the evidence found in its sources, then (optionally) combined by `derive`."""

    name: str
    about: str
    sources: tuple[Source, ...] = ()
    derive: Derive | None = None


def conditions(*value_sets: str, **options: Any) -> Source:
    return Source(Element.CONDITION_CODE, value_sets, **options)


def observations(*value_sets: str, **options: Any) -> Source:
    return Source(Element.OBSERVATION_CODE, value_sets, **options)


def orders_and_procedures(*value_sets: str, **options: Any) -> tuple[Source, Source]:
    return Source(Element.REQUEST_CODE, value_sets, **options), Source(Element.PROCEDURE_CODE, value_sets, **options)


# --- the facts of one order ---------------------------------------------------------------------


@dataclass
class Facts:
    """What the rules know about one order: scalars, and the evidence of every declared fact by name
    (`facts.cauda_equina` is the list of evidence for the fact "cauda_equina")."""

    now: datetime
    age: int | None = None
    study: OrderedStudy | None = None
    evidence: dict[str, list[Evidence]] = field(default_factory=dict)
    looked_at: dict[str, int] = field(default_factory=dict)  # what was looked at, for the deferral card
    unavailable: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> list[Evidence]:
        evidence = self.__dict__.get("evidence")
        if evidence is not None and name in evidence:
            return evidence[name]
        raise AttributeError(f"no fact named {name!r}")

    @property
    def episode_start(self) -> date | None:
        """The earliest dated back-pain, sciatica or related Condition: the current episode's start."""
        starts = [e.when for e in self.evidence.get("indication", ()) if e.resource_type == "Condition" and e.when]
        return min(starts) if starts else None

    @property
    def episode_days(self) -> int | None:
        start = self.episode_start
        return None if start is None else (self.now.date() - start).days

    @property
    def surgery_date(self) -> date | None:
        dates = [e.when for e in self.evidence.get("lumbar_surgery", ()) if e.resource_type == "Procedure" and e.when]
        return max(dates) if dates else None

    @property
    def care_start(self) -> date | None:
        dates = [e.when for e in self.evidence.get("conservative_care", ()) if e.when]
        return min(dates) if dates else None

    def recorded(self) -> Iterator[tuple[str, list[Evidence]]]:
        """Every fact that is set, in declaration order (for the CLI and reviewers)."""
        return ((name, found) for name, found in self.evidence.items() if found)


@dataclass(frozen=True)
class FactContext:
    """What a `keep` or `derive` step may look at."""

    record: Any
    order: Mapping[str, Any]  # the draft order as the client sent it
    order_model: Any  # its typed R4B model (reasons), or None
    facts: Facts  # the facts read so far (declaration order)
    value_sets: Mapping[str, ValueSet]
    thresholds: Thresholds
    today: date


# --- reading ------------------------------------------------------------------------------------


Candidate = tuple[Any, Any, Matches]  # a resource, the concept a source reads, its value sets


class FactReader:
    """Builds Facts from a PatientRecord for one order, walking the fact declarations in order.

    Each element's candidates are listed once per order with the value sets their concept falls
    in (the record scan's matches where it kept them, else the code index), so a source tests
    its value sets by dict lookup."""

    def __init__(
        self,
        value_sets: Mapping[str, ValueSet],
        thresholds: Thresholds,
        now: datetime,
        facts: Sequence[Fact],
        index: CodeIndex | None = None,
        sources: Mapping[str, tuple[Source, ...]] | None = None,
    ) -> None:
        self.vs = value_sets
        self.t = thresholds
        self.now = now
        self.today = now.date()
        self.declarations = facts
        self.index = index or CodeIndex(value_sets)
        self.sources = sources or sources_by_type(facts)

    def read(self, record: Any, order: Mapping[str, Any], order_model: Any, study: OrderedStudy) -> Facts:
        facts = Facts(now=self.now, study=study)
        facts.age = age_on(record.patient.birthDate, self.today) if record.patient else None
        facts.looked_at = {
            "conditions": len(record.conditions),
            "observations": len(record.observations) + record.checked,
            "orders": _matched(record, "ServiceRequest"),
            "procedures": len(record.procedures),
            "devices": len(record.devices),
            "medicines": _matched(record, "MedicationRequest") + _matched(record, "MedicationStatement"),
            "imaging": _matched(record, "DiagnosticReport") + _matched(record, "ImagingStudy"),
        }
        facts.unavailable = list(record.unavailable)
        context = FactContext(record, order, order_model, facts, self.vs, self.t, self.today)
        candidates: dict[Element, list[Candidate]] = {}
        for fact in self.declarations:
            found: list[Evidence] = []
            for source in fact.sources:
                listed = candidates.get(source.element)
                if listed is None:
                    self._type_deferred(record, source.element.resource_type, facts)
                    listed = candidates[source.element] = self._candidates(source.element, context)
                if listed:
                    found.extend(self._read_source(source, context, listed))
            found = _unique(found)
            facts.evidence[fact.name] = fact.derive(context, found) if fact.derive else found
        return facts

    def _type_deferred(self, record: Any, resource_type: str, facts: Facts) -> None:
        """Resources the record defers (read only within windows of dates) are typed when first asked
        for: those dated from the day before the earliest window of their type begins (a margin),
        or undated; all of them when a window's start is unknown."""
        type_deferred = getattr(record, "type_deferred", None)
        if type_deferred is not None and getattr(record, "deferred", None):
            since = self._earliest_start(resource_type, facts)
            type_deferred(resource_type, since - timedelta(days=1) if since is not None else None)

    def _earliest_start(self, resource_type: str, facts: Facts) -> date | None:
        starts = []
        for source in self.sources.get(resource_type, ()):
            lookback = source.lookback_days(self.t)
            if source.window is Window.EPISODE and facts.episode_start is not None:
                starts.append(facts.episode_start)
            elif source.window is Window.LOOKBACK and lookback is not None:
                starts.append(self.today - timedelta(days=lookback))
            else:
                return None  # some source reads any date, or its episode's start is unknown
        return min(starts) if starts else None

    def _read_source(self, source: Source, context: FactContext, candidates: list[Candidate]) -> Iterator[Evidence]:
        resource_type = source.element.resource_type
        days = source.lookback_days(self.t)
        earliest = self.today - timedelta(days=days) if days is not None else None
        for resource, concept, matches in candidates:
            value_set, coding = None, None
            if source.value_sets:
                value_set_id = next((v for v in source.value_sets if v in matches), None)
                if value_set_id is None:
                    continue
                value_set, coding = self.vs[value_set_id], matches[value_set_id]
            is_history = (
                coding is not None and value_set is not None and value_set.role(coding.system, coding.code) == "history"
            )
            if not counts(resource_type, resource, source.status, is_history):
                continue
            when = resource_date(resource_type, resource) if source.element.from_record else None
            if when is None and source.dated_only:
                continue
            if not self._in_window(source, context.facts, when, earliest):
                continue
            match = Match(resource_type, resource, concept, value_set, when, context, source.element)
            evidence = source.keep(match) if source.keep else match.evidence()
            if evidence is not None:
                yield evidence

    def _candidates(self, element: Element, context: FactContext) -> list[Candidate]:
        return [(resource, concept, self._matches(element, resource, concept, context.record))
                for resource, concept in self._concepts(element, context)]  # fmt: skip

    def _matches(self, element: Element, resource: Any, concept: Any, record: Any) -> Matches:
        if concept is None:
            return {}
        if element not in (Element.ORDER_REASON, Element.OBSERVATION_VALUE):  # the element the scan matched
            scanned = getattr(record, "code_matches", {}).get(id(resource))
            if scanned is not None:
                return scanned
        text = " ".join(filter(None, [getattr(concept, "text", None), *(c.display for c in _codings(concept))]))
        return self.index.matches(_codings(concept), text)

    @staticmethod
    def _concepts(element: Element, context: FactContext) -> Iterator[tuple[Any, Any]]:
        model = context.order_model
        if element is Element.ORDER_REASON:
            for reason in (model.reasonCode or []) if model is not None else []:
                yield model, reason
            return
        if element is Element.ORDER_REASON_REFERENCE:
            named = named_reasons(model)
            for condition in context.record.conditions:
                if condition.id in named:
                    yield condition, condition.code
            return
        order_id = context.order.get("id")
        for resource in context.record.resources[element.resource_type]:
            if element is Element.REQUEST_CODE and resource.id == order_id:
                continue  # the order under review is not its own history
            if element is Element.OBSERVATION_VALUE:
                if resource.valueCodeableConcept is not None:
                    yield resource, resource.valueCodeableConcept
                continue
            yield resource, getattr(resource, element.value[1], None) if element.value[1] != "*" else None

    def _in_window(self, source: Source, facts: Facts, when: date | None, earliest: date | None) -> bool:
        if when is None or source.window is Window.ANY:
            return True
        if source.window is Window.LOOKBACK:
            return earliest is None or when >= earliest
        start = facts.episode_start
        if source.window is Window.EPISODE:
            return start is None or when >= start
        # NEW: in the current episode, or recent; `lead` also admits what came shortly before the
        # episode began (an injury precedes the pain it causes)
        lead = int(getattr(self.t, source.lead)) if source.lead else 0
        recent = self.today - timedelta(days=self.t.red_flag_recent_days)
        return when >= recent or (start is not None and when >= start - timedelta(days=lead))


def sources_by_type(facts: Sequence[Fact]) -> dict[str, tuple[Source, ...]]:
    """Per resource type of the record, every fact source that reads it."""
    found: dict[str, list[Source]] = {}
    for fact in facts:
        for source in fact.sources:
            if source.element.from_record:
                found.setdefault(source.element.resource_type, []).append(source)
    return {name: tuple(sources) for name, sources in found.items()}


def window_bounded(sources: tuple[Source, ...]) -> bool:
    """Every source reads only within a window that begins somewhere (the episode, a look-back)."""
    return all(source.window in (Window.EPISODE, Window.LOOKBACK) for source in sources)


def _matched(record: Any, resource_type: str) -> int:
    matched = getattr(record, "matched", None)
    return matched(resource_type) if matched is not None else len(record.resources[resource_type])


def named_reasons(order_model: Any) -> set[str]:
    """The ids of the resources a draft order names as its reason (reasonReference). A reference
    with only a display or an identifier names none."""
    if order_model is None:
        return set()
    return {str(ref.reference).split("/_history/")[0].split("/")[-1]
            for ref in (order_model.reasonReference or []) if ref.reference}  # fmt: skip


def _codings(concept: Any) -> list[Any]:
    return list(getattr(concept, "coding", None) or [])


def _unique(found: list[Evidence]) -> list[Evidence]:
    """One entry per resource and label: a Condition the order names is also on the problem list."""
    seen: set[tuple[str, str | None, str]] = set()
    kept = []
    for evidence in found:
        key = (evidence.resource_type, evidence.id, evidence.label)
        if key not in seen:
            seen.add(key)
            kept.append(evidence)
    return kept
