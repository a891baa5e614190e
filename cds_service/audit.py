"""The audit trail: one record per evaluated order, without direct identifiers.

The patient appears only as a keyed hash (HMAC-SHA256 with the site secret CDS_AUDIT_KEY), so
consultations of one patient can be linked, but the id cannot be recovered without the key.
Card uuids are recorded so that feedback joins to the consultation that showed the card.
Writing never fails a hook call: records are queued and written in batches by a thread
(AuditWrite.BACKGROUND), kept and retried while the database is away, within a bounded queue.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import queue
import secrets
import threading
import time
import weakref
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError, TimeoutError

from .app_threads import waiting
from .configuration import AuditWrite, PractitionerRecord
from .storage import Store

log = logging.getLogger(__name__)
MAX_QUEUED = 10_000
BATCH = 500
GATHER_SECONDS = 0.2
_TRAILS: weakref.WeakSet[AuditTrail] = weakref.WeakSet()  # writers to drain when the process exits


def department_of(record: Any) -> str | None:
    """Where the order was placed: the encounter's service type, else its first location, else the
    organisation serving it (display texts only; never an identifier), when the client sent one.
    The encounter is the JSON as sent (no rule reads it, so it has no R4B model): checked here."""
    encounters = record.encounters if record is not None else []
    for encounter in encounters:
        if not isinstance(encounter, dict):
            continue
        service = encounter.get("serviceType")
        if isinstance(service, dict):
            codings = service.get("coding")
            displays = [c.get("display") for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []
            text = next((t for t in [service.get("text"), *displays] if isinstance(t, str) and t), None)
            if text:
                return text[:255]
        locations = encounter.get("location")
        for location in locations if isinstance(locations, list) else []:
            display = _display(location.get("location")) if isinstance(location, dict) else None
            if display:
                return display
        display = _display(encounter.get("serviceProvider"))
        if display:
            return display
    return None


def _display(reference: Any) -> str | None:
    display = reference.get("display") if isinstance(reference, dict) else None
    return display[:255] if isinstance(display, str) and display else None


def is_transient(exc: SQLAlchemyError) -> bool:
    """A database away (connection, timeout, lock) rather than data it refuses (too long, invalid)."""
    return isinstance(exc, OperationalError | InterfaceError | TimeoutError | DisconnectionError) or bool(
        getattr(exc, "connection_invalidated", False))  # fmt: skip


@atexit.register
def flush_all(timeout: float = 5.0) -> None:
    """Drain every writer of this process: at exit, and from gunicorn's worker_exit on SIGTERM."""
    for trail in list(_TRAILS):
        trail.flush(timeout)


class AuditTrail:
    def __init__(
        self,
        store: Store,
        key: str | None,
        mode: AuditWrite,
        practitioner: PractitionerRecord = PractitionerRecord.HASH,
    ) -> None:
        self.store = store
        self.mode = mode
        self.practitioner = practitioner
        if not key:
            log.warning(
                "CDS_AUDIT_KEY is not set: patient keys in the audit trail use a random key for this "
                "process and cannot be linked across restarts. Set a site secret in production."
            )
        self._key = (key or secrets.token_hex(32)).encode()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=MAX_QUEUED)
        self._writer: threading.Thread | None = None
        self._writer_pid: int | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self.dropped = 0  # queue full: the database away too long
        self.rejected = 0  # refused by the database for their data

    def patient_key(self, patient_id: str) -> str:
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    def practitioner_of(self, user_id: str | None) -> str | None:
        """The ordering user as the audit trail keeps it: a pseudonym ("pr-" and 12 hex digits of a keyed
        hash, distinct from patient keys), the userId, or nothing."""
        if not user_id or self.practitioner is PractitionerRecord.OFF:
            return None
        if self.practitioner is PractitionerRecord.CLEAR:
            return user_id
        return "pr-" + hmac.new(self._key, b"practitioner\0" + user_id.encode(), hashlib.sha256).hexdigest()[:12]

    def records(
        self,
        service: Any,
        request: Any,
        evaluation: Any,
        issuer: str | None,
        tenant: str | None,
        latency_ms: float,
        silent: bool,
    ) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        patient_key = self.patient_key(request.context.patientId)
        rows = []
        for result in evaluation.results:
            assessment, study = result.assessment, result.order.study
            rows.append(
                {
                    "created_at": now,
                    "service_id": service.id,
                    "hook": service.hook,
                    "hook_instance": request.hookInstance,
                    "issuer": issuer,
                    "tenant": tenant,
                    "practitioner": self.practitioner_of(request.context.userId),
                    "department": department_of(evaluation.record),
                    "consult_id": result.consult_id,
                    "patient_key": patient_key,
                    "order_system": study.system,
                    "order_code": study.code,
                    "rating": assessment.rating,
                    "acr_category": assessment.category,
                    "variant": assessment.variant.number if assessment.variant else None,
                    "rules_fired": assessment.fired,
                    "card_topics": [card.topic.value for card in result.cards],
                    "fallback_used": bool(evaluation.record and evaluation.record.fallback_used),
                    "silent": silent,
                    "latency_ms": round(latency_ms, 2),
                    "cards": [
                        {
                            "card_uuid": card.uuid,
                            "topic": card.topic.value,
                            "rule_id": card.rule_id,
                            "indicator": card.indicator,
                        }
                        for card in result.cards
                    ],
                }
            )
        return rows

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.mode is AuditWrite.INLINE:
            try:
                self.store.add_audit(rows)
            except SQLAlchemyError as exc:
                log.error("audit records not written: database unavailable (%s)", type(exc).__name__)
            return
        self._ensure_writer()
        for row in rows:
            try:
                self._queue.put_nowait(row)
                self._idle.clear()
            except queue.Full:
                self.dropped += 1
                if self.dropped % 100 == 1:
                    log.error("audit queue full (database away too long): %d record(s) dropped so far", self.dropped)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record is written (tests, shutdown). False on timeout."""
        if self.mode is AuditWrite.INLINE:
            return True
        with waiting():
            return self._idle.wait(timeout)

    # --- the background writer (one per process: started lazily, so after gunicorn's fork) ----------
    def _ensure_writer(self) -> None:
        if self._writer is not None and self._writer_pid == os.getpid() and self._writer.is_alive():
            return
        with self._lock:
            if self._writer is None or self._writer_pid != os.getpid() or not self._writer.is_alive():
                self._writer_pid = os.getpid()
                self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._writer.start()
                _TRAILS.add(self)

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        backoff = 0.5
        while True:
            if not pending:
                try:
                    pending.append(self._queue.get(timeout=1.0))
                except queue.Empty:
                    self._idle.set()
                    continue
                time.sleep(GATHER_SECONDS)  # let a batch gather: fewer, larger transactions
            while len(pending) < BATCH:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.store.add_audit([dict(row, cards=list(row["cards"])) for row in pending])
            except SQLAlchemyError as exc:
                if not is_transient(exc):  # bad data, not a database away: find the bad record, keep the rest
                    pending = self._write_one_by_one(pending)
                    if pending:
                        continue
                    self._settle()
                    continue
                log.warning(
                    "audit write failed (%s): %d record(s) kept, retrying in %.1f s",
                    type(exc).__name__,
                    len(pending),
                    backoff,
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except Exception as exc:  # a bug must not kill the writer; the batch is logged by type and dropped
                log.error("audit batch dropped: %s", type(exc).__name__)
                self.rejected += len(pending)
            pending = []
            backoff = 0.5
            self._settle()

    def _settle(self) -> None:
        if self._queue.empty():
            self._idle.set()

    def _write_one_by_one(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """After a non-transient error: each record alone; one that fails again for its data is dropped
        with a log line (no values) and counted, so that it cannot stall the records after it. Returns
        the records to retry when the database went away meanwhile."""
        for index, row in enumerate(rows):
            try:
                self.store.add_audit([dict(row, cards=list(row["cards"]))])
            except SQLAlchemyError as exc:
                if is_transient(exc):
                    return rows[index:]
                self.rejected += 1
                log.error("audit record dropped: the database refused it (%s), service=%s",
                          type(exc).__name__, row.get("service_id"))  # fmt: skip
        return []

    @property
    def backlog(self) -> int:
        return self._queue.qsize()
