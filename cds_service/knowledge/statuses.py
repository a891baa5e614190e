"""Status rules, in one place: which FHIR resources count, by resource type and by what a fact needs.

Two layers (clinical specification 7.1):
* NEVER_COUNT (and ONLY_COUNT, for Observations): a resource with one of these statuses is dropped
  when the patient record is built, whatever fact might read it (entered in error, refuted,
  cancelled, not taken...);
* StatusPolicy: what a fact asks of the resources it reads (still active, still open, performed).
A resource of another patient never counts either (patient_record.py checks its reference).
"""

from __future__ import annotations

import enum
from typing import Any

from .fhir_values import codings

# resource type -> element -> codes that mean "this resource is not a fact about the patient"
NEVER_COUNT: dict[str, dict[str, frozenset[str]]] = {
    "Condition": {"verificationStatus": frozenset({"entered-in-error", "refuted"})},
    "Observation": {"status": frozenset({"entered-in-error", "cancelled", "registered"})},
    "ServiceRequest": {"status": frozenset({"entered-in-error"})},
    "Procedure": {"status": frozenset({"entered-in-error"})},
    "Device": {"status": frozenset({"entered-in-error"})},
    "MedicationRequest": {"status": frozenset({"entered-in-error", "cancelled", "draft"})},  # stopped, completed: given
    "MedicationStatement": {"status": frozenset({"entered-in-error", "not-taken"})},
    "DiagnosticReport": {"status": frozenset({"entered-in-error", "cancelled"})},
    "ImagingStudy": {"status": frozenset({"entered-in-error", "cancelled"})},
    "Encounter": {"status": frozenset({"entered-in-error"})},
    "Patient": {},
}
# resource type -> element -> the only codes that count, when the element is present
ONLY_COUNT: dict[str, dict[str, frozenset[str]]] = {
    "Observation": {"status": frozenset({"final", "amended", "corrected", "preliminary"})},
}
SUSPECTED = frozenset({"provisional", "differential", "unconfirmed"})  # Condition.verificationStatus

INACTIVE_CLINICAL = frozenset({"inactive", "remission", "resolved"})  # Condition.clinicalStatus
CLOSED_REQUEST = frozenset({"revoked", "entered-in-error", "draft"})  # ServiceRequest.status
NOT_DONE_PROCEDURE = frozenset({"not-done", "entered-in-error", "preparation"})  # Procedure.status
NOT_CURRENT_DEVICE = frozenset({"inactive", "entered-in-error"})  # Device.status
PERFORMED: dict[str, frozenset[str]] = {  # the study was done
    "ServiceRequest": frozenset({"completed"}),
    "Procedure": frozenset({"completed"}),
    "DiagnosticReport": frozenset({"final", "amended", "corrected", "appended", "preliminary", "partial"}),
    "ImagingStudy": frozenset({"available"}),
}


class StatusPolicy(enum.Enum):
    """What a fact requires of a resource's status."""

    CURRENT = "current"  # an active Condition, an open request, a procedure not abandoned
    CURRENT_OR_HISTORY = "current-or-history"  # as CURRENT, but history codes count whatever their status
    EVER = "ever"  # any status that is not NEVER_COUNT (post-surgical states are history)
    PERFORMED = "performed"  # a completed request or procedure (prior imaging)


def clinical_status(condition: Any) -> str | None:
    for coding in codings(getattr(condition, "clinicalStatus", None)):
        if coding.code:
            return str(coding.code)
    return None


def counts(resource_type: str, resource: Any, policy: StatusPolicy, is_history: bool = False) -> bool:
    """Whether `resource` satisfies `policy` (NEVER_COUNT was applied when the record was built)."""
    if policy is StatusPolicy.EVER:
        return True
    status = getattr(resource, "status", None)
    if policy is StatusPolicy.PERFORMED:
        return status in PERFORMED.get(resource_type, frozenset())
    if resource_type == "Condition":
        if policy is StatusPolicy.CURRENT_OR_HISTORY and is_history:
            return True
        return clinical_status(resource) not in INACTIVE_CLINICAL
    if resource_type == "ServiceRequest":
        return status not in CLOSED_REQUEST
    if resource_type == "Procedure":
        return status not in NOT_DONE_PROCEDURE
    if resource_type == "Device":
        return status not in NOT_CURRENT_DEVICE
    return True


# resource type -> (statuses that never count, the only ones that count or None): the two tables
# above as the record scan asks them, once for every resource of a chart
_BY_STATUS: dict[str, tuple[frozenset[str], frozenset[str] | None]] = {
    resource_type: (
        NEVER_COUNT.get(resource_type, {}).get("status", frozenset()),
        ONLY_COUNT.get(resource_type, {}).get("status"),
    )
    for resource_type in NEVER_COUNT.keys() | ONLY_COUNT.keys()
}
_NO_STATUS_RULE: tuple[frozenset[str], None] = (frozenset(), None)


def status_counts(resource_type: str, status: str | None) -> bool:
    """Whether a resource with this `status` element can count at all (before any fact reads it)."""
    if status is None:
        return True  # a missing status is invalid FHIR: the resource is read, the safe reading for red flags
    never, only = _BY_STATUS.get(resource_type, _NO_STATUS_RULE)
    return status not in never and (only is None or status in only)


def verification(condition: Any) -> str | None:
    for coding in codings(getattr(condition, "verificationStatus", None)):
        if coding.code:
            return str(coding.code)
    return None
