"""Status rules, in one place: which FHIR resources count, by resource type and by what a fact needs.

Two layers (clinical specification 7.1):
* NEVER_COUNT: a resource with one of these statuses is dropped when the patient record is built,
  whatever fact might read it (entered in error, refuted);
* StatusPolicy: what a fact asks of the resources it reads (still active, still open, performed).
"""

from __future__ import annotations

import enum
from typing import Any

from .fhir_values import codings

# resource type -> element -> codes that mean "this resource is not a fact about the patient"
NEVER_COUNT: dict[str, dict[str, frozenset[str]]] = {
    "Condition": {"verificationStatus": frozenset({"entered-in-error", "refuted"})},
    "Observation": {"status": frozenset({"entered-in-error"})},
    "ServiceRequest": {"status": frozenset({"entered-in-error"})},
    "Procedure": {"status": frozenset({"entered-in-error"})},
    "Device": {"status": frozenset({"entered-in-error"})},
    "Patient": {},
}

INACTIVE_CLINICAL = frozenset({"inactive", "remission", "resolved"})  # Condition.clinicalStatus
CLOSED_REQUEST = frozenset({"revoked", "entered-in-error", "draft"})  # ServiceRequest.status
NOT_DONE_PROCEDURE = frozenset({"not-done", "entered-in-error", "preparation"})  # Procedure.status
NOT_CURRENT_DEVICE = frozenset({"inactive", "entered-in-error"})  # Device.status
PERFORMED = frozenset({"completed"})  # ServiceRequest and Procedure: the study was done


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
        return status in PERFORMED
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


def never_counts(resource_type: str, element: str, codes: list[str]) -> bool:
    """Whether a raw resource's `element` codes put it in NEVER_COUNT."""
    excluded = NEVER_COUNT.get(resource_type, {}).get(element)
    return bool(excluded) and any(code in excluded for code in codes)  # type: ignore[operator]
