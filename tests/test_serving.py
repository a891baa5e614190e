"""The served stack (`cds-service serve`) under slow clients: probes and hook calls are still answered."""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from urllib.parse import urlsplit

import pytest
from conftest import ROOT, load_request
from servers import served_stack

from cds_service.storage import Store

sys.path.insert(0, str(ROOT / "bench"))
import slow_clients  # noqa: E402


@pytest.fixture
def served(tmp_path):
    env = {"CDS_AUTH": "off", "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cds.sqlite3", "WEB_CONCURRENCY": "2",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "CDS_BODY_READ_TIMEOUT_S": "2"}  # fmt: skip
    with served_stack(env, tmp_path / "serve.log") as base:
        yield urlsplit(base).port


def test_probes_and_hook_calls_are_answered_within_a_second_while_slow_clients_hold_connections(served):
    """Regression: four clients sending one header byte every 2 s left 0 of 22 /healthz probes answered
    under gunicorn's sync workers. Here 200 slow-header and 50 slow-body connections stay open."""
    result = slow_clients.run(served, headers=200, bodies=50, seconds=6, warmup=1.5)
    for kind in ("health", "hook"):
        summary = result[kind]
        assert summary["probes"] >= 3 and summary["answered"] == summary["probes"], result
        assert summary["within_1s"] == summary["probes"], result


def test_a_client_that_never_finishes_its_headers_is_cut_off(served):
    with socket.create_connection(("127.0.0.1", served)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.settimeout(10)
        started = time.monotonic()
        try:
            answer = sock.recv(100)  # the server closes the connection (or answers 408)
        except ConnectionError:
            answer = b""
        assert time.monotonic() - started < 9  # the header read limit (5 s), not the 10 s we would wait
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_a_chunked_hook_call_is_answered_like_any_other(served):
    body = json.dumps(load_request("acute-lbp-defer")).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096]) for i in range(0, len(body), 4096)
    )
    with socket.create_connection(("127.0.0.1", served)) as sock:
        sock.sendall(b"POST /cds-services/lumbar-mri-order-select HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")  # fmt: skip
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"no red flags recorded" in answer


def test_a_client_that_drips_its_body_is_answered_408_and_holds_no_thread(served):
    with socket.create_connection(("127.0.0.1", served)) as sock:
        sock.sendall(b"POST /cds-services/lumbar-mri-order-select HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")  # fmt: skip
        sock.settimeout(10)
        started = time.monotonic()
        answer = sock.recv(200)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 6  # CDS_BODY_READ_TIMEOUT_S=2


def test_audit_records_queued_when_the_server_is_stopped_are_written_out(tmp_path):
    """Regression: granian stopped its workers without running atexit, so the background audit
    writer's queue was lost; five answered calls followed at once by SIGTERM left 0 rows."""
    database = f"sqlite:///{tmp_path}/cds.sqlite3"
    body = json.dumps(load_request("acute-lbp-defer")).encode()
    env = {"CDS_AUTH": "off", "CDS_DATABASE_URL": database, "WEB_CONCURRENCY": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}  # fmt: skip
    with served_stack(env, tmp_path / "serve.log") as base:
        for _ in range(5):
            request = urllib.request.Request(base + "/cds-services/lumbar-mri-order-select", data=body,
                                             headers={"Content-Type": "application/json"})  # fmt: skip
            assert urllib.request.urlopen(request, timeout=5).status == 200
    assert len(Store(database).audit_rows()) == 5


@pytest.mark.parametrize("name, value", [("CDS_APP_THREADS", "0"), ("CDS_BODY_READ_TIMEOUT_S", "never"),
                                         ("PORT", "http"), ("WEB_CONCURRENCY", "0")])  # fmt: skip
def test_a_bad_serving_setting_stops_serve_before_any_worker_starts(tmp_path, name, value):
    """Before, these ended in a traceback, from granian's workers or from serve itself (with the value)."""
    import os
    import subprocess

    from servers import free_port

    env = {**os.environ, "CDS_AUTH": "off", "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cds.sqlite3",
           "PORT": str(free_port()), name: value}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "cds_service.cli", "serve"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert f"not started: {name}:" in done.stderr
    assert value not in done.stderr.split(f"{name}:", 1)[1]  # the value is never echoed
    assert "Traceback" not in done.stderr
