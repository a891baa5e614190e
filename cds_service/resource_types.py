"""The FHIR resource types the service reads, in one table.

Decoding (which types are modelled), prefetch resolution and the FHIR fallback (prefetch key and
search), typing (the R4B model, the elements typed, required defaults) and the patient check all
read this table; the status rules are in knowledge/statuses.py. To read a new resource type: one
entry here, its slim fields in protocol/fhir.py if selection needs them, and the facts that use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.servicerequest import ServiceRequest

from .knowledge.statuses import NEVER_COUNT

PATIENT_REFERENCE = {"reference": "Patient/{patient_id}"}


@dataclass(frozen=True)
class ResourceType:
    name: str
    model: type | None  # its R4B model; None: no rule reads it, it is kept as the projected JSON
    bucket: str  # the PatientRecord list it is kept in ("" for the Patient itself)
    searches: tuple[tuple[str, str], ...]  # (prefetch key, query) of the shipped service definitions
    elements: tuple[str, ...]  # typed when the resource is read: the elements the rules may read
    patient_element: str | None  # the reference to the patient, checked before typing
    required: dict[str, Any] = field(default_factory=dict)  # R4B-required elements and their defaults
    code_element: str | None = "code"  # matched against the reading list; None: read whatever its codes
    slim: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # trims a projection before typing

    @property
    def never_count(self) -> dict[str, frozenset[str]]:
        return NEVER_COUNT.get(self.name, {})


def _series_essentials(data: dict[str, Any]) -> dict[str, Any]:
    """An ImagingStudy's series without their instances: the rules read modality and body site only."""
    series = data.get("series")
    if isinstance(series, list):
        keep = ("uid", "modality", "bodySite")
        data["series"] = [{k: s[k] for k in keep if k in s} if isinstance(s, dict) else s for s in series]
    return data


RESOURCE_TYPES: dict[str, ResourceType] = {
    entry.name: entry
    for entry in (
        ResourceType(
            "Patient",
            Patient,
            "",
            (("patient", "Patient/{{context.patientId}}"),),
            ("id", "birthDate", "gender", "deceasedBoolean", "deceasedDateTime"),
            None,
            code_element=None,
        ),
        ResourceType(
            "Condition",
            Condition,
            "conditions",
            (("conditions", "Condition?patient={{context.patientId}}"),),
            ("id", "clinicalStatus", "verificationStatus", "category", "severity", "code", "bodySite", "subject",
             "onsetDateTime",
             "onsetAge", "onsetPeriod", "onsetRange", "onsetString", "abatementDateTime", "abatementAge",
             "abatementPeriod", "abatementRange", "abatementString", "abatementBoolean", "recordedDate"),
            "subject",
            {"subject": PATIENT_REFERENCE},
        ),
        ResourceType(
            "Observation",
            Observation,
            "observations",
            (
                ("observations", "Observation?patient={{context.patientId}}"),  # narrowed to the codes read
                ("findings", "Observation?patient={{context.patientId}}&category=exam,survey,social-history"),
            ),
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
            (("serviceRequests", "ServiceRequest?patient={{context.patientId}}"),),
            ("id", "status", "intent", "category", "priority", "code", "subject", "authoredOn", "occurrenceDateTime",
             "occurrencePeriod", "bodySite", "reasonCode", "reasonReference"),
            "subject",
            {"status": "unknown", "intent": "order", "subject": PATIENT_REFERENCE},
        ),
        ResourceType(
            "Procedure",
            Procedure,
            "procedures",
            (("procedures", "Procedure?patient={{context.patientId}}"),),
            ("id", "status", "category", "code", "subject", "performedDateTime", "performedPeriod", "performedString",
             "bodySite"),
            "subject",
            {"status": "unknown", "subject": PATIENT_REFERENCE},
        ),
        ResourceType(
            "Device",
            Device,
            "devices",
            (("devices", "Device?patient={{context.patientId}}"),),
            ("id", "status", "type", "safety", "deviceName", "patient"),
            "patient",
            code_element=None,  # MR safety is read from every current device
        ),
        ResourceType(
            "Encounter",
            None,  # read for the audit trail's department only: no R4B model (its import alone costs 35 ms)
            "encounters",
            (("encounter", "Encounter/{{context.encounterId}}"),),
            ("id", "status", "class", "serviceType", "location", "serviceProvider", "subject"),
            "subject",
            {"status": "unknown", "class": {"code": "AMB"}},
            code_element=None,  # the department or location for the audit trail, when the client has one
        ),
        ResourceType(
            "MedicationRequest",
            MedicationRequest,
            "medication_requests",
            (("medicationRequests", "MedicationRequest?patient={{context.patientId}}"),),
            ("id", "status", "intent", "medicationCodeableConcept", "subject", "authoredOn", "dispenseRequest"),
            "subject",
            {"status": "unknown", "intent": "order", "subject": PATIENT_REFERENCE},
            code_element="medicationCodeableConcept",
        ),
        ResourceType(
            "MedicationStatement",
            MedicationStatement,
            "medication_statements",
            (("medicationStatements", "MedicationStatement?patient={{context.patientId}}"),),
            ("id", "status", "medicationCodeableConcept", "subject", "effectiveDateTime", "effectivePeriod",
             "dateAsserted"),
            "subject",
            {"status": "unknown", "subject": PATIENT_REFERENCE},
            code_element="medicationCodeableConcept",
        ),
        ResourceType(
            "DiagnosticReport",
            DiagnosticReport,
            "diagnostic_reports",
            (("reports", "DiagnosticReport?patient={{context.patientId}}&category=http://loinc.org|LP29684-5,"
                         "http://terminology.hl7.org/CodeSystem/v2-0074|RAD"),),
            ("id", "status", "category", "code", "subject", "effectiveDateTime", "effectivePeriod", "issued"),
            "subject",
            {"status": "unknown"},
        ),
        ResourceType(
            "ImagingStudy",
            ImagingStudy,
            "imaging_studies",
            (("imagingStudies", "ImagingStudy?patient={{context.patientId}}"),),
            ("id", "status", "subject", "started", "modality", "procedureCode", "series"),
            "subject",
            {"status": "unknown", "subject": PATIENT_REFERENCE},
            code_element=None,  # few per patient; lumbar MR or CT is judged from modality, body site and code
            slim=_series_essentials,
        ),
    )
}  # fmt: skip
BUCKETS = {entry.bucket: entry for entry in RESOURCE_TYPES.values() if entry.bucket}
BY_PREFETCH_KEY = {key: entry for entry in RESOURCE_TYPES.values() for key, _ in entry.searches}
SEARCHES = {key: search for entry in RESOURCE_TYPES.values() for key, search in entry.searches}


def required_defaults(resource_type: str, patient_id: str) -> dict[str, Any]:
    defaults = RESOURCE_TYPES[resource_type].required
    return {
        name: ({"reference": f"Patient/{patient_id}"} if value is PATIENT_REFERENCE else value)
        for name, value in defaults.items()
    }
