"""CDS Hooks 2.0 wire format: request and feedback models, and errors as OperationOutcomes.

Requests are decoded with msgspec straight from bytes into slim typed structs: only the fields
the service reads are materialised, unknown fields are ignored (clients add their own), and
prefetch values stay as raw JSON until patient_data decides which of them it needs.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]


# --- service request ------------------------------------------------------------------------

class FhirAuthorization(msgspec.Struct):
    access_token: NonEmptyStr
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


class HookContext(msgspec.Struct):
    patientId: NonEmptyStr
    draftOrders: DraftOrders
    userId: str | None = None
    encounterId: str | None = None
    selections: list[str] | None = None


class HookRequest(msgspec.Struct):
    hook: NonEmptyStr
    hookInstance: NonEmptyStr
    context: HookContext
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    # Raw: a 2 MB prefetch is skimmed, not parsed, until a key is known to be needed.
    prefetch: dict[str, msgspec.Raw] | None = None


# --- feedback -------------------------------------------------------------------------------

class Coding(msgspec.Struct):
    code: NonEmptyStr
    system: NonEmptyStr
    display: str | None = None


class OverrideReason(msgspec.Struct):
    reason: Coding | None = None
    userComment: str | None = None


class AcceptedSuggestion(msgspec.Struct):
    id: NonEmptyStr


class FeedbackEntry(msgspec.Struct):
    card: NonEmptyStr
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
_QUOTED_VALUE = re.compile(r"'[^']*'")


def describe_decode_error(exc: msgspec.DecodeError | msgspec.ValidationError) -> tuple[str, list[str] | None]:
    """A message and FHIRPath-like location from a msgspec error, without echoing input values."""
    message = str(exc)
    match = _PATH.search(message)
    expression = [match.group(1).replace("[", ".").replace("]", "") or "$"] if match else None
    message = _PATH.sub("", message)
    message = _QUOTED_VALUE.sub("(value)", message)  # e.g. "Invalid enum value 'x'": never echo input
    if isinstance(exc, msgspec.ValidationError):
        where = expression[0] if expression else "body"
        return f"Invalid request: {message} at {where}", expression
    return f"Request body is not valid JSON: {message}", None


_decoders: dict[type, msgspec.json.Decoder] = {}


def decode(body: bytes, model: type[msgspec.Struct]) -> Any:
    """Decode and validate `body` as `model`, or raise CdsError(400) naming the offending field."""
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model)
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        message, expression = describe_decode_error(exc)
        raise CdsError(400, message, code="structure" if expression is None else "invalid", expression=expression) from None
    except RecursionError:  # absurdly deep nesting
        raise CdsError(400, "Request body is nested too deeply", code="structure") from None


def parse_instant(value: str) -> datetime | None:
    """An RFC 3339 instant with an offset (`Z` allowed), or None."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
