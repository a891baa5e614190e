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

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

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
from .fhir_client import FetchResult, FhirClient, is_allowed, next_link
from .protocol import CdsError, HookRequest, describe_decode_error
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


# --- slim view: what selection needs, decoded without building the whole resource --------------

class SlimCoding(msgspec.Struct, frozen=True):
    system: str | None = None
    code: str | None = None


class _Concept(msgspec.Struct):
    coding: list[SlimCoding] = []


class _Reference(msgspec.Struct):
    reference: str | None = None


class _Slim(msgspec.Struct, tag_field="resourceType"):
    id: str | None = None
    status: str | None = None
    code: _Concept | None = None
    subject: _Reference | None = None


class _Patient(_Slim, tag="Patient"):
    pass


class _Condition(_Slim, tag="Condition"):
    verificationStatus: _Concept | None = None


class _Observation(_Slim, tag="Observation"):
    pass


class _ServiceRequest(_Slim, tag="ServiceRequest"):
    pass


class _Procedure(_Slim, tag="Procedure"):
    pass


class _Device(_Slim, tag="Device"):
    type: _Concept | None = None
    patient: _Reference | None = None


class _OperationOutcome(_Slim, tag="OperationOutcome"):
    pass


_SlimResource = _Patient | _Condition | _Observation | _ServiceRequest | _Procedure | _Device | _OperationOutcome
_slim_decoder = msgspec.json.Decoder(_SlimResource)


class _Search(msgspec.Struct):
    mode: str | None = None


class _Entry(msgspec.Struct):
    resource: msgspec.Raw = msgspec.Raw(b"null")
    search: _Search | None = None


class _Envelope(msgspec.Struct):
    resourceType: str = ""
    entry: list[_Entry] = []


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_EXCLUDED_STATUS = {"entered-in-error"}
_EXCLUDED_VERIFICATION = {"entered-in-error", "refuted"}


class ReadingList(Protocol):
    """Which resources the rules read; supplied by the clinical knowledge."""

    def wants(self, resource_type: str, codings: Sequence[SlimCoding]) -> bool: ...


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

    @property
    def fallback_used(self) -> bool:
        return "fetched" in self.sources.values()

    @property
    def unavailable(self) -> list[str]:
        return [key for key, source in self.sources.items() if source == "unavailable"]

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
) -> PatientRecord:
    """The patient record for `request`; raises CdsError(400 or 412) when it cannot be built."""
    record = PatientRecord(patient_id=request.context.patientId)
    prefetch = request.prefetch or {}
    bodies: dict[str, list[bytes]] = {}
    to_fetch: dict[str, str] = {}
    missing: dict[str, str] = {}  # key -> why its data cannot be had
    context = msgspec.structs.asdict(request.context)

    for key, template in service.prefetch.items():
        raw = prefetch.get(key)
        if raw is not None:
            body = bytes(raw)
            if body.strip() == b"null":
                record.sources[key] = "empty"
                continue
            kind, next_url = _classify(body, key)
            if kind == "data":
                bodies[key] = [body]
                record.sources[key] = "prefetch"
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
        fetched, failures = _fetch(request, settings, to_fetch, client_factory)
        for key, result in fetched.items():
            bodies.setdefault(key, []).extend(result.pages)
            record.sources.setdefault(key, "fetched")
        missing.update(failures)
    for key in missing:
        bodies.pop(key, None)  # incomplete data is no data: a missing page may hold the red flag
    _apply_failure_policy(service, missing, record)

    for key, pages in bodies.items():
        for index, body in enumerate(pages):
            try:
                _read_body(body, record, reading_list)
            except MalformedData as bad:
                where = f"prefetch.{key}{bad.where}"
                if record.sources.get(key) == "fetched" or index > 0:
                    raise CdsError(412, f"The FHIR server's data for {key!r} is not valid FHIR JSON ({bad.message})",
                                   code="processing", expression=[key]) from None
                raise CdsError(400, f"Invalid prefetch data at {where}: {bad.message}", expression=[where]) from None
    return record


def _classify(body: bytes, key: str) -> tuple[str, str | None]:
    """("data" | "outcome", next page URL) for one prefetch value."""
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.DecodeError as exc:
        detail, path = describe_decode_error(exc)
        where = f"prefetch.{key}" + (f".{path}" if path and path != "$" else "")
        raise CdsError(400, f"Invalid prefetch data at {where}: {detail}", expression=[where]) from None
    if envelope.resourceType == "OperationOutcome":
        return "outcome", None
    if not envelope.resourceType:
        raise CdsError(400, f"Invalid prefetch data at prefetch.{key}: not a FHIR resource (no resourceType)",
                       expression=[f"prefetch.{key}"])
    if envelope.resourceType == "Bundle":
        return "data", next_link(body)
    return "data", None


def _fetch(
    request: HookRequest, settings: Settings, queries: dict[str, str], client_factory: ClientFactory
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
            "Patient data needed for this decision could not be obtained from prefetch or the FHIR server: " + ", ".join(keys),
            code="not-found",
            expression=keys,
            issues=issues,
        )


def _read_body(body: bytes, record: PatientRecord, reading_list: ReadingList) -> None:
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.DecodeError as exc:
        detail, path = describe_decode_error(exc)
        raise MalformedData(f".{path}" if path and path != "$" else "", detail) from None
    if envelope.resourceType != "Bundle":
        _read_resource(body, "", record, reading_list)
        return
    for index, entry in enumerate(envelope.entry):
        if entry.search is not None and entry.search.mode == "outcome":
            continue  # e.g. "parameter ignored" warnings that servers put inside searchsets
        raw = bytes(entry.resource)
        if raw == b"null":
            continue
        _read_resource(raw, f".entry[{index}].resource", record, reading_list)


def _read_resource(raw: bytes, where: str, record: PatientRecord, reading_list: ReadingList) -> None:
    try:
        slim = _slim_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        detail, path = describe_decode_error(exc)
        if path == "resourceType" and detail.startswith("Invalid value"):
            return  # a resource type the rules never read (an Encounter from an _include, say)
        raise MalformedData(f"{where}.{path}", detail) from None
    record.seen += 1
    resource_type = type(slim).__name__.lstrip("_")
    if resource_type == "OperationOutcome" or not _is_current(slim):
        return
    if not _belongs_to(slim, record.patient_id):
        record.data_quality.append(f"{resource_type} for another patient ignored")
        return
    codings = slim.type.coding if isinstance(slim, _Device) and slim.type else (slim.code.coding if slim.code else [])
    if resource_type != "Patient" and not reading_list.wants(resource_type, codings):
        return
    model = typed_model(resource_type, orjson.loads(raw), record.patient_id, record.data_quality)
    if model is None:
        return
    record.kept += 1
    if resource_type == "Patient":
        record.patient = model
    else:
        record._bucket(resource_type).append(model)


def _is_current(slim: _Slim) -> bool:
    if slim.status in _EXCLUDED_STATUS:
        return False
    if isinstance(slim, _Condition) and slim.verificationStatus is not None:
        return not any(c.code in _EXCLUDED_VERIFICATION for c in slim.verificationStatus.coding)
    return True


def _referenced_patient(reference: _Reference | None) -> str | None:
    if reference is None or not reference.reference:
        return None
    parts = reference.reference.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient":
        return parts[-1]
    return None


def _belongs_to(slim: _Slim, patient_id: str) -> bool:
    if isinstance(slim, _Patient):
        return slim.id in (None, patient_id)
    reference = slim.patient if isinstance(slim, _Device) else slim.subject
    other = _referenced_patient(reference)
    return other is None or other == patient_id


# --- typed models, leniently --------------------------------------------------------------------

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
