"""Durable storage through SQLAlchemy: SQLite by default, PostgreSQL (or any SQLAlchemy URL) via
CDS_DATABASE_URL. The schema is managed by Alembic (cds_service/migrations); these tables mirror it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from .app_threads import waiting

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)
SCHEMA_REVISION = "0003"  # the head of migrations/versions (a test keeps them in step)
_MIGRATING = threading.Lock()  # Alembic's migration context is process-global: one migration at a time
metadata = MetaData()

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # sha256 of service id + the entry as received: the same entry posted twice is stored once
    Column("entry_key", String(64), nullable=False, unique=True),
    Column("service_id", String(64), nullable=False),
    Column("card_uuid", String(128), nullable=False, index=True),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", JSON, nullable=True),
    Column("override_reason_system", String(255), nullable=True),
    Column("override_reason_code", String(128), nullable=True),
    Column("override_reason_display", String(255), nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("issuer", String(255), nullable=True),  # the CDS client that reported it (migration 0002)
    Column("tenant", String(255), nullable=True),
)

jti_seen = Table(
    "jti_seen",
    metadata,
    # sha256 of issuer and jti: each token id is accepted once within its lifetime, across instances
    Column("token_key", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("hook", String(32), nullable=False),
    Column("hook_instance", String(128), nullable=False),
    Column("tenant", String(255), nullable=True),
    Column("consult_id", String(64), nullable=False, unique=True),
    Column("issuer", String(255), nullable=True),  # the CDS client that was shown the cards (migration 0002)
    Column("practitioner", String(255), nullable=True),  # who ordered: a keyed hash by default (migration 0003)
    Column("department", String(255), nullable=True),  # the encounter's service type or location, if sent
    Column("patient_key", String(64), nullable=False, index=True),  # HMAC of the patient id: never the id
    Column("order_system", String(255), nullable=False),
    Column("order_code", String(64), nullable=False),
    Column("rating", String(32), nullable=False),
    Column("acr_category", String(8), nullable=True),
    Column("variant", Integer, nullable=True),
    Column("rules_fired", JSON, nullable=False),
    Column("card_topics", JSON, nullable=False),
    Column("fallback_used", Boolean, nullable=False),
    Column("silent", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=False),
)

audit_card = Table(
    "audit_card",
    metadata,
    # feedback.card_uuid joins here, and through consult_id to the consultation
    Column("card_uuid", String(64), primary_key=True),
    Column("consult_id", String(64), ForeignKey("audit.consult_id"), nullable=False, index=True),
    Column("topic", String(64), nullable=False),
    Column("rule_id", String(16), nullable=False),
    Column("indicator", String(16), nullable=False),
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, cheap commits
    cursor.execute("PRAGMA busy_timeout=5000")  # several gunicorn workers share the file
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def normalised_url(database_url: str) -> str:
    """postgres:// and postgresql:// (as Heroku, Render and many libpq tools write them) mean the psycopg
    3 driver this service ships with."""
    for prefix in ("postgres://", "postgresql://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


class Store:
    def __init__(self, database_url: str) -> None:
        url = make_url(normalised_url(database_url))
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        self._jti_writes = 0
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    # Every use of the database goes through these two: it is a wait, during which calls queued behind
    # this thread may run on another (app_threads.py).
    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        with waiting(), self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        with waiting(), self.engine.connect() as connection:
            yield connection

    def schema_revision(self) -> str | None:
        try:
            with self._connect() as connection:
                return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError:
            return None

    def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision. When the database is there already,
        Alembic is not even imported (a fast start for every worker and instance)."""
        if self.schema_revision() == SCHEMA_REVISION:
            self.engine.dispose()
            return
        from alembic import command
        from alembic.config import Config

        config = Config(str(MIGRATIONS / "alembic.ini"))
        config.set_main_option("script_location", str(MIGRATIONS))
        with _MIGRATING, self._migration_lock(), self._begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        # Connections made here must not be inherited by forked gunicorn workers.
        self.engine.dispose()

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """Instances starting together migrate one after the other (PostgreSQL: an advisory lock in
        migrations/env.py; SQLite: a lock file beside the database)."""
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    migrated = False  # set once the schema is current; until then readiness keeps trying

    def migrate_if_reachable(self) -> bool:
        """Migrate now if the database answers; False (logged) when it does not, so that hook calls are
        answered while the database is away at start, and readiness migrates once it is back."""
        try:
            self.migrate()
        except SQLAlchemyError as exc:
            log.warning("database unreachable at start (%s): not ready until it answers", type(exc).__name__)
            return False
        self.migrated = True
        return True

    def ping(self) -> None:
        if not self.migrated and not self.migrate_if_reachable():
            raise OperationalError("migrate", {}, Exception("the database was unreachable"))
        with self._connect() as connection:
            connection.execute(text("SELECT 1"))

    def _insert_ignoring_duplicates(self, table: Table, key: str = "entry_key"):
        """INSERT ... ON CONFLICT DO NOTHING RETURNING key: a row back means it was new. (rowcount
        is not reliable here: psycopg reports -1.)"""
        from sqlalchemy.dialects import postgresql, sqlite

        statement: Any
        if self.engine.dialect.name == "sqlite":
            statement = sqlite.insert(table)
        elif self.engine.dialect.name == "postgresql":
            statement = postgresql.insert(table)
        else:  # pragma: no cover - other databases: plain insert, duplicates raise
            from sqlalchemy import insert

            return insert(table).returning(table.c[key])
        return statement.on_conflict_do_nothing(index_elements=[key]).returning(table.c[key])

    # --- feedback ---------------------------------------------------------------------------
    def add_feedback(self, service_id: str, rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Store feedback rows in one transaction. Returns (newly stored, already present)."""
        rows = list(rows)
        for row in rows:
            row["service_id"] = service_id
            row["entry_key"] = entry_key(service_id, row.pop("raw"))
        stored = 0
        with self._begin() as connection:
            statement = self._insert_ignoring_duplicates(feedback)
            for row in rows:
                stored += connection.execute(statement, row).first() is not None
        return stored, len(rows) - stored

    def card_recipients(self, card_uuids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
        """card uuid -> (issuer, tenant) of the client that was shown it, for the cards this service issued."""
        wanted = sorted(set(card_uuids))
        if not wanted:
            return {}
        query = (
            select(audit_card.c.card_uuid, audit.c.issuer, audit.c.tenant)
            .join(audit, audit.c.consult_id == audit_card.c.consult_id)
            .where(audit_card.c.card_uuid.in_(wanted))
        )
        with self._connect() as connection:
            return {row.card_uuid: (row.issuer, row.tenant) for row in connection.execute(query)}

    def feedback_rows(self) -> list[dict[str, Any]]:
        with self._connect() as connection:
            return [dict(row._mapping) for row in connection.execute(select(feedback).order_by(feedback.c.id))]

    # --- jti replay store ----------------------------------------------------------------------
    def remember_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        """True when this (issuer, jti) was not seen before; it is remembered until `expires_at`."""
        key = hashlib.sha256(issuer.encode() + b"\0" + jti.encode()).hexdigest()
        with self._begin() as connection:
            new = (
                connection.execute(
                    self._insert_ignoring_duplicates(jti_seen, "token_key"),
                    {"token_key": key, "expires_at": expires_at},
                ).first()
                is not None
            )
            self._jti_writes += 1
            if self._jti_writes % 256 == 0:  # forget expired ids now and then
                connection.execute(delete(jti_seen).where(jti_seen.c.expires_at < time.time()))
        return new

    # --- audit ---------------------------------------------------------------------------------
    def add_audit(self, records: Iterable[dict[str, Any]]) -> None:
        """Each record: the audit columns plus "cards": [{card_uuid, topic, rule_id, indicator}].
        A batch is two bulk inserts, whatever its size."""
        records = list(records)
        cards = [{**card, "consult_id": record["consult_id"]} for record in records for card in record["cards"]]
        with self._begin() as connection:
            connection.execute(
                audit.insert(), [{k: v for k, v in record.items() if k != "cards"} for record in records]
            )
            if cards:
                connection.execute(audit_card.insert(), cards)

    def audit_rows(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query = select(audit).order_by(audit.c.id)
        if since is not None:
            query = query.where(audit.c.created_at >= since)
        with self._connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def cards_with_feedback(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Every card shown since `since`, with each feedback entry reported for it (or none)."""
        query = (
            select(
                audit_card.c.card_uuid,
                audit_card.c.topic,
                audit_card.c.rule_id,
                audit.c.silent,
                audit.c.created_at,
                audit.c.practitioner,
                audit.c.service_id,
                audit.c.tenant,
                feedback.c.id.label("feedback_id"),
                feedback.c.outcome,
                feedback.c.outcome_timestamp,
                feedback.c.override_reason_code,
                feedback.c.override_reason_display,
            )
            .select_from(
                audit_card.join(audit, audit_card.c.consult_id == audit.c.consult_id).outerjoin(
                    feedback, feedback.c.card_uuid == audit_card.c.card_uuid
                )
            )
            .order_by(audit_card.c.card_uuid, feedback.c.received_at, feedback.c.id)  # latest received wins
        )
        if since is not None:
            query = query.where(audit.c.created_at >= since)
        with self._connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]


def entry_key(service_id: str, entry: Any) -> str:
    canonical = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(service_id.encode() + b"\0" + canonical).hexdigest()
