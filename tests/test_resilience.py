"""Failing dependencies: a FHIR server that hangs, drips or refuses; a database that goes away."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import SELECT, load_request
from helpers import FEEDBACK, issue_cards, overridden, stored_rows, with_authorization
from sqlalchemy import create_engine


class LoopbackServer:
    """A misbehaving HTTP server on 127.0.0.1: `behaviour(connection)` runs for every connection."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.open_connections = 0
        self._count_lock = threading.Lock()  # handlers run on their own threads
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection):
        with self._count_lock:
            self.open_connections += 1
        try:
            connection.recv(65536)
            self.behaviour(connection, self.stopped)
        except OSError:
            pass
        finally:
            connection.close()
            with self._count_lock:
                self.open_connections -= 1

    def close(self):
        self.stopped.set()
        self.sock.close()


def drip(connection, stopped):
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n{")
    while not stopped.is_set():
        connection.sendall(b" ")
        time.sleep(0.1)


def hang(connection, stopped):
    stopped.wait(10)


def garbage(connection, stopped):
    connection.sendall(b"\x00\xffnot http at all\r\n\r\n")


@pytest.fixture
def server_factory():
    servers = []

    def start(behaviour):
        server = LoopbackServer(behaviour)
        servers.append(server)
        start.last = server
        return f"http://127.0.0.1:{server.port}/fhir"

    yield start
    for server in servers:
        server.close()


def missing_conditions(base):
    request = with_authorization(load_request("acute-lbp-defer"))
    request["fhirServer"] = base
    del request["prefetch"]["conditions"]
    return request


@pytest.mark.parametrize(
    "behaviour, reason", [(drip, "budget"), (hang, "timed out|budget"), (garbage, "reach|broke off|HTTP")]
)
def test_misbehaving_fhir_server_is_answered_within_the_budget(make_app, server_factory, behaviour, reason):
    import re

    base = server_factory(behaviour)
    client = make_app(fhir_server_allowlist=(base,), fhir_budget_seconds=0.8).test_client()
    started = time.monotonic()
    response = client.post(SELECT, json=missing_conditions(base))
    elapsed = time.monotonic() - started
    assert response.status_code == 412
    assert re.search(reason, " ".join(i["diagnostics"] for i in response.get_json()["issue"]))
    assert elapsed < 2.5  # the budget (0.8 s), not the server, decides


def test_a_dripping_server_is_let_go_once_the_budget_is_spent(make_app, server_factory):
    """Fetching threads are kept between calls; one still reading a drip after its call was
    answered would tie up the pool. The service hangs up instead, so the server sees its
    connection closed soon after the budget."""
    base = server_factory(drip)
    client = make_app(fhir_server_allowlist=(base,), fhir_budget_seconds=0.3).test_client()
    assert client.post(SELECT, json=missing_conditions(base)).status_code == 412
    deadline = time.monotonic() + 2.0
    while server_factory.last.open_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_factory.last.open_connections == 0


def test_refused_connection_is_a_prompt_412(make_app):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    base = f"http://127.0.0.1:{port}/fhir"
    client = make_app(fhir_server_allowlist=(base,), fhir_budget_seconds=2.0).test_client()
    started = time.monotonic()
    response = client.post(SELECT, json=missing_conditions(base))
    assert response.status_code == 412 and time.monotonic() - started < 1.5
    assert "could not reach" in response.get_json()["issue"][1]["diagnostics"]


def test_service_calls_answer_while_the_database_is_down(app, client, tmp_path):
    store = app.extensions["cds"].store
    store.engine = create_engine(f"sqlite:///{tmp_path}/gone/nowhere.sqlite3")
    response = client.post(SELECT, json=load_request("cauda-equina"))
    assert response.status_code == 200 and response.get_json()["cards"]


def test_tokens_are_not_accepted_while_the_replay_store_is_down(make_app, tmp_path):
    """Regression (trust round two, 11): with the database away, a jti was accepted once per worker and
    once more after recovery. The replay check now fails closed: 503 with Retry-After, and a token is
    accepted exactly once, after recovery."""
    import json

    from helpers import EC_KEY, ISS, jwk, token

    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1", "ES384")]}}]}))
    app = make_app(auth="required", trusted_issuers=issuers)
    store = app.extensions["cds"].store
    healthy = store.engine
    store.engine = create_engine(f"sqlite:///{tmp_path}/gone/nowhere.sqlite3")
    client = app.test_client()
    once = token()

    def call():
        return client.post(SELECT, json=load_request("acute-lbp-defer"), headers={"Authorization": f"Bearer {once}"})

    refused = call()
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert call().status_code == 503
    store.engine = healthy
    assert call().status_code == 200
    assert call().status_code == 401  # the replay, now in the shared store


def test_feedback_is_503_while_the_database_is_down_and_nothing_accepted_is_lost(app, client, tmp_path):
    issue_cards(app, "kept-1", "refused-1")
    assert client.post(FEEDBACK, json={"feedback": [overridden(card="kept-1")]}).status_code == 200
    store = app.extensions["cds"].store
    healthy = store.engine
    store.engine = create_engine(f"sqlite:///{tmp_path}/gone/nowhere.sqlite3")
    refused = client.post(FEEDBACK, json={"feedback": [overridden(card="refused-1")]})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert client.get("/readyz").status_code == 503
    store.engine = healthy
    assert client.get("/readyz").status_code == 200
    assert [row["card_uuid"] for row in stored_rows(app)] == ["kept-1"]
    assert (
        client.post(FEEDBACK, json={"feedback": [overridden(card="refused-1")]}).status_code == 200
    )  # the client's retry
    assert [row["card_uuid"] for row in stored_rows(app)] == ["kept-1", "refused-1"]
