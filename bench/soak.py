#!/usr/bin/env python3
"""`make soak`: the served app (`cds-service serve`: granian, 2 workers) under a mixed load on loopback.

    SOAK_SECONDS=600 make soak      (default 600 s; SOAK_CLIENTS=4 concurrent clients)

Mix: valid hook calls (every clinical scenario), invalid ones (every negative fixture, with the
status each must get), calls without prefetch served by a local FHIR stub, and feedback; every
call carries a fresh client JWT (ES384). Reports unexpected statuses, latency percentiles and the
workers' memory growth (RSS after a warm-up versus at the end; worker recycling is off so that it
cannot hide a leak). Writes var/soak.json and prints it as the last line.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import jwt
import slow_clients
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from stub_process import start_fhir_stub

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "4"))
WARM_UP = min(30.0, SECONDS / 5)
ISSUER = "https://soak-client.example.org"
KEY = ec.generate_private_key(ec.SECP384R1())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


SLOW_HEADERS = int(os.environ.get("SOAK_SLOW_HEADERS", "100"))
SLOW_BODIES = int(os.environ.get("SOAK_SLOW_BODIES", "25"))
ISSUED: list[str] = []  # card uuids answered so far: feedback is accepted only for cards this service issued


def build_mix(stub_base: str) -> list[tuple[str, str, bytes, int]]:
    """(kind, path, body, expected status)"""
    scenarios = json.loads((ROOT / "fixtures" / "scenarios.json").read_text())["scenarios"]
    service = {
        "order-select": "/cds-services/lumbar-mri-order-select",
        "order-sign": "/cds-services/lumbar-mri-order-sign",
    }
    mix = []
    for name, scenario in scenarios.items():
        request = json.loads((ROOT / "fixtures" / "requests" / f"{name}.json").read_text())
        mix.append(("valid", service[scenario["hook"]], json.dumps(request).encode(), 200))
        if "lumbar" in name or scenario["orders"][0].get("code") in ("72148", "72149", "72158"):
            fallback = dict(
                request,
                fhirServer=stub_base,
                fhirAuthorization={
                    "access_token": "soak",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/*.read",
                    "subject": "soak",
                },
            )
            fallback.pop("prefetch")
            mix.append(("fallback", service[scenario["hook"]], json.dumps(fallback).encode(), 200))
    for path in sorted((ROOT / "fixtures" / "negative").glob("*.json")):
        case = json.loads(path.read_text())
        if case.get("contentType") or isinstance(case["expect"]["status"], list):
            continue
        body = case["raw"].encode() if "raw" in case else json.dumps(case["body"]).encode()
        mix.append(("invalid", case["path"], body, case["expect"]["status"]))
    feedback = {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-06-01T12:00:00Z",
                "overrideReason": {"reason": {"system": "urn:lumbar-mri-cds:override-reason", "code": "other"}},
            }
        ]
    }
    mix.append(("feedback", "/cds-services/lumbar-mri-order-select/feedback", json.dumps(feedback).encode(), 200))
    return mix


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="cds-soak-"))
    issuers = work / "issuers.json"
    key = {**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "soak-1", "alg": "ES384", "use": "sig"}
    issuers.write_text(json.dumps({"issuers": [{"iss": ISSUER, "jwks": {"keys": [key]}}]}))
    # The stub serves a patient record for every search of the fallback requests.
    record = json.loads((ROOT / "fixtures" / "requests" / "cancer-history.json").read_text())["prefetch"]
    stub, stub_base = start_fhir_stub(record, 5, work)
    port = free_port()
    env = {
        **os.environ,
        "CDS_AUTH": "required",
        "CDS_AUDIT_KEY": "soak-audit-key",
        "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "CDS_TRUSTED_ISSUERS": str(issuers),
        "CDS_DATABASE_URL": f"sqlite:///{work / 'soak.sqlite3'}",
        "CDS_FHIR_SERVER_ALLOWLIST": stub_base,
    }
    env.update(PORT=str(port), WEB_CONCURRENCY="2")
    server = subprocess.Popen(  # the served stack: cds-service serve (granian)
        [sys.executable, "-m", "cds_service.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        slow: dict = {}
        slow_thread = threading.Thread(  # slow clients connected for the whole soak: probe latency meanwhile
            target=lambda: slow.update(slow_clients.run(port, SLOW_HEADERS, SLOW_BODIES, SECONDS - 5)), daemon=True
        )
        slow_thread.start()
        result = drive(port, build_mix(stub_base), server.pid)
        slow_thread.join(30)
        result["slow_clients"] = slow
    finally:
        server.terminate()
        server.wait(10)
        stub.kill()
    (ROOT / "var").mkdir(exist_ok=True)
    (ROOT / "var" / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def drive(port: int, mix: list, master: int) -> dict:
    stop_at = time.time() + SECONDS
    warm_until = time.time() + WARM_UP
    lock = threading.Lock()
    latencies: list[float] = []
    counts: dict[str, int] = {}
    unexpected: list[str] = []
    rss_start: dict[int, int] = {}

    def one(kind: str, path: str, body: bytes, expected: int) -> None:
        if kind == "feedback":  # about a card this service issued to this client
            if not ISSUED:
                return
            entry = json.loads(body)
            entry["feedback"][0]["card"] = ISSUED[-1]
            body = json.dumps(entry).encode()
        now = int(time.time())
        token = jwt.encode(
            {
                "iss": ISSUER,
                "aud": f"http://127.0.0.1:{port}{path}",
                "iat": now,
                "exp": now + 300,
                "jti": str(uuid.uuid4()),
            },
            KEY,
            algorithm="ES384",
            headers={"kid": "soak-1"},
        )
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.perf_counter()
        try:
            connection.request(
                "POST",
                path,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {token}",
                    "Host": f"127.0.0.1:{port}",
                },
            )
            response = connection.getresponse()
            answer = response.read()
            status = response.status
            if kind == "valid" and status == 200:
                cards = json.loads(answer).get("cards") or []
                if cards:
                    ISSUED.append(cards[0]["uuid"])
        except OSError as exc:
            status = type(exc).__name__  # type: ignore[assignment]  # an error, counted as its name
        finally:
            connection.close()
        elapsed = time.perf_counter() - started
        with lock:
            counts[kind] = counts.get(kind, 0) + 1
            if time.time() > warm_until:
                latencies.append(elapsed)
            if status != expected:
                unexpected.append(f"{kind} {path} -> {status} (expected {expected})")

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.time() < stop_at:
            one(*rng.choice(mix))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(WARM_UP)
    rss_start = {pid: rss_kib(pid) for pid in worker_pids(master)}
    for thread in threads:
        thread.join()
    rss_end = {pid: rss_kib(pid) for pid in worker_pids(master)}
    start_total, end_total = sum(rss_start.values()), sum(rss_end.get(pid, 0) for pid in rss_start)
    ordered = sorted(latencies)
    return {
        "seconds": SECONDS,
        "clients": CLIENTS,
        "requests": sum(counts.values()),
        "by_kind": counts,
        "requests_per_second": round(sum(counts.values()) / SECONDS, 1),
        "unexpected_statuses": len(unexpected),
        "unexpected_examples": unexpected[:10],
        "p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1) if ordered else None,
        "worker_rss_kib_after_warm_up": start_total,
        "worker_rss_kib_at_end": end_total,
        "worker_restarts": sorted(set(rss_start) ^ set(rss_end)) != [],
        "memory_growth_percent": round((end_total - start_total) / start_total * 100, 2) if start_total else None,
    }


if __name__ == "__main__":
    main()
