"""Patient data: the request's prefetch, completed from the EHR's FHIR server, as one PatientRecord.

Per prefetch key (CDS Hooks 2.0, "Prefetch Template"):
  present        -> used (a searchset's `next` pages are fetched too)
  `null`         -> the query ran and found nothing
  absent, or an OperationOutcome -> fetched from fhirServer with fhirAuthorization, if allowed
When a key can be had neither way, the service's failure policy decides: FAIL (412) or OMIT.

Speed: every resource is decoded once into a slim msgspec struct (type, status, code, subject);
only the resources the rules read (the reading list) are then given typed fhir.resources R4B
models. Entered-in-error and refuted resources, and resources of another patient, are dropped here.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import orjson
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from .configuration import PrefetchFailurePolicy, Settings
from .fhir_client import ConnectionPools, FetchResult, FhirClient, is_allowed
from .protocol import CdsError, HookRequest, decode, describe_decode_error
from .services import ServiceDefinition, render_template

log = logging.getLogger(__name__)

MODELS: dict[str, type] = {
    "Patient": Patient,
    "Condition": Condition,
    "Observation": Observation,
    "ServiceRequest": ServiceRequest,
    "Procedure": Procedure,
    "Device": Device,
}


# --- slim view: one typed pass over each prefetch value ----------------------------------------
# Only what selection needs is typed (type, id, status, code, dates). Every element a rule may read
# is kept as raw JSON, decoded only for the few resources that are read. Fields whose type differs
# between FHIR resource types stay raw, so an _include'd Encounter cannot break the decode.

_Unset = msgspec.UnsetType
UNSET = msgspec.UNSET


class SlimCoding(msgspec.Struct, frozen=True, omit_defaults=True):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class _Concept(msgspec.Struct, omit_defaults=True):
    coding: list[SlimCoding] = []
    text: str | None = None


class _Period(msgspec.Struct, omit_defaults=True):
    start: str | None = None


class _Search(msgspec.Struct):
    mode: str | None = None


class _Link(msgspec.Struct):
    relation: str = ""
    url: str = ""


class _Entry(msgspec.Struct):
    resource: _Resource | None = None
    search: _Search | None = None


class _Resource(msgspec.Struct):
    resourceType: str = ""
    id: str | None = None
    status: str | None = None
    code: _Concept | None = None
    effectiveDateTime: str | None = None
    effectiveInstant: str | None = None
    effectivePeriod: _Period | None = None
    issued: str | None = None
    # a Bundle
    entry: list[_Entry] = []
    link: list[_Link] = []
    # read only when the resource is: see PROJECTION
    subject: msgspec.Raw | _Unset = UNSET
    patient: msgspec.Raw | _Unset = UNSET
    type: msgspec.Raw | _Unset = UNSET
    verificationStatus: msgspec.Raw | _Unset = UNSET
    clinicalStatus: msgspec.Raw | _Unset = UNSET
    category: msgspec.Raw | _Unset = UNSET
    severity: msgspec.Raw | _Unset = UNSET
    bodySite: msgspec.Raw | _Unset = UNSET
    onsetDateTime: msgspec.Raw | _Unset = UNSET
    onsetAge: msgspec.Raw | _Unset = UNSET
    onsetPeriod: msgspec.Raw | _Unset = UNSET
    onsetRange: msgspec.Raw | _Unset = UNSET
    onsetString: msgspec.Raw | _Unset = UNSET
    abatementDateTime: msgspec.Raw | _Unset = UNSET
    abatementAge: msgspec.Raw | _Unset = UNSET
    abatementPeriod: msgspec.Raw | _Unset = UNSET
    abatementRange: msgspec.Raw | _Unset = UNSET
    abatementString: msgspec.Raw | _Unset = UNSET
    abatementBoolean: msgspec.Raw | _Unset = UNSET
    recordedDate: msgspec.Raw | _Unset = UNSET
    note: msgspec.Raw | _Unset = UNSET
    valueQuantity: msgspec.Raw | _Unset = UNSET
    valueCodeableConcept: msgspec.Raw | _Unset = UNSET
    valueString: msgspec.Raw | _Unset = UNSET
    valueBoolean: msgspec.Raw | _Unset = UNSET
    interpretation: msgspec.Raw | _Unset = UNSET
    referenceRange: msgspec.Raw | _Unset = UNSET
    intent: msgspec.Raw | _Unset = UNSET
    priority: msgspec.Raw | _Unset = UNSET
    authoredOn: msgspec.Raw | _Unset = UNSET
    reasonReference: msgspec.Raw | _Unset = UNSET
    occurrenceDateTime: msgspec.Raw | _Unset = UNSET
    occurrencePeriod: msgspec.Raw | _Unset = UNSET
    reasonCode: msgspec.Raw | _Unset = UNSET
    performedDateTime: msgspec.Raw | _Unset = UNSET
    performedPeriod: msgspec.Raw | _Unset = UNSET
    performedString: msgspec.Raw | _Unset = UNSET
    safety: msgspec.Raw | _Unset = UNSET
    deviceName: msgspec.Raw | _Unset = UNSET
    birthDate: msgspec.Raw | _Unset = UNSET
    gender: msgspec.Raw | _Unset = UNSET
    deceasedBoolean: msgspec.Raw | _Unset = UNSET
    deceasedDateTime: msgspec.Raw | _Unset = UNSET

    @property
    def when(self) -> str | None:
        period = self.effectivePeriod.start if self.effectivePeriod else None
        return self.effectiveDateTime or self.effectiveInstant or period or self.issued

    def next_url(self) -> str | None:
        if self.resourceType != "Bundle":
            return None
        return next((link.url for link in self.link if link.relation == "next" and link.url), None)


class _RawEntry(msgspec.Struct):
    resource: msgspec.Raw = msgspec.Raw(b"null")
    search: _Search | None = None


class _RawBundle(msgspec.Struct):
    """The tolerant path: entries kept raw and decoded one by one, so an error has a location."""

    resourceType: str = ""
    entry: list[_RawEntry] = []
    link: list[_Link] = []


_resource_decoder = msgspec.json.Decoder(_Resource)
_raw_bundle_decoder = msgspec.json.Decoder(_RawBundle)
_NULL = msgspec.Raw(b"null")
EVERYTHING = frozenset({"*"})
_READ_TYPES = frozenset({"Patient", "Condition", "Observation", "ServiceRequest", "Procedure", "Device"})
_EXCLUDED_STATUS = {"entered-in-error"}
_EXCLUDED_VERIFICATION = {"entered-in-error", "refuted"}


class ReadingList(Protocol):
    """Which resources the rules read; supplied by the clinical knowledge."""

    def reads(
        self, resource_type: str, codings: Sequence[SlimCoding], when: str | None = None, value: Any = None
    ) -> frozenset[str] | None:
        """The element names the rules read ({"*"} for all of PROJECTION); an empty set when the
        resource was checked but cannot change a decision; None when it is not read at all."""


class PrefetchedHookRequest(HookRequest):
    """The whole request typed in one pass, prefetch included (the fast path for large records)."""

    prefetch: dict[str, _Resource | None] | None = None


_fast_request_decoder = msgspec.json.Decoder(PrefetchedHookRequest)


def decode_hook_request(body: bytes) -> HookRequest:
    """The hook request, with its prefetch decoded in the same pass when it has the usual shape.

    Anything unusual (a malformed resource, an unrelated resource of an odd shape, bad JSON) takes
    the careful path, which answers 400 naming the field or skips what the rules never read."""
    try:
        return _fast_request_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return decode(body, HookRequest)


# --- the record -------------------------------------------------------------------------------


@dataclass
class PatientRecord:
    patient_id: str
    patient: Patient | None = None
    conditions: list[Condition] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    service_requests: list[ServiceRequest] = field(default_factory=list)
    procedures: list[Procedure] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    # prefetch key -> "prefetch" | "fetched" | "empty" | "unavailable"
    sources: dict[str, str] = field(default_factory=dict)
    data_quality: list[str] = field(default_factory=list)  # no values, only what was repaired or dropped
    seen: int = 0  # resources decoded
    kept: int = 0  # resources given typed models
    checked: int = 0  # matched the reading list, looked at, but could not change a decision (not typed)

    @property
    def fallback_used(self) -> bool:
        return "fetched" in self.sources.values()

    @property
    def unavailable(self) -> list[str]:
        return [key for key, source in self.sources.items() if source == "unavailable"]

    def merge(self, part: PatientRecord) -> None:
        """Add what a fetching thread read from one page."""
        self.patient = part.patient or self.patient
        self.conditions += part.conditions
        self.observations += part.observations
        self.service_requests += part.service_requests
        self.procedures += part.procedures
        self.devices += part.devices
        self.data_quality += part.data_quality
        self.seen += part.seen
        self.kept += part.kept
        self.checked += part.checked

    def _bucket(self, resource_type: str) -> list[Any] | None:
        return {
            "Condition": self.conditions,
            "Observation": self.observations,
            "ServiceRequest": self.service_requests,
            "Procedure": self.procedures,
            "Device": self.devices,
        }.get(resource_type)


class MalformedData(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


ClientFactory = Callable[..., FhirClient]


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
    bodies: dict[str, list[_Resource | PatientRecord]] = {}  # prefetch values; pages already read
    to_fetch: dict[str, str] = {}
    missing: dict[str, str] = {}  # key -> why its data cannot be had
    context = msgspec.structs.asdict(request.context)

    for key, template in service.prefetch.items():
        present = key in prefetch
        raw = prefetch.get(key)
        if present:
            if raw is None or raw == _NULL:
                record.sources[key] = "empty"
                continue
            try:
                value = raw if isinstance(raw, _Resource) else decode_value(raw)
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
            missing[key] = "the prefetch template could not be filled from the context"
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
        for value in values:
            if isinstance(value, PatientRecord):
                record.merge(value)
            elif value.resourceType != "OperationOutcome":
                _read_value(value, record, reading_list)
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


def decode_value(raw: bytes | msgspec.Raw) -> _Resource:
    """One prefetch value or FHIR answer: a Bundle or a single resource. Raises MalformedData.

    The fast path types the whole value in one pass. When that fails (a resource we read is
    malformed, or an unrelated one has an unusual shape), entries are decoded one by one so that
    unrelated resources are skipped and a bad one is reported with its location."""
    try:
        value = _resource_decoder.decode(raw)
    except msgspec.DecodeError:
        value = _decode_tolerantly(raw)
    if not value.resourceType:
        raise MalformedData("", "not a FHIR resource (no resourceType)")
    return value


class _TypeOnly(msgspec.Struct):
    resourceType: str = ""


_type_decoder = msgspec.json.Decoder(_TypeOnly)


def _decode_tolerantly(raw: bytes | msgspec.Raw) -> _Resource:
    try:
        bundle = _raw_bundle_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        detail, path = describe_decode_error(exc)
        raise MalformedData(f".{path}" if path and path != "$" else "", detail) from None
    if bundle.resourceType != "Bundle":
        try:
            return _resource_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            detail, path = describe_decode_error(exc)
            raise MalformedData(f".{path}" if path and path != "$" else "", detail) from None
    entries = []
    for index, entry in enumerate(bundle.entry):
        if entry.resource == _NULL:
            continue
        try:
            resource = _resource_decoder.decode(entry.resource)
        except msgspec.DecodeError as exc:
            try:
                resource_type = _type_decoder.decode(entry.resource).resourceType
            except msgspec.DecodeError:
                resource_type = ""
            if resource_type and resource_type not in _READ_TYPES:
                continue  # a resource type the rules never read, in a shape we do not model
            detail, path = describe_decode_error(exc)
            raise MalformedData(
                f".entry[{index}].resource" + (f".{path}" if path and path != "$" else ""), detail
            ) from None
        entries.append(_Entry(resource=resource, search=entry.search))
    return _Resource(resourceType="Bundle", entry=entries, link=bundle.link)


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


def _read_value(value: _Resource, record: PatientRecord, reading_list: ReadingList) -> None:
    if value.resourceType != "Bundle":
        _read_resource(value, record, reading_list)
        return
    for entry in value.entry:
        if entry.resource is None or (entry.search is not None and entry.search.mode == "outcome"):
            continue  # e.g. "parameter ignored" warnings that servers put inside searchsets
        _read_resource(entry.resource, record, reading_list)


def _read_resource(resource: _Resource, record: PatientRecord, reading_list: ReadingList) -> None:
    resource_type = resource.resourceType
    if resource_type not in _READ_TYPES:
        return
    record.seen += 1
    if resource.status in _EXCLUDED_STATUS:
        return
    if resource_type == "Patient":
        elements = EVERYTHING
    else:
        if resource_type == "Observation":
            elements = reading_list.reads(
                resource_type, resource.code.coding if resource.code else (), resource.when, resource.valueQuantity
            )
        else:
            elements = reading_list.reads(resource_type, resource.code.coding if resource.code else ())
        if not elements:
            if elements is not None:
                record.checked += 1
            return
    try:
        data = projection(resource, elements)
    except orjson.JSONDecodeError:  # cannot happen for JSON msgspec has scanned; never crash on it
        record.data_quality.append(f"{resource_type}: could not be read and was ignored")
        return
    if _excluded_verification(data.get("verificationStatus")):
        return
    if not _belongs_to(resource_type, data, record.patient_id):
        record.data_quality.append(f"{resource_type} for another patient ignored")
        return
    for checked in _ALWAYS_PROJECTED:  # used by the checks above; no rule reads them
        data.pop(checked, None)
    model = typed_model(resource_type, data, record.patient_id, record.data_quality)
    if model is None:
        return
    record.kept += 1
    if resource_type == "Patient":
        record.patient = model
    else:
        record._bucket(resource_type).append(model)


def _excluded_verification(concept: Any) -> bool:
    if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
        return False
    return any(isinstance(c, dict) and c.get("code") in _EXCLUDED_VERIFICATION for c in concept["coding"])


def _referenced_patient(reference: Any) -> str | None:
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient":
        return parts[-1]
    return None


def _belongs_to(resource_type: str, data: dict[str, Any], patient_id: str) -> bool:
    if resource_type == "Patient":
        return data.get("id") in (None, patient_id)
    other = _referenced_patient(data.get("patient") if resource_type == "Device" else data.get("subject"))
    return other is None or other == patient_id


# --- typed models, leniently --------------------------------------------------------------------

# The elements the rules read, per resource type. Typing only these keeps a large chart cheap
# (a full Epic lab Observation with contained resources costs ~2 ms in fhir.resources; its
# projection ~0.1 ms) and means a malformed element the rules never read cannot cost a resource.
PROJECTION: dict[str, tuple[str, ...]] = {
    "Patient": ("id", "birthDate", "gender", "deceasedBoolean", "deceasedDateTime"),
    "Condition": (
        "id",
        "clinicalStatus",
        "verificationStatus",
        "severity",
        "code",
        "bodySite",
        "subject",
        "onsetDateTime",
        "onsetAge",
        "onsetPeriod",
        "onsetRange",
        "onsetString",
        "abatementDateTime",
        "abatementAge",
        "abatementPeriod",
        "abatementRange",
        "abatementString",
        "abatementBoolean",
        "recordedDate",
    ),
    "Observation": (
        "id",
        "status",
        "category",
        "code",
        "subject",
        "effectiveDateTime",
        "effectivePeriod",
        "effectiveInstant",
        "issued",
        "valueQuantity",
        "valueCodeableConcept",
        "valueString",
        "valueBoolean",
        "interpretation",
        "referenceRange",
        "bodySite",
    ),
    "ServiceRequest": (
        "id",
        "status",
        "intent",
        "category",
        "priority",
        "code",
        "subject",
        "authoredOn",
        "occurrenceDateTime",
        "occurrencePeriod",
        "bodySite",
        "reasonCode",
        "reasonReference",
    ),
    "Procedure": (
        "id",
        "status",
        "category",
        "code",
        "subject",
        "performedDateTime",
        "performedPeriod",
        "performedString",
        "bodySite",
    ),
    "Device": ("id", "status", "type", "safety", "deviceName", "patient"),
}


_ALWAYS_PROJECTED = ("subject", "patient", "verificationStatus")  # for the checks before typing


_DRAFT_ELEMENTS = ("id", "status", "intent", "subject", "reasonCode", "reasonReference")


def draft_order_model(order: dict[str, Any], patient_id: str, notes: list[str]) -> Any | None:
    """The typed R4B model of a draft order as the client sent it: the elements the rules read
    (its reasons; the ordered study is already known from its code)."""
    data = {key: copy.deepcopy(order[key]) for key in _DRAFT_ELEMENTS if key in order}
    data["resourceType"] = "ServiceRequest"
    return typed_model("ServiceRequest", data, patient_id, notes)


def projection(resource: _Resource, elements: frozenset[str] = frozenset({"*"})) -> dict[str, Any]:
    """The elements the rules read, as plain JSON values ready for the R4B model."""
    projected: dict[str, Any] = {"resourceType": resource.resourceType}
    names = PROJECTION[resource.resourceType]
    if "*" not in elements:
        names = tuple(name for name in names if name in elements or name in _ALWAYS_PROJECTED)
    for name in names:
        value = getattr(resource, name)
        if value is UNSET or value is None:
            continue
        if isinstance(value, msgspec.Raw):
            value = orjson.loads(bytes(value))
        elif isinstance(value, msgspec.Struct):
            value = msgspec.to_builtins(value)
        projected[name] = value
    return projected


def _required_defaults(resource_type: str, patient_id: str) -> dict[str, Any]:
    subject = {"reference": f"Patient/{patient_id}"}
    return {
        "Condition": {"subject": subject},
        "Observation": {"status": "unknown"},
        "ServiceRequest": {"status": "unknown", "intent": "order", "subject": subject},
        "Procedure": {"status": "unknown", "subject": subject},
    }.get(resource_type, {})


def typed_model(resource_type: str, data: dict[str, Any], patient_id: str, notes: list[str]) -> Any | None:
    """The R4B model of `data`. Invalid elements are dropped (and noted) rather than the resource:
    a red flag must not vanish because its recordedDate lacks a time zone."""
    model = MODELS[resource_type]
    for _ in range(4):
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
        except (KeyError, TypeError, ValueError):  # fhir.resources raises KeyError for unknown contained types
            errors = [{"loc": ("contained",), "type": "unknown_resource_type"}]
        repaired = 0
        for error in sorted(errors, key=lambda e: [str(p) for p in e.get("loc", ())], reverse=True):
            loc = tuple(error.get("loc") or ())
            if not loc or loc[0] == "resourceType":
                continue
            if error.get("type") == "missing" and len(loc) == 1:
                default = _required_defaults(resource_type, patient_id).get(str(loc[0]))
                if default is not None:
                    data[str(loc[0])] = default
                    repaired += 1
                continue
            if _delete_path(data, loc):
                repaired += 1
        if not repaired:
            break
        notes.append(f"{resource_type}: {repaired} invalid element(s) dropped or defaulted")
    notes.append(f"{resource_type}: could not be read and was ignored")
    return None


def _delete_path(data: Any, loc: Iterable[Any]) -> bool:
    path = list(loc)
    container = data
    for part in path[:-1]:
        try:
            container = container[part]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        del container[path[-1]]
    except (KeyError, IndexError, TypeError):
        return False
    return True
