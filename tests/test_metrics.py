"""Prometheus metrics and the structured request log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

from conftest import SELECT, load_request
from servers import captured_logs, gunicorn


def sample(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_cards_ratings_and_auth_failures(make_app, tmp_path):
    from helpers import EC_KEY, ISS, jwk

    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1", "ES384")]}}]}))
    client = make_app(auth="required", trusted_issuers=issuers).test_client()
    before = client.get("/metrics").get_data(as_text=True)
    from helpers import token

    client.post(SELECT, json=load_request("cauda-equina"), headers={"Authorization": f"Bearer {token()}"})
    client.post(SELECT, json=load_request("cauda-equina"))  # no token
    client.post("/cds-services/no-such-service/../../etc", json={})
    after = client.get("/metrics")
    assert after.status_code == 200 and after.mimetype == "text/plain"
    text = after.get_data(as_text=True)
    delta = lambda name, **labels: sample(text, name, **labels) - sample(before, name, **labels)  # noqa: E731
    assert delta("cds_requests_total", service="lumbar-mri-order-select", status="200") == 1
    assert delta("cds_requests_total", service="lumbar-mri-order-select", status="401") == 1
    assert delta("cds_cards_total", topic="urgent-imaging", silent="false") == 1
    assert delta("cds_ratings_total", rating="appropriate") == 1
    assert delta("cds_auth_failures_total", reason="missing") == 1
    assert delta("cds_request_seconds_count", service="lumbar-mri-order-select") == 2
    labels = set(re.findall(r'service="([^"]*)"', text))  # label values never come from the URL
    assert labels <= {
        "lumbar-mri-order-select",
        "lumbar-mri-order-sign",
        "lumbar-mri-patient-view",
        "overview",  # the dashboard's endpoints
        "rules",
        "login",
        "call_service",
        "receive_feedback",
        "discovery",
        "exposition",
        "unknown",
        "alive",
        "ready",
        "serve",
    }, labels


def test_fallback_failures_are_counted(client):
    request = load_request("acute-lbp-defer")
    del request["prefetch"]["conditions"], request["prefetch"]["devices"]
    before = sample(client.get("/metrics").get_data(as_text=True), "cds_fhir_fallback_total", outcome="failed")
    assert client.post(SELECT, json=request).status_code == 412
    after = sample(client.get("/metrics").get_data(as_text=True), "cds_fhir_fallback_total", outcome="failed")
    assert after - before == 2


def test_metrics_add_up_across_gunicorn_workers(tmp_path):
    env = {
        "CDS_AUTH": "off",
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cds.sqlite3",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "CDS_LOG_FORMAT": "json",
    }
    with gunicorn(env) as (base, log_file):
        body = json.dumps(load_request("acute-lbp-defer")).encode()
        for _ in range(40):
            request = urllib.request.Request(base + SELECT, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    stderr = log_file.read_bytes()
    assert sample(text, "cds_requests_total", service="lumbar-mri-order-select", status="200") == 40
    assert sample(text, "cds_cards_total", topic="defer-imaging", silent="false") == 40
    assert sample(text, "cds_request_seconds_count", service="lumbar-mri-order-select") == 40
    assert len(os.listdir(tmp_path / "metrics")) >= 2  # one file set per worker, added up at /metrics
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    requests = [
        line for line in lines if line.get("event") == "request" and line.get("service") == "lumbar-mri-order-select"
    ]
    assert len(requests) == 40
    assert {"hookInstance", "status", "latency_ms", "rules", "ratings"} <= set(requests[0])


def test_calls_are_answered_when_the_multiprocess_metrics_folder_does_not_exist_yet(tmp_path):
    """Regression: granian started by hand with PROMETHEUS_MULTIPROC_DIR naming a folder not yet made
    answered every hook call 500 (the bench measured those 500s)."""
    code = (
        "import json, sys; from cds_service import create_app; "
        f"app = create_app({{'database_url': 'sqlite:///{tmp_path}/cds.sqlite3', 'auth': 'off'}}); "
        "body = open(sys.argv[1], 'rb').read(); "
        "answer = app.test_client().post('/cds-services/lumbar-mri-order-select', data=body, "
        "content_type='application/json'); print(answer.status_code)"
    )
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(load_request("acute-lbp-defer")))
    env = {"PATH": os.environ["PATH"], "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "not-made" / "metrics")}
    result = subprocess.run([sys.executable, "-c", code, str(request_file)], env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.stdout.strip() == "200", result.stderr[-2000:]
    assert os.listdir(tmp_path / "not-made" / "metrics")  # the call's samples were written


def test_one_json_line_per_request_with_the_decision(client):
    with captured_logs("json") as stream:
        client.post(SELECT, json=load_request("cauda-equina"))
        client.post(SELECT, data="{", content_type="application/json")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    first, second = [line for line in lines if line["event"] == "request"]
    assert first["service"] == "lumbar-mri-order-select" and first["status"] == 200
    assert first["rules"] == ["R-01", "R-18"] and first["ratings"] == ["appropriate"] and first["hookInstance"]
    assert first["level"] == "info" and "timestamp" in first and first["latency_ms"] > 0
    assert second["status"] == 400 and "not valid JSON" in second["problem"]


def test_console_lines_for_a_terminal(client):
    with captured_logs("console") as stream:
        client.post(SELECT, json=load_request("acute-lbp-defer"))
    line = [line for line in stream.getvalue().splitlines() if "request" in line][0]
    assert "service=lumbar-mri-order-select" in line and "status=200" in line and not line.startswith("{")
