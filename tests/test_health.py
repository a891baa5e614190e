"""Liveness and readiness."""

from __future__ import annotations

from sqlalchemy import create_engine


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_checks_the_database(client):
    body = client.get("/readyz").get_json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["audit"]["backlog"] == 0


def test_readyz_is_503_when_the_database_is_unreachable(app, client, tmp_path):
    app.extensions["cds"].store.engine = create_engine(f"sqlite:///{tmp_path}/missing-dir/nothing.sqlite3")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "unreachable"
