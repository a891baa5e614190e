"""The FHIR resource types the service reads, in one table.

Decoding (which types are modelled), prefetch resolution and the FHIR fallback (prefetch key and
search), typing (the R4B model, the elements typed, required defaults) and the patient check all
read this table; the status rules are in knowledge/statuses.py. To read a new resource type: one
entry here, its slim fields in protocol/fhir.py if selection needs them, and the facts that use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.servicerequest import ServiceRequest

from .knowledge.statuses import NEVER_COUNT

PATIENT_REFERENCE = {"reference": "Patient/{patient_id}"}


@dataclass(frozen=True)
class ResourceType:
    name: str
    model: type
    bucket: str  # the PatientRecord list it is kept in ("" for the Patient itself)
    prefetch_key: str  # the key of the shipped service definitions
    search: str  # the prefetch template's query, before any narrowing (`&code=...`)
    elements: tuple[str, ...]  # typed when the resource is read: the elements the rules may read
    patient_element: str | None  # the reference to the patient, checked before typing
    required: dict[str, Any] = field(default_factory=dict)  # R4B-required elements and their defaults
    always_read: bool = False  # read whatever its codes (the Patient; devices, for MR safety)

    @property
    def never_count(self) -> dict[str, frozenset[str]]:
        return NEVER_COUNT.get(self.name, {})


RESOURCE_TYPES: dict[str, ResourceType] = {
    entry.name: entry
    for entry in (
        ResourceType(
            "Patient",
            Patient,
            "",
            "patient",
            "Patient/{{context.patientId}}",
            ("id", "birthDate", "gender", "deceasedBoolean", "deceasedDateTime"),
            None,
            always_read=True,
        ),
        ResourceType(
            "Condition",
            Condition,
            "conditions",
            "conditions",
            "Condition?patient={{context.patientId}}",
            ("id", "clinicalStatus", "verificationStatus", "severity", "code", "bodySite", "subject", "onsetDateTime",
             "onsetAge", "onsetPeriod", "onsetRange", "onsetString", "abatementDateTime", "abatementAge",
             "abatementPeriod", "abatementRange", "abatementString", "abatementBoolean", "recordedDate"),
            "subject",
            {"subject": PATIENT_REFERENCE},
        ),
        ResourceType(
            "Observation",
            Observation,
            "observations",
            "observations",
            "Observation?patient={{context.patientId}}",
            ("id", "status", "category", "code", "subject", "effectiveDateTime", "effectivePeriod", "effectiveInstant",
             "issued", "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "interpretation",
             "referenceRange", "bodySite"),
            "subject",
            {"status": "unknown"},
        ),
        ResourceType(
            "ServiceRequest",
            ServiceRequest,
            "service_requests",
            "serviceRequests",
            "ServiceRequest?patient={{context.patientId}}",
            ("id", "status", "intent", "category", "priority", "code", "subject", "authoredOn", "occurrenceDateTime",
             "occurrencePeriod", "bodySite", "reasonCode", "reasonReference"),
            "subject",
            {"status": "unknown", "intent": "order", "subject": PATIENT_REFERENCE},
        ),
        ResourceType(
            "Procedure",
            Procedure,
            "procedures",
            "procedures",
            "Procedure?patient={{context.patientId}}",
            ("id", "status", "category", "code", "subject", "performedDateTime", "performedPeriod", "performedString",
             "bodySite"),
            "subject",
            {"status": "unknown", "subject": PATIENT_REFERENCE},
        ),
        ResourceType(
            "Device",
            Device,
            "devices",
            "devices",
            "Device?patient={{context.patientId}}",
            ("id", "status", "type", "safety", "deviceName", "patient"),
            "patient",
            always_read=True,
        ),
    )
}  # fmt: skip
BUCKETS = {entry.bucket: entry for entry in RESOURCE_TYPES.values() if entry.bucket}
BY_PREFETCH_KEY = {entry.prefetch_key: entry for entry in RESOURCE_TYPES.values()}


def required_defaults(resource_type: str, patient_id: str) -> dict[str, Any]:
    defaults = RESOURCE_TYPES[resource_type].required
    return {
        name: ({"reference": f"Patient/{patient_id}"} if value is PATIENT_REFERENCE else value)
        for name, value in defaults.items()
    }
