"""The patient record: the request's prefetch, completed from the EHR's FHIR server.

Per prefetch key (CDS Hooks 2.0, "Prefetch Template"):
  present        -> used (a searchset's `next` pages are fetched too)
  `null`         -> the query ran and found nothing
  absent, or an OperationOutcome -> fetched from fhirServer with fhirAuthorization, if allowed
When a key can be had neither way, the service's failure policy decides: FAIL (412) or OMIT.

Speed: every resource is decoded once into a slim wire struct (protocol/fhir.py); only the
resources the rules read (the reading list) are then given typed R4B models (fhir_models.py).
Resources that never count (knowledge/statuses.py) and resources of another patient are dropped
here, before any rule sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import msgspec
import orjson

from .configuration import PrefetchFailurePolicy, Settings
from .fhir_client import ConnectionPools, FetchResult, FhirClient, is_allowed
from .fhir_models import EVERYTHING, projection, typed_model
from .knowledge.code_index import Matches
from .knowledge.fhir_values import resource_date
from .knowledge.reading_list import ReadingList
from .knowledge.statuses import status_counts
from .protocol import CdsError, HookRequest
from .protocol.fhir import NULL, UNSET, ConceptStruct, MalformedData, WireResource, decode_value
from .resource_types import BUCKETS, RESOURCE_TYPES, ResourceType
from .services import ServiceDefinition, render_template

log = logging.getLogger(__name__)
ClientFactory = Callable[..., FhirClient]


@dataclass
class Deferred:
    """A resource the reading list matched, of a type facts read only within a window of dates (the
    current episode, a look-back): typed when the facts ask for it (`PatientRecord.type_deferred`),
    unless it is dated before every window. Code that reads such a bucket itself types it first."""

    data: dict[str, Any]  # its projection, ready for the R4B model
    matches: Matches | None
    when: date | None  # as the facts will date it (the same date readers, on the projection)


class _JsonView:
    """Attribute access to projected JSON as the typed model gives it (absent: None), so that the
    facts' own date readers (fhir_values.DATE_OF) date a resource before it is typed."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        value = self._data.get(name)
        return _JsonView(value) if isinstance(value, dict) else value


@dataclass
class PatientRecord:
    """The typed resources the rules read, one list per resource type (RESOURCE_TYPES' buckets:
    `record.conditions`, `record.observations`, ...), and how each prefetch key was obtained."""

    patient_id: str
    patient: Any | None = None  # fhir.resources R4B Patient
    resources: dict[str, list[Any]] = field(default_factory=lambda: {name: [] for name in RESOURCE_TYPES})
    # prefetch key -> "prefetch" | "fetched" | "empty" | "unavailable"
    sources: dict[str, str] = field(default_factory=dict)
    data_quality: list[str] = field(default_factory=list)  # no values, only what was repaired or dropped
    seen: int = 0  # resources decoded
    kept: int = 0  # resources given typed models
    checked: int = 0  # matched the reading list, looked at, but could not change a decision (not typed)
    ids: set[tuple[str, str]] = field(default_factory=set)  # (type, id) kept: each resource is read once
    # id(model) -> the value sets its code falls in, as the scan found them: the facts reuse them
    code_matches: dict[int, Matches] = field(default_factory=dict)
    deferred: dict[str, list[Deferred]] = field(default_factory=dict)  # by resource type, in scan order

    def __getattr__(self, bucket: str) -> list[Any]:
        entry = BUCKETS.get(bucket)
        if entry is None:
            raise AttributeError(bucket)
        resources: dict[str, list[Any]] = self.__dict__["resources"]
        return resources[entry.name]

    @property
    def fallback_used(self) -> bool:
        return "fetched" in self.sources.values()

    @property
    def unavailable(self) -> list[str]:
        return [key for key, source in self.sources.items() if source == "unavailable"]

    def add(self, resource_type: str, model: Any, matches: Matches | None = None) -> None:
        if resource_type == "Patient":
            self.kept += 1
            self.patient = model
            return
        if self._first_read(resource_type, model.get("id") if isinstance(model, dict) else model.id):
            self._keep(resource_type, model, matches)

    def _first_read(self, resource_type: str, resource_id: Any) -> bool:
        """False for a resource read already: the same one from two searches (observations and
        findings) is read once. Resources without an id are all read."""
        if resource_id is None:
            return True
        key = (resource_type, resource_id)
        if key in self.ids:
            return False
        self.ids.add(key)
        return True

    def _keep(self, resource_type: str, model: Any, matches: Matches | None) -> None:
        self.kept += 1
        self.resources[resource_type].append(model)
        if matches is not None:
            self.code_matches[id(model)] = matches

    def type_and_add(
        self, resource_type: str, data: dict[str, Any], matches: Matches | None, *, read: bool = False
    ) -> None:
        """Give `data` (a projection) its R4B model and keep it; `read`: its id is registered already."""
        notes = len(self.data_quality)
        model = typed_model(resource_type, data, self.patient_id, self.data_quality)
        if model is None:
            return
        # a repaired model may have lost the coded element the scan matched: the facts match it again
        matches = matches if len(self.data_quality) == notes else None
        if read:
            self._keep(resource_type, model, matches)
        else:
            self.add(resource_type, model, matches)

    def defer(self, resource_type: str, entry: Deferred) -> None:
        resource_id = entry.data.get("id")
        if self._first_read(resource_type, resource_id if isinstance(resource_id, str) else None):
            self.deferred.setdefault(resource_type, []).append(entry)

    def matched(self, resource_type: str) -> int:
        """The resources of this type the rules read: typed, or waiting to be (`deferred`)."""
        return len(self.resources[resource_type]) + len(self.deferred.get(resource_type, ()))

    def type_deferred(self, resource_type: str, since: date | None) -> None:
        """Type the deferred resources dated on or after `since`, or undated (all of them when `since`
        is None); the others cannot count and stay as they are."""
        waiting = self.deferred.get(resource_type)
        if not waiting:
            return
        still = []
        for entry in waiting:
            if since is not None and entry.when is not None and entry.when < since:
                still.append(entry)
                continue
            self.type_and_add(resource_type, entry.data, entry.matches, read=True)  # its id: at `defer`
        self.deferred[resource_type] = still

    def merge(self, part: PatientRecord) -> None:
        """Add what a fetching thread read from one page."""
        if part.patient is not None:
            self.add("Patient", part.patient)
        for name, models in part.resources.items():
            for model in models:
                self.add(name, model, part.code_matches.get(id(model)))
        for name, entries in part.deferred.items():
            for entry in entries:
                self.defer(name, entry)
        self.data_quality += part.data_quality
        self.seen += part.seen
        self.checked += part.checked


def build_record(
    request: HookRequest,
    service: ServiceDefinition,
    settings: Settings,
    reading_list: ReadingList,
    client_factory: ClientFactory = FhirClient,
    sessions: ConnectionPools | None = None,
) -> PatientRecord:
    """The patient record for `request`; raises CdsError(400 or 412) when it cannot be built."""
    record = PatientRecord(patient_id=request.context.patientId)
    prefetch = request.prefetch or {}
    bodies: dict[str, list[WireResource | PatientRecord]] = {}  # prefetch values; pages already read
    to_fetch: dict[str, str] = {}
    missing: dict[str, str] = {}  # key -> why its data cannot be had
    context = msgspec.structs.asdict(request.context)

    for key, template in service.prefetch.items():
        present = key in prefetch
        raw = prefetch.get(key)
        if present:
            if raw is None or raw == NULL:
                record.sources[key] = "empty"
                continue
            try:
                value = raw if isinstance(raw, WireResource) else decode_value(raw)
                if not value.resourceType:
                    raise MalformedData("", "not a FHIR resource (no resourceType)")
            except MalformedData as bad:
                where = f"prefetch.{key}{bad.where}"
                raise CdsError(400, f"Invalid prefetch data at {where}: {bad.message}", expression=[where]) from None
            if value.resourceType != "OperationOutcome":
                bodies[key] = [value]
                record.sources[key] = "prefetch"
                next_url = value.next_url()
                if next_url is not None:
                    to_fetch[key] = next_url  # the client paginated its prefetch: fetch the rest
                continue
            # an OperationOutcome: the client could not run the query; try it ourselves
        query = render_template(template, context)
        if query is None:
            # a token the context does not carry (no encounterId): there is no such resource to read
            record.sources[key] = "empty"
        else:
            to_fetch[key] = query

    if to_fetch:
        reader = _page_reader(reading_list, record.patient_id)
        fetched, failures = _fetch(request, settings, to_fetch, client_factory, sessions, reader)
        for key, result in fetched.items():
            bodies.setdefault(key, []).extend(result.pages)
            record.sources.setdefault(key, "fetched")
        missing.update(failures)
    for key in missing:
        bodies.pop(key, None)  # incomplete data is no data: a missing page may hold the red flag
    _apply_failure_policy(service, missing, record)

    for values in bodies.values():
        for body in values:
            if isinstance(body, PatientRecord):
                record.merge(body)
            elif body.resourceType != "OperationOutcome":
                _read_value(body, record, reading_list)
    return record


def _page_reader(reading_list: ReadingList, patient_id: str) -> Callable[[bytes], tuple[PatientRecord, str | None]]:
    """Reads a FHIR server's answer in the fetching thread, while other keys still wait on the
    network: decoded once, the resources the rules read typed, and its `next` link."""

    def read(body: bytes) -> tuple[PatientRecord, str | None]:
        try:
            value = decode_value(body)
        except MalformedData as bad:
            raise ValueError(bad.message) from None
        part = PatientRecord(patient_id=patient_id)
        if value.resourceType != "OperationOutcome":
            _read_value(value, part, reading_list)
        return part, value.next_url()

    return read


def _fetch(
    request: HookRequest,
    settings: Settings,
    queries: dict[str, str],
    client_factory: ClientFactory,
    sessions: ConnectionPools | None,
    reader: Callable[[bytes], tuple[Any, str | None]],
) -> tuple[dict[str, FetchResult], dict[str, str]]:
    if not request.fhirServer:
        return {}, {key: "the request has no fhirServer to fetch it from" for key in queries}
    if request.fhirAuthorization is None:
        return {}, {key: "the request has no fhirAuthorization for fetching it" for key in queries}
    if not is_allowed(request.fhirServer, settings.fhir_server_allowlist):
        log.warning("fhir fallback refused: fhirServer is not on CDS_FHIR_SERVER_ALLOWLIST")
        return {}, {key: "the fhirServer is not on this service's allowlist" for key in queries}
    client = client_factory(
        request.fhirServer,
        request.fhirAuthorization.access_token,
        allowlist=settings.fhir_server_allowlist,
        budget_seconds=settings.fhir_budget_seconds,
        max_pages=settings.fhir_max_pages,
        max_response_bytes=settings.fhir_max_response_bytes,
        pools=sessions,
        parse=reader,
    )
    return client.fetch_all(queries)


def _apply_failure_policy(service: ServiceDefinition, missing: dict[str, str], record: PatientRecord) -> None:
    fatal = {key: reason for key, reason in missing.items() if service.policy_for(key) is PrefetchFailurePolicy.FAIL}
    for key in missing:
        record.sources[key] = "unavailable"
    if fatal:
        keys = sorted(fatal)
        issues = [
            {"severity": "error", "code": "not-found", "diagnostics": f"{key}: {fatal[key]}", "expression": [key]}
            for key in keys
        ]
        raise CdsError(
            412,
            "Patient data needed for this decision could not be obtained from prefetch or the FHIR server: "
            + ", ".join(keys),
            code="not-found",
            expression=keys,
            issues=issues,
        )


def _read_value(value: WireResource, record: PatientRecord, reading_list: ReadingList) -> None:
    if value.resourceType != "Bundle":
        _read_resource(value, record, reading_list)
        return
    # the loop every resource of a large chart goes through: most are read by no rule, so the test
    # that says so (_elements_read) is kept apart from reading the few that are
    seen = checked = 0
    for entry in value.entry:
        resource = entry.resource
        if resource is None or (entry.search is not None and entry.search.mode == "outcome"):
            continue  # e.g. "parameter ignored" warnings that servers put inside searchsets
        kind = RESOURCE_TYPES.get(resource.resourceType)
        if kind is None:
            continue
        seen += 1
        elements, matches = _elements_read(kind, resource, reading_list)
        if elements:
            _read_selected(kind, resource, elements, matches, record, reading_list)
        elif elements is not None:
            checked += 1
    record.seen += seen
    record.checked += checked


def _read_resource(resource: WireResource, record: PatientRecord, reading_list: ReadingList) -> None:
    kind = RESOURCE_TYPES.get(resource.resourceType)
    if kind is None:
        return
    record.seen += 1
    elements, matches = _elements_read(kind, resource, reading_list)
    if elements:
        _read_selected(kind, resource, elements, matches, record, reading_list)
    elif elements is not None:
        record.checked += 1


def _elements_read(
    kind: ResourceType, resource: WireResource, reading_list: ReadingList
) -> tuple[frozenset[str] | None, Matches | None]:
    """The elements the rules read from `resource` (None: it is not read; empty: looked at, but it
    cannot change a decision), and the value sets its code falls in."""
    if resource.status is not None and not status_counts(kind.name, resource.status):
        return None, None
    element = kind.code_element
    if element is None:
        return EVERYTHING, None
    concept = resource.code if element == "code" else resource.medicationCodeableConcept
    if concept is None:
        matches: Matches = {}
    else:
        text = resource.concept_text(element) if reading_list.reads_by_name(kind.name) else None
        matches = reading_list.index.matches(concept.coding, text)
    if kind.name != "Observation":
        return (reading_list.reads(kind.name, matches) if matches else None), matches
    elements = reading_list.reads(kind.name, matches, resource.when, resource.valueQuantity) if matches else None
    if elements is None and resource.valueCodeableConcept is not UNSET:
        answer = reading_list.index.matches(_answer_codings(resource.valueCodeableConcept))
        elements = reading_list.reads(kind.name, answer, resource.when)
    return elements, matches


def _read_selected(
    kind: ResourceType,
    resource: WireResource,
    elements: frozenset[str],
    matches: Matches | None,
    record: PatientRecord,
    reading_list: ReadingList,
) -> None:
    """A resource the rules read: projected, checked, then typed (or deferred to its windows)."""
    try:
        data = projection(resource, elements)
    except orjson.JSONDecodeError:  # cannot happen for JSON msgspec has scanned; never crash on it
        record.data_quality.append(f"{kind.name}: could not be read and was ignored")
        return
    if any(_has_code(data.get(element), codes) for element, codes in kind.never_count.items() if element != "status"):
        return
    if not _belongs_to(kind.name, kind.patient_element, data, record.patient_id):
        record.data_quality.append(f"{kind.name} for another patient ignored")
        return
    if kind.slim is not None:
        data = kind.slim(data)
    if kind.name in reading_list.window_bounded:  # typed once the facts know where their windows begin
        record.defer(kind.name, Deferred(data, matches, resource_date(kind.name, _JsonView(data))))
        return
    record.type_and_add(kind.name, data, matches)


_concept_decoder = msgspec.json.Decoder(ConceptStruct)


def _answer_codings(raw: Any) -> list[Any]:
    """An Observation's valueCodeableConcept codings (a finding recorded as an answer), or none."""
    try:
        return _concept_decoder.decode(raw).coding if isinstance(raw, msgspec.Raw) else []
    except msgspec.DecodeError:
        return []  # an odd shape: not a finding the rules can read


def _has_code(concept: Any, codes: frozenset[str]) -> bool:
    if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
        return False
    # a code that is not a string (a list, an object) is no status code, and must not crash the set lookup
    return any(isinstance(c, dict) and isinstance(c.get("code"), str) and c["code"] in codes for c in concept["coding"])


def _referenced_patient(reference: Any) -> str | None:
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient":
        return parts[-1]
    return None


def _belongs_to(resource_type: str, element: str | None, data: dict[str, Any], patient_id: str) -> bool:
    if element is None:  # the Patient itself
        return data.get("id") in (None, patient_id)
    other = _referenced_patient(data.get(element))
    return other is None or other == patient_id
