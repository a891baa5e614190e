"""`cds-service send` and `cds-service load-fixtures`: a trial that gives the documented answers on any date."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import requests

from .configuration import PROJECT_ROOT
from .trial import shift_dates

SERVICE_FOR_HOOK = {"order-select": "lumbar-mri-order-select", "order-sign": "lumbar-mri-order-sign"}
FIXTURES = PROJECT_ROOT / "fixtures"


def send(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    failed = 0
    for path in args.requests:
        try:
            request = shift_dates(json.loads(Path(path).read_text(encoding="utf-8")), now)
        except (OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        service = SERVICE_FOR_HOOK.get(request.get("hook"), str(request.get("hook")))
        headers = {"Content-Type": "application/json"}
        if args.token:
            headers["Authorization"] = f"Bearer {args.token}"
        try:
            response = requests.post(f"{args.url.rstrip('/')}/cds-services/{service}", json=request, headers=headers,
                                     timeout=30)  # fmt: skip
        except requests.RequestException as exc:
            print(f"{path}: {type(exc).__name__}: is the service running at {args.url}?", file=sys.stderr)
            failed += 1
            continue
        if response.status_code != 200:
            failed += 1
        if args.json:
            print(response.text)
            continue
        print(f"{Path(path).name}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            continue
        for card in body.get("cards", []):
            print(f"  [{card['indicator']}] {card['source']['topic']['code']}: {card['summary']}")
        for action in body.get("systemActions", []):
            rating = next((e["valueCodeableConcept"]["coding"][0]["code"] for e in action["resource"].get("extension", [])
                           if e.get("url", "").endswith("/pama-rating")), None)  # fmt: skip
            print(f"  rating {action['resource'].get('id')}: {rating}")
        for issue in body.get("issue", []):
            print(f"  {issue.get('severity')}: {issue.get('diagnostics')}")
    return 1 if failed else 0


def load_fixtures(args: argparse.Namespace) -> int:
    """PUT (create or update by id) every resource of fixtures/patients into a FHIR R4 server."""
    now = datetime.now(UTC)
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    base = args.fhir.rstrip("/")
    failed = loaded = 0
    for path in sorted((FIXTURES / "patients").glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for entry in bundle.get("entry", []):
            resource = shift_dates(entry["resource"], now)
            url = f"{base}/{resource['resourceType']}/{resource['id']}"
            try:
                response = requests.put(url, json=resource, headers=headers, timeout=30)
            except requests.RequestException as exc:
                print(
                    f"{path.name}: {resource['resourceType']}/{resource['id']}: {type(exc).__name__}", file=sys.stderr
                )
                failed += 1
                continue
            if response.status_code >= 300:
                print(f"{path.name}: {resource['resourceType']}/{resource['id']}: HTTP {response.status_code}",
                      file=sys.stderr)  # fmt: skip
                failed += 1
            else:
                loaded += 1
    print(f"{loaded} resources loaded into {base}" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0
