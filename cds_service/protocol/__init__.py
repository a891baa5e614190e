"""CDS Hooks 2.0 wire format: request and feedback models, and errors as OperationOutcomes.

Requests are decoded with msgspec straight from bytes into slim typed structs: only the fields
the service reads are materialised, unknown fields are ignored (clients add their own), and
prefetch values stay as raw JSON until patient_data decides which of them it needs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]


# --- service request ------------------------------------------------------------------------


# Sent as `Authorization: Bearer <token>`: visible ASCII only (RFC 6750's b64token and every token
# EHRs issue fit). A CR or LF would end the header; the HTTP client refused such a token with an
# exception that became a 500.
BearerToken = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]+$")]


class FhirAuthorization(msgspec.Struct):
    access_token: BearerToken
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None


class DraftEntry(msgspec.Struct):
    # Resources in draftOrders are small and echoed back in update actions, so plain dicts.
    resource: dict[str, Any] | None = None


class DraftOrders(msgspec.Struct):
    # The sandbox and the Hook Library 1.0.1 examples omit Bundle.type: do not require it.
    entry: list[DraftEntry] = []
    resourceType: str = "Bundle"


# A FHIR id (R4 id datatype): what is substituted into prefetch queries; never "." or ".."
FHIR_ID_PATTERN = r"^(?!\.{1,2}$)[A-Za-z0-9\-.]{1,64}$"
FhirId = Annotated[str, msgspec.Meta(pattern=FHIR_ID_PATTERN)]
# Stored strings are bounded where they enter (the audit trail and feedback tables)
Bounded128 = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Bounded255 = Annotated[str, msgspec.Meta(max_length=255)]


class HookContext(msgspec.Struct):
    patientId: FhirId
    draftOrders: DraftOrders | None = None  # required by order-select and order-sign (check_request)
    userId: Bounded255 | None = None
    encounterId: FhirId | None = None
    selections: list[Bounded255] | None = None


class HookRequest(msgspec.Struct):
    hook: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    hookInstance: Bounded128
    context: HookContext
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    # Raw: a 2 MB prefetch is skimmed, not parsed, until a key is known to be needed.
    prefetch: dict[str, msgspec.Raw] | None = None


# --- feedback -------------------------------------------------------------------------------


class Coding(msgspec.Struct):
    code: Bounded128
    system: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    display: Bounded255 | None = None


MAX_COMMENT = 4000  # characters of a clinician's override comment


class OverrideReason(msgspec.Struct):
    reason: Coding | None = None
    userComment: Annotated[str, msgspec.Meta(max_length=MAX_COMMENT)] | None = None


class AcceptedSuggestion(msgspec.Struct):
    id: Bounded128


class FeedbackEntry(msgspec.Struct):
    card: Bounded128
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: NonEmptyStr
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None


class FeedbackRequest(msgspec.Struct):
    feedback: Annotated[list[FeedbackEntry], msgspec.Meta(min_length=1, max_length=1000)]


# --- errors ---------------------------------------------------------------------------------


class CdsError(Exception):
    """An answer other than 200, carried to the HTTP layer as an OperationOutcome."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str = "invalid",
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.headers = headers or {}
        self.outcome = operation_outcome(code, diagnostics, expression, issues=issues)


def operation_outcome(
    code: str,
    diagnostics: str,
    expression: list[str] | None = None,
    *,
    severity: str = "error",
    issues: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue, *(issues or [])]}


_PATH = re.compile(r" - at `\$\.?([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")
# a value msgspec quotes, with ' or, when it holds an apostrophe ("O'Brien"), with ": greedy, both
_QUOTED_VALUE = re.compile(r"'.*'|\".*\"")


def describe_decode_error(exc: msgspec.DecodeError) -> tuple[str, str | None]:
    """(what is wrong, where: a dotted path such as `context.patientId`, or None for bad JSON).

    The message never echoes input values: msgspec quotes them ("Invalid enum value 'x'")."""
    message = str(exc)
    match = _PATH.search(message)
    path = match.group(1).replace("[", ".").replace("]", "") if match else ""
    detail = _QUOTED_VALUE.sub("(value)", _PATH.sub("", message))
    if not isinstance(exc, msgspec.ValidationError):
        return detail, None
    missing = _MISSING.search(message)
    if missing:  # msgspec names the parent object; point at the missing field itself
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return detail, path or "$"


_decoders: dict[type, msgspec.json.Decoder] = {}


def decode(body: bytes, model: type[msgspec.Struct]) -> Any:
    """Decode and validate `body` as `model`, or raise CdsError(400) naming the offending field."""
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model)
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass: wrong shape or type
        detail, path = describe_decode_error(exc)
        if path is None:
            raise CdsError(400, f"Request body is not valid JSON: {detail}", code="structure") from None
        raise CdsError(400, f"Invalid request at {path}: {detail}", expression=[path]) from None
    except RecursionError:  # absurdly deep nesting
        raise CdsError(400, "Request body is nested too deeply", code="structure") from None


def parse_instant(value: str) -> datetime | None:
    """An RFC 3339 instant with an offset (`Z` allowed), in UTC; None when it is not one (or
    cannot be expressed in UTC, like 0001-01-01T00:00:00+00:01)."""
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None
