"""The informaticist's dashboard: override analytics as pictures, and the rule browser.

Off (404) unless CDS_DASHBOARD_TOKEN is set; then every page needs that token, as a bearer token or
through the login form, which sets a signed, HttpOnly, SameSite=Strict cookie. Server-rendered:
charts are SVG made here (no script, no CDN: hospital networks), each labelled in text so that it
reads without colour, each with its numbers as a table. No patient identifier is ever shown (the
audit trail holds none; practitioners appear as pseudonyms).
"""

from __future__ import annotations

import hmac
import html
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, make_response, redirect, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from .analytics import build_report, parse_since
from .runtime import runtime

bp = Blueprint("dashboard", __name__)
COOKIE = "cds_dashboard"
SESSION_SECONDS = 8 * 3600


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(str(runtime().settings.dashboard_token), salt="cds-dashboard")


def _signed_in() -> bool:
    token = str(runtime().settings.dashboard_token)
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return True
    try:
        return _serializer().loads(request.cookies.get(COOKIE, ""), max_age=SESSION_SECONDS) == "signed-in"
    except BadSignature:
        return False


@bp.before_request
def guard() -> Any:
    if not runtime().settings.dashboard_token:
        abort(404)
    if request.endpoint == "dashboard.login" or _signed_in():
        return None
    return redirect("/dashboard/login", 303)


@bp.route("/dashboard/login", methods=["GET", "POST"])
def login() -> Any:
    message = ""
    if request.method == "POST":
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
            abort(403)  # a cross-site form post (CSRF)
        try:
            _serializer().loads(request.form.get("csrf", ""), max_age=600)
        except BadSignature:
            abort(403)
        token = str(runtime().settings.dashboard_token)
        if hmac.compare_digest(request.form.get("token", "").encode(), token.encode()):
            response = make_response(redirect("/dashboard", 303))
            response.set_cookie(COOKIE, _serializer().dumps("signed-in"), max_age=SESSION_SECONDS, httponly=True,
                                samesite="Strict", secure=request.is_secure)  # fmt: skip
            return response
        message = "<p role='alert'>That token is not the dashboard token.</p>"
    form = (f"<form method='post'><input type='hidden' name='csrf' value='{_serializer().dumps('login')}'>"
            "<label>Dashboard token <input type='password' name='token' autocomplete='off'></label> "
            "<button>Sign in</button></form>")  # fmt: skip
    return _page("Sign in", message + form, status=401 if message else 200)


def _period() -> tuple[Any, str]:
    """The period asked for (`?since=30d`, `90d`, `all`...); an unreadable one is the last 30 days."""
    since_text = request.args.get("since", "30d")
    try:
        return parse_since(since_text if since_text != "all" else None), since_text
    except ValueError:
        return parse_since("30d"), "30d"


@bp.get("/dashboard")
def overview() -> Response:
    since, since_text = _period()
    service = request.args.get("service") or None
    tenant = request.args.get("tenant") or None
    rt = runtime()
    return _page("Lumbar MRI CDS: overrides and ratings", render_overview(rt.store, since, since_text, service, tenant,
                                                                         sorted(rt.services)))  # fmt: skip


@bp.get("/dashboard/rules")
def rules() -> Response:
    since, since_text = _period()
    return _page("Rule browser", render_rules(runtime(), since, since_text))


# --- rendering ----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def bar_chart(title: str, rows: list[tuple[str, float]], unit: str = "") -> str:
    """A horizontal bar chart in SVG: each bar labelled with its name and value (no colour needed)."""
    width, bar, gap, label = 640, 18, 6, 220
    top = max((value for _, value in rows), default=0) or 1
    height = max(1, len(rows)) * (bar + gap) + 10
    bars = []
    for index, (name, value) in enumerate(rows):
        y = 5 + index * (bar + gap)
        length = (width - label - 80) * (value / top)
        bars.append(f"<g class='bar'><text x='{label - 6}' y='{y + 13}' text-anchor='end'>{_e(name)}</text>"
                    f"<rect x='{label}' y='{y}' width='{length:.1f}' height='{bar}'></rect>"
                    f"<text x='{label + length + 6:.1f}' y='{y + 13}'>{_e(value)}{_e(unit)}</text></g>")  # fmt: skip
    if not rows:
        return f"<figure><figcaption>{_e(title)}</figcaption><p>None in this period.</p></figure>"
    table = "".join(f"<tr><td>{_e(n)}</td><td>{_e(v)}{_e(unit)}</td></tr>" for n, v in rows)
    return (f"<figure><figcaption>{_e(title)}</figcaption>"
            f"<svg role='img' aria-label='{_e(title)}' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}'>{''.join(bars)}</svg>"
            f"<details><summary>Numbers</summary><table><tr><th>Item</th><th>Value</th></tr>{table}</table>"
            "</details></figure>")  # fmt: skip


def render_overview(store: Any, since: datetime | None, since_text: str, service: str | None, tenant: str | None,
                    services: list[str]) -> str:  # fmt: skip
    report = build_report(store, since, service=service, tenant=tenant)
    weeks = [(week, sum(counts.values())) for week, counts in report["ratings_by_week"].items()]
    ratings = [(rating, sum(c.get(rating, 0) for c in report["ratings_by_week"].values()))
               for rating in ("appropriate", "not-appropriate", "no-criteria-apply")]  # fmt: skip
    topics = [(topic, line["shown"]) for topic, line in report["by_topic"].items()]
    rules = [(rule, round((line["override_rate"] or 0) * 100, 1)) for rule, line in report["by_rule"].items()
             if line["override_rate"] is not None]  # fmt: skip
    practitioners = [(name, line["overridden"]) for name, line in report["practitioners_most_overrides"].items()]
    fallback, latency = report["fhir_fallback"], report["latency_ms"]
    reasons = "".join(
        f"<li><strong>{_e(rule)}</strong>: " + ", ".join(
            f"{_e(reason['display'])} ({_e(code)}): {reason['count']}" for code, reason in list(
                line["override_reasons"].items())[:3]) + "</li>"
        for rule, line in report["by_rule"].items() if line["override_reasons"])  # fmt: skip
    options = "".join(
        f"<option value='{_e(s)}'{' selected' if s == service else ''}>{_e(s)}</option>" for s in services
    )
    filters = (f"<form method='get' class='filters'><label>Period <input name='since' value='{_e(since_text)}'></label> "
               f"<label>Service <select name='service'><option value=''>all</option>{options}</select></label> "
               f"<label>Tenant <input name='tenant' value='{_e(tenant or '')}'></label> <button>Show</button></form>")  # fmt: skip
    summary = (f"<p>Consultations: <strong>{report['consultations']}</strong>; held back by silent mode: "
               f"{report['silent_consultations']}; FHIR fallback used in {fallback['calls']} "
               f"({round(100 * fallback['rate'], 1) if fallback['rate'] is not None else 0} %); latency p50 {latency['p50']} ms, p95 "
               f"{latency['p95']} ms, p99 {latency['p99']} ms. Override rate = overridden / (accepted + overridden).</p>")  # fmt: skip
    silent = [(topic, line["silent"]) for topic, line in report["by_topic"].items() if line["silent"]]
    return "".join([
        filters, summary,
        bar_chart("Consultations per week", weeks),
        bar_chart("Ratings", ratings),
        bar_chart("Cards shown by topic", topics),
        bar_chart("Override rate per rule", rules, " %"),
        f"<h2>Top override reasons per rule</h2><ul>{reasons or '<li>none</li>'}</ul>",
        bar_chart("Practitioners with the most overrides (pseudonyms)", practitioners),
        bar_chart("Silent mode: cards that would have been shown", silent),
        "<p><a href='/dashboard/rules'>Rule browser</a></p>",
    ])  # fmt: skip


def render_rules(rt: Any, since: datetime | None, since_text: str) -> str:
    fired: dict[str, int] = {}
    for row in rt.store.audit_rows(since):
        for rule_id in row["rules_fired"] or []:
            fired[rule_id] = fired.get(rule_id, 0) + 1
    knowledge = rt.knowledge
    rows = "".join(
        f"<tr id='{_e(rule.id)}'><td>{_e(rule.id)}</td><td>{_e(rule.title)}</td><td>{_e(rule.group.value)}</td>"
        f"<td>{_e(rule.topic.value)}</td><td>{_e(rule.variant.name if rule.variant else '-')}</td>"
        f"<td>{'<br>'.join(_e(c.label) for c in rule.citations)}</td><td>{fired.get(rule.id, 0)}</td></tr>"
        for rule in knowledge.rules)  # fmt: skip
    thresholds = "".join(f"<tr><td>{_e(name)}</td><td>{_e(value)}</td></tr>"
                         for name, value in vars(rt.settings.thresholds).items())  # fmt: skip
    facts = []
    for fact in knowledge.facts:
        sets = sorted({v for source in fact.sources for v in source.value_sets})
        codes = "".join(_value_set_html(knowledge[v]) for v in sets)
        facts.append(f"<tr><td>{_e(fact.name)}</td><td>{_e(fact.about)}</td><td>{codes}</td></tr>")
    return (f"<p>Rules fired since {_e(since_text)} (from the audit trail).</p>"
            "<table class='rules'><tr><th>Rule</th><th>Title</th><th>Group</th><th>Card topic</th><th>ACR variant</th>"
            f"<th>Citations</th><th>Fired</th></tr>{rows}</table>"
            f"<h2>Thresholds</h2><table><tr><th>Threshold</th><th>Value</th></tr>{thresholds}</table>"
            "<h2>Facts and their value sets</h2><table><tr><th>Fact</th><th>What it is</th><th>Codes</th></tr>"
            f"{''.join(facts)}</table>")  # fmt: skip


def _value_set_html(value_set: Any) -> str:
    """Every code of a value set with its display, and its families (ICD prefixes and ranges)."""
    codes = "".join(f"<li>{_e(system.rsplit('/', 1)[-1])} {_e(code)}: {_e(display)}</li>"
                    for (system, code), display in value_set.codes.items())  # fmt: skip
    families = [f"{_e(system.rsplit('/', 1)[-1])} {_e(prefix)}*" for system, prefixes in value_set.prefixes.items()
                for prefix in prefixes]  # fmt: skip
    families += [f"{_e(system.rsplit('/', 1)[-1])} {_e(low)}-{_e(high)}" for system, bounds in value_set.ranges.items()
                 for low, high in bounds]  # fmt: skip
    excluded = [f"{_e(code)}" for codes_ in value_set.excluded.values() for code in codes_]
    extra = (f"<li>families: {', '.join(families)}</li>" if families else "") + (
        f"<li>excluded: {', '.join(excluded)}</li>" if excluded else "")  # fmt: skip
    return (f"<details><summary>{_e(value_set.id)} ({len(value_set.codes)} codes)</summary>"
            f"<ul>{codes}{extra}</ul></details>")  # fmt: skip


STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}svg text{font-size:12px}"
         "svg rect{fill:#3b6ea5}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;"
         "text-align:left;vertical-align:top}figure{margin:1.5rem 0}figcaption{font-weight:bold}")  # fmt: skip


def page_html(title: str, body: str) -> str:
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{body}"
            f"<footer><p>Generated {generated}. No patient identifier is shown.</p></footer></body></html>")  # fmt: skip


def _page(title: str, body: str, status: int = 200) -> Response:
    response = Response(page_html(title, body), status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response
