"""Feedback endpoint (CDS Hooks 2.0 "Feedback"): validate, then store every entry durably."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from flask import Blueprint, g
from sqlalchemy.exc import SQLAlchemyError

from .app_threads import waiting
from .protocol import CdsError, FeedbackEntry, FeedbackRequest, decode, parse_instant
from .runtime import json_response, request_body, require_json, runtime

log = logging.getLogger(__name__)
bp = Blueprint("feedback", __name__)


@bp.post("/cds-services/<service_id>/feedback")
def receive_feedback(service_id: str):
    rt = runtime()
    if service_id not in rt.services:
        raise CdsError(404, "No CDS service with this id (see GET /cds-services)", code="not-found")
    require_json()
    body = request_body()
    message = decode(body, FeedbackRequest)
    client = g.get("cds_client")
    issuer, tenant = (client.iss, client.tenant) if client else (None, None)
    leeway = timedelta(seconds=rt.settings.jwt_leeway_seconds)
    rows = [_row(index, entry, leeway) for index, entry in enumerate(message.feedback)]
    try:
        _check_recipients(rt, message.feedback, issuer, tenant)
        for row in rows:
            row["issuer"], row["tenant"] = issuer, tenant
        stored, duplicates = rt.store.add_feedback(service_id, rows)
    except SQLAlchemyError as exc:
        log.error("feedback not stored: database unavailable (%s)", type(exc).__name__)
        raise CdsError(
            503,
            "Feedback could not be stored right now; nothing was kept. Retry later.",
            code="transient",
            headers={"Retry-After": "30"},
        ) from None
    log.info("feedback service=%s entries=%d stored=%d duplicates=%d", service_id, len(rows), stored, duplicates)
    return json_response({"stored": stored, "duplicates": duplicates})


def _check_recipients(rt: Any, entries: list[FeedbackEntry], issuer: str | None, tenant: str | None) -> None:
    """Feedback only for cards this service issued, from the client (and tenant) that was shown them."""
    cards = [entry.card for entry in entries]
    recipients = rt.store.card_recipients(cards)
    for wait in (0.0, 0.3, 0.7):  # audit rows are written in the background, maybe by another worker
        if len(recipients) == len(set(cards)):
            break
        rt.audit.flush(timeout=2.0)
        with waiting():
            time.sleep(wait)
        recipients = rt.store.card_recipients(cards)
    for index, entry in enumerate(entries):
        where = [f"feedback.{index}.card"]
        shown_to = recipients.get(entry.card)
        if shown_to is None:
            raise CdsError(404, "This card was not issued by this service", code="not-found", expression=where)
        shown_issuer, shown_tenant = shown_to
        if shown_issuer != issuer or (shown_tenant is not None and shown_tenant != tenant):
            raise CdsError(403, "Feedback is accepted only from the client that was shown the card",
                           code="forbidden", expression=where)  # fmt: skip


def _row(index: int, entry: FeedbackEntry, leeway: timedelta) -> dict:
    where = f"feedback.{index}"
    timestamp = parse_instant(entry.outcomeTimestamp)
    if timestamp is None:
        raise CdsError(
            400,
            "outcomeTimestamp must be an RFC 3339 instant with a time zone, e.g. 2026-01-02T03:04:05Z",
            expression=[f"{where}.outcomeTimestamp"],
        )
    if timestamp > datetime.now(UTC) + leeway:
        raise CdsError(400, "outcomeTimestamp is in the future", expression=[f"{where}.outcomeTimestamp"])
    if entry.outcome == "accepted" and not entry.acceptedSuggestions:
        raise CdsError(
            400,
            "acceptedSuggestions is required when outcome is 'accepted'",
            expression=[f"{where}.acceptedSuggestions"],
        )
    reason = entry.overrideReason
    if reason is not None and reason.reason is None and not reason.userComment:
        raise CdsError(400, "overrideReason needs a reason or a userComment", expression=[f"{where}.overrideReason"])
    return {
        "raw": msgspec.to_builtins(entry),
        "card_uuid": entry.card,
        "outcome": entry.outcome,
        "accepted_suggestions": [s.id for s in entry.acceptedSuggestions] if entry.acceptedSuggestions else None,
        "override_reason_system": reason.reason.system if reason and reason.reason else None,
        "override_reason_code": reason.reason.code if reason and reason.reason else None,
        "override_reason_display": reason.reason.display if reason and reason.reason else None,
        "user_comment": reason.userComment if reason else None,
        "outcome_timestamp": timestamp,
        "received_at": datetime.now(UTC),
    }
