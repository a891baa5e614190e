"""Everything stored (feedback, audit, the jti replay store) on SQLite and on PostgreSQL.

PostgreSQL runs when CDS_TEST_POSTGRES_URL points at a server (.ci/run starts one); otherwise
these tests are skipped, and say why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT, SELECT, load_request
from helpers import FEEDBACK, issue_cards, overridden
from servers import gunicorn
from sqlalchemy import create_engine, inspect, text

from cds_service.analytics import build_report
from cds_service.storage import Store, metadata


def _postgres_url() -> str:
    url = os.environ.get("CDS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(
            "PostgreSQL storage tests skipped: CDS_TEST_POSTGRES_URL is not set (.ci/run starts a server and sets it)"
        )
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("DROP TABLE IF EXISTS audit_card, audit, feedback, jti_seen, alembic_version CASCADE")
            )
    except Exception as exc:  # noqa: BLE001 - any connection failure means: skip, and say why
        pytest.skip(f"PostgreSQL storage tests skipped: {url.split('@')[-1]} not reachable ({type(exc).__name__})")
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'cds.sqlite3'}" if request.param == "sqlite" else _postgres_url()


def test_migrations_create_the_schema_and_run_again_as_a_no_op(database_url):
    store = Store(database_url)
    store.migrate()
    store.migrate()
    tables = set(inspect(store.engine).get_table_names())
    assert {"feedback", "jti_seen", "audit", "audit_card", "alembic_version"} <= tables


def test_the_tables_in_code_match_the_migrations(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store = Store(database_url)
    store.migrate()
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_the_code_knows_the_latest_schema_revision():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from cds_service.storage import MIGRATIONS, SCHEMA_REVISION

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


def test_instances_starting_at_once_migrate_one_after_the_other(database_url):
    """Three instances (processes) start together on an empty database: all come up."""
    code = f"from cds_service import create_app; create_app({{'database_url': {database_url!r}, 'auth': 'off'}}); print('up')"
    starts = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = [process.communicate(timeout=60) for process in starts]
    assert [process.returncode for process in starts] == [0, 0, 0], [err.decode()[-500:] for _, err in results]
    assert all(out.strip() == b"up" for out, _ in results)


def test_feedback_posted_concurrently_to_two_instances_is_stored_exactly_once(make_app):
    first, second = make_app().test_client(), make_app().test_client()
    issue_cards(first.application, *(f"card-{i}" for i in range(60)))
    entries = [overridden(card=f"card-{i % 60}") for i in range(240)]  # every entry sent four times

    def post(index):
        client = first if index % 2 else second
        return client.post(FEEDBACK, json={"feedback": [entries[index]]}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(post, range(len(entries))))
    assert set(statuses) == {200}
    rows = Store(first.application.extensions["cds"].settings.database_url).feedback_rows()
    assert sorted(row["card_uuid"] for row in rows) == sorted(f"card-{i}" for i in range(60))


def test_feedback_posted_concurrently_to_two_gunicorn_workers_is_stored_exactly_once(database_url, tmp_path):
    env = {"CDS_AUTH": "off", "CDS_DATABASE_URL": database_url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")}
    store = Store(database_url)
    store.migrate()
    issue_cards(store, *(f"w-{i}" for i in range(50)))
    with gunicorn(env) as (base, _logs):

        def post(index):
            body = json.dumps({"feedback": [overridden(card=f"w-{index % 50}")]}).encode()
            request = urllib.request.Request(base + FEEDBACK, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status

        with ThreadPoolExecutor(max_workers=6) as pool:
            assert set(pool.map(post, range(200))) == {200}
    rows = Store(database_url).feedback_rows()
    assert sorted(row["card_uuid"] for row in rows) == sorted(f"w-{i}" for i in range(50))


def test_a_restart_loses_nothing(make_app):
    app = make_app()
    client = app.test_client()
    card = client.post(SELECT, json=load_request("acute-lbp-defer")).get_json()["cards"][0]
    client.post(FEEDBACK, json={"feedback": [overridden(card=card["uuid"])]})
    restarted = make_app()
    store = restarted.extensions["cds"].store
    assert [row["card_uuid"] for row in store.feedback_rows()] == [card["uuid"]]
    assert [row["card_topics"] for row in store.audit_rows()] == [["defer-imaging"]]
    assert build_report(store)["by_topic"]["defer-imaging"]["overridden"] == 1


def test_jti_store_is_shared_and_forgets_expired_ids(database_url):
    first, second = Store(database_url), Store(database_url)
    first.migrate()
    assert first.remember_jti("iss", "a", time.time() + 300) is True
    assert second.remember_jti("iss", "a", time.time() + 300) is False
    assert second.remember_jti("other-iss", "a", time.time() + 300) is True
    first.remember_jti("iss", "old", time.time() - 1)
    first._jti_writes = 255  # the next write sweeps expired ids
    first.remember_jti("iss", "b", time.time() + 300)
    with first.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM jti_seen")).scalar() == 3


def test_audit_and_report_on_this_database(make_app):
    app = make_app(audit_key="k")
    client = app.test_client()
    for name in ("acute-lbp-defer", "cauda-equina", "pacemaker-ct-alternative", "other-imaging"):
        client.post(SELECT, json=load_request(name))
    report = build_report(app.extensions["cds"].store)
    assert report["consultations"] == 3
    assert set(report["by_topic"]) == {"defer-imaging", "urgent-imaging", "ct-alternative"}
    assert report["ratings_by_ordered_code"] == {"72148": {"not-appropriate": 1, "appropriate": 2}}


def test_the_dashboard_renders_from_the_shared_store_of_two_instances(make_app, database_url):
    """Two instances write to one store; either one's dashboard shows both instances' consultations."""
    first = make_app(database_url=database_url, dashboard_token="t", audit_key="k")
    second = make_app(database_url=database_url, dashboard_token="t", audit_key="k")
    for app, name in ((first, "acute-lbp-defer"), (second, "cauda-equina")):
        assert app.test_client().post(SELECT, json=load_request(name)).status_code == 200
    page = second.test_client().get("/dashboard", headers={"Authorization": "Bearer t"}).get_data(as_text=True)
    assert "Consultations: <strong>2</strong>" in page
    assert "aria-label='Cards shown by topic'" in page and page.count("<rect") >= 2


def test_a_slow_database_lets_calls_queued_behind_it_run_on_another_thread(tmp_path):
    """Under `cds-service serve`, a call waiting on the database (here the token replay check) is a
    wait: the next call does not queue behind it."""
    import threading

    from sqlalchemy import event

    from cds_service.app_threads import AppThreads

    store = Store(f"sqlite:///{tmp_path / 'slow.sqlite3'}")
    store.migrate()
    other_ran = threading.Event()

    @event.listens_for(store.engine, "before_cursor_execute")
    def slow_database(*_args):  # the database answers only once the other call has run
        other_ran.wait(5)

    pool, stored = AppThreads(4), threading.Event()
    pool.submit(lambda: (store.remember_jti("https://ehr.example.org", "jti-1", time.time() + 60), stored.set()))
    time.sleep(0.1)
    pool.submit(other_ran.set)
    assert stored.wait(3)  # the first call is not stuck for the 5 s
    assert other_ran.is_set()
