"""Reading values out of typed FHIR R4B models: dates, codings, labels, quantities.

Tolerant of what real charts hold (partial dates, missing elements); pure functions.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from .units import celsius
from .value_sets import ValueSet

_HIGH_INTERPRETATIONS = {"H", "HH", "HU", "A", "AA"}
_POSITIVE = {"10828004", "POS", "positive", "pos", "detected", "260373001"}


def as_date(value: Any) -> date | None:
    """A FHIR date, dateTime or partial date ("2024", "2024-05") as a date (partials: first day)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value)
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7:
            return date(int(text[:4]), int(text[5:7]), 1)
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def codings(concept: Any) -> list[Any]:
    return list(getattr(concept, "coding", None) or [])


def concept_label(concept: Any, value_set: ValueSet | None = None) -> str:
    """ "Display (SYSTEM CODE)" for the first coding, preferring one in `value_set`."""
    chosen = None
    for coding in codings(concept):
        if value_set is None or value_set.contains(coding.system, coding.code):
            chosen = coding
            break
    chosen = chosen or next(iter(codings(concept)), None)
    text = getattr(concept, "text", None)
    if chosen is None:
        return text or "unnamed"
    display = (
        chosen.display or (value_set.display(chosen.system, chosen.code) if value_set else None) or text or chosen.code
    )
    return f"{display} ({_system_name(chosen.system)} {chosen.code})"


def _system_name(system: str | None) -> str:
    return {
        "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
        "urn:oid:2.16.840.1.113883.6.90": "ICD-10-CM",
        "http://snomed.info/sct": "SNOMED CT",
        "http://loinc.org": "LOINC",
        "http://www.ama-assn.org/go/cpt": "CPT",
        "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    }.get(system or "", "code")


def in_value_set(concept: Any, value_set: ValueSet) -> Any | None:
    return value_set.first_match(codings(concept))


def condition_date(condition: Any) -> date | None:
    onset = condition.onsetDateTime or (condition.onsetPeriod.start if condition.onsetPeriod else None)
    return as_date(onset) or as_date(condition.recordedDate)


def observation_date(observation: Any) -> date | None:
    period = observation.effectivePeriod.start if observation.effectivePeriod else None
    return as_date(observation.effectiveDateTime or observation.effectiveInstant or period or observation.issued)


def request_date(request: Any) -> date | None:
    period = request.occurrencePeriod.start if request.occurrencePeriod else None
    return as_date(request.occurrenceDateTime or period or request.authoredOn)


def procedure_date(procedure: Any) -> date | None:
    period = procedure.performedPeriod.start if procedure.performedPeriod else None
    return as_date(procedure.performedDateTime or period)


def age_on(birth: Any, today: date) -> int | None:
    born = as_date(birth)
    if born is None:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def quantity_celsius(quantity: Any) -> float | None:
    return None if quantity is None else celsius(quantity.value, quantity.code, quantity.unit)


def quantity_text(quantity: Any) -> str:
    value = quantity.value
    if isinstance(value, Decimal):
        value = value.normalize()
    return f"{value} {quantity.unit or quantity.code or ''}".strip()


def is_raised(observation: Any) -> bool:
    if any(c.code in _HIGH_INTERPRETATIONS for concept in (observation.interpretation or []) for c in codings(concept)):
        return True
    quantity = observation.valueQuantity
    if quantity is None or quantity.value is None:
        return False
    for reference in observation.referenceRange or []:
        if reference.high is not None and reference.high.value is not None and quantity.value > reference.high.value:
            return True
    return False


def is_positive(observation: Any) -> bool:
    if observation.valueBoolean is True:
        return True
    if observation.valueString and observation.valueString.strip().lower() in _POSITIVE:
        return True
    concepts = [observation.valueCodeableConcept, *(observation.interpretation or [])]
    return any(c.code in _POSITIVE for concept in concepts if concept for c in codings(concept))


def medication_request_date(request: Any) -> date | None:
    validity = request.dispenseRequest.validityPeriod if request.dispenseRequest else None
    return as_date(request.authoredOn) or as_date(validity.start if validity else None)


def medication_statement_date(statement: Any) -> date | None:
    period = statement.effectivePeriod.start if statement.effectivePeriod else None
    return as_date(statement.effectiveDateTime or period) or as_date(statement.dateAsserted)


def report_date(report: Any) -> date | None:
    period = report.effectivePeriod.start if report.effectivePeriod else None
    return as_date(report.effectiveDateTime or period or report.issued)


DATE_OF = {
    "Condition": condition_date,
    "Observation": observation_date,
    "ServiceRequest": request_date,
    "Procedure": procedure_date,
    "MedicationRequest": medication_request_date,
    "MedicationStatement": medication_statement_date,
    "DiagnosticReport": report_date,
    "ImagingStudy": lambda study: as_date(study.started),
}


def resource_date(resource_type: str, resource: Any) -> date | None:
    """The date a fact about `resource` is dated by (clinical specification 7.1), or None."""
    reader = DATE_OF.get(resource_type)
    return reader(resource) if reader is not None else None
