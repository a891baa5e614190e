"""`cds-service`: the service's command line.

    cds-service serve
    cds-service send [--url URL] [--json] REQUEST.json...
    cds-service load-fixtures --fhir URL
    cds-service token --key PEM --iss ISS --aud URL [--kid KID]
    cds-service evaluate REQUEST.json [--now 2026-06-01T12:00:00Z] [--service ID] [--json]
    cds-service report [--since 30d] [--format table|csv|json]

`evaluate` prints, for each evaluated order, the rating, the rules that fired with their evidence,
and the cards, so that a clinical informaticist can review the logic without an EHR (nothing is
stored). `report` shows, per card topic and per rule, how often cards were shown, accepted and
overridden and why, and the rating distribution per ordered code, from the stored audit trail.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .configuration import load_settings
from .protocol import CdsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cds-service", description="Lumbar spine MRI appropriateness (CDS Hooks 2.0)")
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser("evaluate", help="evaluate a hook request file and explain the result")
    evaluate.add_argument(
        "request", type=Path, help="a CDS Hooks request (JSON), e.g. fixtures/requests/cauda-equina.json"
    )
    evaluate.add_argument(
        "--now", help="evaluate as of this instant (ISO 8601), e.g. the fixtures' 2026-06-01T12:00:00Z"
    )
    evaluate.add_argument("--service", help="service id (default: the service for the request's hook)")
    evaluate.add_argument("--json", action="store_true", help="print the CDS Hooks response instead of the report")
    commands.add_parser("serve", help="serve the service (granian; HOST, PORT, WEB_CONCURRENCY)")
    sender = commands.add_parser("send", help="post example requests to a running service, dates moved to today")
    sender.add_argument("requests", type=Path, nargs="+", help="CDS Hooks requests, e.g. fixtures/requests/*.json")
    sender.add_argument("--url", default="http://127.0.0.1:8080", help="the service's base URL")
    sender.add_argument("--token", help="a bearer JWT (see README: making a test token)")
    sender.add_argument("--json", action="store_true", help="print the raw CDS Hooks response")
    token = commands.add_parser("token", help="mint a test CDS client JWT (ES384 or RS384) with a private key")
    token.add_argument("--key", type=Path, required=True, help="a PEM private key (EC P-384 or RSA)")
    token.add_argument("--iss", required=True, help="the issuer, as in CDS_TRUSTED_ISSUERS")
    token.add_argument("--aud", required=True, help="the URL called, e.g. https://cds.hospital.org/cds-services")
    token.add_argument("--kid", help="the key id of the issuer's JWK Set")
    token.add_argument("--tenant", help="a tenant claim")
    token.add_argument("--lifetime", type=int, default=300, help="seconds until exp (default 300)")
    load = commands.add_parser("load-fixtures", help="PUT every patient fixture into a FHIR R4 server, dates moved")
    load.add_argument("--fhir", required=True, help="the FHIR server's base URL, e.g. http://localhost:8103/fhir/R4")
    load.add_argument("--token", help="a bearer token for the FHIR server")
    report_parser = commands.add_parser("report", help="override analytics from the stored audit trail and feedback")
    report_parser.add_argument("--since", default="30d", help="30d, 12h, 2w, an ISO date, or 'all' (default 30d)")
    report_parser.add_argument("--format", choices=("table", "csv", "json", "html"), default="table")
    report_parser.add_argument("--output", type=Path, help="write to this file (html: one self-contained page)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from .serve import main as serve

        return serve()
    if args.command == "token":
        return _token(args)
    if args.command in ("send", "load-fixtures"):
        from .trial_cli import load_fixtures, send

        return send(args) if args.command == "send" else load_fixtures(args)
    from .logs import configure_logging

    configure_logging("console", "WARNING")
    return _evaluate(args) if args.command == "evaluate" else _report(args)


def _token(args: argparse.Namespace) -> int:
    import time
    import uuid

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(args.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        print(f"--key: not a readable unencrypted PEM private key ({type(exc).__name__})", file=sys.stderr)
        return 2
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = {"secp384r1": "ES384", "secp256r1": "ES256"}.get(key.curve.name)
    else:
        algorithm = "RS384" if isinstance(key, rsa.RSAPrivateKey) else None
    if algorithm is None:
        print("--key: an EC P-384 (or P-256) or an RSA private key is needed", file=sys.stderr)
        return 2
    now = int(time.time())
    claims = {"iss": args.iss, "sub": args.iss, "aud": args.aud, "iat": now, "exp": now + args.lifetime,
              "jti": str(uuid.uuid4())}  # fmt: skip
    if args.tenant:
        claims["tenant"] = args.tenant
    headers = {"typ": "JWT", **({"kid": args.kid} if args.kid else {})}
    print(jwt.encode(claims, key, algorithm=algorithm, headers=headers))  # type: ignore[arg-type]  # EC or RSA
    return 0


def _report(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .analytics import build_report, parse_since, render
    from .storage import Store

    settings = load_settings()
    try:
        since = None if args.since == "all" else parse_since(args.since)
    except ValueError:
        print(f"--since: expected 30d, 12h, 2w, an ISO date or 'all', not {args.since!r}", file=sys.stderr)
        return 2
    try:
        store = Store(settings.database_url)
        if args.format == "html":  # the dashboard as one self-contained file (inline CSS and SVG)
            from .dashboard import page_html, render_overview

            text = page_html("Lumbar MRI CDS: overrides and ratings",
                             render_overview(store, since, args.since, None, None, []))  # fmt: skip
        else:
            text = render(build_report(store, since), args.format)
        if args.output:
            args.output.write_text(text, encoding="utf-8")
        else:
            print(text)
    except SQLAlchemyError as exc:
        print(f"the database could not be read ({type(exc).__name__}); check CDS_DATABASE_URL", file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import Evaluator
    from .knowledge import Knowledge
    from .protocol.fhir import decode_hook_request
    from .services import load_services

    try:
        now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    except ValueError:
        print(f"--now: not an ISO 8601 instant: {args.now}", file=sys.stderr)
        return 2
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    settings = load_settings()
    services = load_services(settings.hooks_dir)
    try:
        body = args.request.read_bytes()
    except OSError as exc:
        print(f"{args.request}: {exc.strerror}", file=sys.stderr)
        return 2
    evaluator = Evaluator(settings, Knowledge(), clock=lambda: now)
    try:
        request = decode_hook_request(body)
        service = (
            services.get(args.service)
            if args.service
            else next((s for s in services.values() if s.hook == request.hook), None)
        )
        if service is None:
            raise CdsError(404, f"no service for {args.service or request.hook!r}")
        evaluation = evaluator.evaluate(service, request)
    except CdsError as error:
        for issue in error.outcome["issue"]:
            print(f"{error.status}: {issue['diagnostics']}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(evaluation.response, indent=2))
        return 0
    print(report(service.id, request.hookInstance, now, evaluation))
    return 0


def report(service_id: str, hook_instance: str, now: datetime, evaluation: Any) -> str:
    lines = [f"Service {service_id}  hookInstance {hook_instance}  evaluated as of {now.isoformat()}"]
    if not evaluation.orders:
        lines.append("No draft lumbar spine MRI order to evaluate: no cards, no rating.")
        return "\n".join(lines)
    from .knowledge.guidelines import CATEGORY_NAMES
    from .knowledge.rules import RULES_BY_ID

    for order, assessment in zip(evaluation.orders, evaluation.assessments, strict=True):
        study, facts = order.study, assessment.facts
        lines += ["", f"Order {order.reference}: {study.display} ({study.code})"]
        category = f", ACR {CATEGORY_NAMES[assessment.category]}" if assessment.category else ""
        variant = f", {assessment.variant.name}" if assessment.variant else ""
        lines.append(f"  Rating: {assessment.rating}{category}{variant}")
        lines.append("  Rules fired:")
        lines += [f"    {rule_id}  {RULES_BY_ID[rule_id].title}" for rule_id in assessment.fired]
        lines.append("  Facts:")
        lines.append(f"    age: {facts.age if facts.age is not None else 'not recorded'}")
        episode = (
            f"{facts.episode_start.isoformat()} ({facts.episode_days} days)" if facts.episode_start else "not recorded"
        )
        lines.append(f"    episode start: {episode}")
        for name, found in facts.recorded():  # every fact of the fact table that is set
            for evidence in found:
                lines.append(f"    {name.replace('_', ' ')}: {evidence.describe()}")
        if facts.unavailable:
            lines.append(f"    not available: {', '.join(facts.unavailable)}")
    cards = (evaluation.full_response or evaluation.response).get("cards", [])
    if evaluation.silent:
        lines += ["", "Silent mode: the client is answered no cards; these are the cards it would have seen."]
    lines += ["", f"Cards ({len(cards)}):"]
    for card in cards:
        lines.append(f"  [{card['indicator'].upper()}] {card['source']['topic']['code']}: {card['summary']}")
        for paragraph in card.get("detail", "").split("\n"):
            lines += textwrap.wrap(paragraph, 100, initial_indent="      ", subsequent_indent="      ") or [""]
        for suggestion in card.get("suggestions", []):
            mark = " (recommended)" if suggestion.get("isRecommended") else ""
            lines.append(f"    suggestion{mark}: {suggestion['label']}")
            for action in suggestion.get("actions", []):
                lines.append(f"      {action['type']}: {action['description']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
