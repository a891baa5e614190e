"""FHIR as it arrives: slim msgspec views of prefetch values and FHIR answers, decoded in one pass.

Only what selection needs is typed (type, id, status, code, dates); every element a rule may read
is kept as raw JSON, decoded only for the few resources that are read (fhir_models.py). Fields
whose type differs between FHIR resource types stay raw, so an _include'd Encounter cannot break
the decode.
"""

from __future__ import annotations

import msgspec

from ..resource_types import RESOURCE_TYPES
from . import HookRequest, decode, describe_decode_error

# Only what selection needs is typed (type, id, status, code, dates). Every element a rule may read
# is kept as raw JSON, decoded only for the few resources that are read. Fields whose type differs
# between FHIR resource types stay raw, so an _include'd Encounter cannot break the decode.

_Unset = msgspec.UnsetType
UNSET = msgspec.UNSET


class SlimCoding(msgspec.Struct, frozen=True, omit_defaults=True):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class ConceptStruct(msgspec.Struct, omit_defaults=True):
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
    resource: WireResource | None = None
    search: _Search | None = None


class WireResource(msgspec.Struct):
    resourceType: str = ""
    id: str | None = None
    status: str | None = None
    code: ConceptStruct | None = None
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
    # medicines: the code is typed, for the reading list
    medicationCodeableConcept: ConceptStruct | None = None
    dispenseRequest: msgspec.Raw | _Unset = UNSET
    dateAsserted: msgspec.Raw | _Unset = UNSET
    # the encounter: where the order was placed (the audit trail's department)
    class_: msgspec.Raw | _Unset = msgspec.field(default=UNSET, name="class")
    serviceType: msgspec.Raw | _Unset = UNSET
    location: msgspec.Raw | _Unset = UNSET
    serviceProvider: msgspec.Raw | _Unset = UNSET
    # imaging: reports and studies
    started: msgspec.Raw | _Unset = UNSET
    modality: msgspec.Raw | _Unset = UNSET
    procedureCode: msgspec.Raw | _Unset = UNSET
    series: msgspec.Raw | _Unset = UNSET

    def concept_text(self, element: str) -> str:
        """The text and displays of `element`: products are matched by their ingredients' names."""
        concept = self.code if element == "code" else self.medicationCodeableConcept
        if concept is None:
            return ""
        return " ".join(filter(None, [concept.text, *(coding.display for coding in concept.coding)]))

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


_resource_decoder = msgspec.json.Decoder(WireResource)
_raw_bundle_decoder = msgspec.json.Decoder(_RawBundle)
NULL = msgspec.Raw(b"null")


class MalformedData(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class PrefetchedHookRequest(HookRequest):
    """The whole request typed in one pass, prefetch included (the fast path for large records)."""

    prefetch: dict[str, WireResource | None] | None = None  # type: ignore[assignment]  # a narrower decode


_fast_request_decoder = msgspec.json.Decoder(PrefetchedHookRequest)


def decode_hook_request(body: bytes) -> HookRequest:
    """The hook request, with its prefetch decoded in the same pass when it has the usual shape.

    Anything unusual (a malformed resource, an unrelated resource of an odd shape, bad JSON) takes
    the careful path, which answers 400 naming the field or skips what the rules never read."""
    try:
        return _fast_request_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return decode(body, HookRequest)


def decode_value(raw: bytes | msgspec.Raw) -> WireResource:
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


def _decode_tolerantly(raw: bytes | msgspec.Raw) -> WireResource:
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
        if entry.resource == NULL:
            continue
        try:
            resource = _resource_decoder.decode(entry.resource)
        except msgspec.DecodeError as exc:
            try:
                resource_type = _type_decoder.decode(entry.resource).resourceType
            except msgspec.DecodeError:
                resource_type = ""
            if resource_type and resource_type not in RESOURCE_TYPES:
                continue  # a resource type the rules never read, in a shape we do not model
            detail, path = describe_decode_error(exc)
            raise MalformedData(
                f".entry[{index}].resource" + (f".{path}" if path and path != "$" else ""), detail
            ) from None
        entries.append(_Entry(resource=resource, search=entry.search))
    return WireResource(resourceType="Bundle", entry=entries, link=bundle.link)
