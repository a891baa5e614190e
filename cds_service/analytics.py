"""Override analytics: how often each card is shown, accepted or overridden, and why.

Computed from the stored audit trail and feedback. A card's outcome is its latest feedback entry
(clients may report a card more than once); cards of silent services were never shown and are
counted apart, as the cards a silent roll-out would have shown.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from .storage import Store

_SINCE = re.compile(r"^(\d+)\s*([hdw])$")


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """ "30d", "12h", "2w", or an ISO date/instant; None for everything."""
    if not value:
        return None
    now = now or datetime.now(UTC)
    match = _SINCE.match(value.strip().lower())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - {"h": timedelta(hours=amount), "d": timedelta(days=amount), "w": timedelta(weeks=amount)}[unit]
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _empty_line() -> dict[str, Any]:
    return {"shown": 0, "accepted": 0, "overridden": 0, "no_feedback": 0, "silent": 0, "override_reasons": {}}


def _count(line: dict[str, Any], card: dict[str, Any]) -> None:
    if card["silent"]:
        line["silent"] += 1  # a silent roll-out: what would have been shown
        return
    line["shown"] += 1
    if card["outcome"] == "accepted":
        line["accepted"] += 1
    elif card["outcome"] == "overridden":
        line["overridden"] += 1
        code = card["override_reason_code"] or "(none)"
        reason = line["override_reasons"].setdefault(code, {"display": None, "count": 0})
        reason["display"] = reason["display"] or card["override_reason_display"] or (
            "(no reason given)" if code == "(none)" else code)  # fmt: skip
        reason["count"] += 1
    else:
        line["no_feedback"] += 1


def _week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def build_report(
    store: Store, since: datetime | None = None, top: int = 10, service: str | None = None, tenant: str | None = None
) -> dict[str, Any]:
    """Cards shown, accepted, overridden and without feedback, per card topic, rule, practitioner
    (pseudonyms) and ISO week; override reasons keyed by code with their display.

    override_rate = overridden / (accepted + overridden): of the cards a clinician answered, the share
    overridden. feedback_coverage = (accepted + overridden) / shown. Silent cards are counted apart
    (`silent`: what a silent roll-out would have shown)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in store.cards_with_feedback(since):  # ordered by card, then time received
        if (service and row.get("service_id") != service) or (tenant and row.get("tenant") != tenant):
            continue
        current = latest.get(row["card_uuid"])
        if current is None or row["feedback_id"] is not None:
            latest[row["card_uuid"]] = row
    groups: dict[str, dict[str, dict[str, Any]]] = {
        "by_topic": defaultdict(_empty_line), "by_rule": defaultdict(_empty_line),
        "by_practitioner": defaultdict(_empty_line), "by_week": defaultdict(_empty_line),
    }  # fmt: skip
    for card in latest.values():
        _count(groups["by_topic"][card["topic"]], card)
        _count(groups["by_rule"][card["rule_id"]], card)
        _count(groups["by_practitioner"][card.get("practitioner") or "(not recorded)"], card)
        created = card.get("created_at")
        if isinstance(created, datetime):
            _count(groups["by_week"][_week(created)], card)
    ratings: dict[str, Counter] = defaultdict(Counter)
    weekly: dict[str, Counter] = defaultdict(Counter)
    consultations = silent = fallback = 0
    latencies: list[float] = []
    for record in store.audit_rows(since):
        if (service and record["service_id"] != service) or (tenant and record["tenant"] != tenant):
            continue
        consultations += 1
        silent += bool(record["silent"])
        fallback += bool(record["fallback_used"])
        latencies.append(float(record["latency_ms"]))
        ratings[record["order_code"]][record["rating"]] += 1
        if isinstance(record.get("created_at"), datetime):
            weekly[_week(record["created_at"])][record["rating"]] += 1

    def finish(lines: dict[str, dict[str, Any]]) -> dict[str, Any]:
        result = {}
        for key in sorted(lines):
            line = dict(lines[key])
            answered = line["accepted"] + line["overridden"]
            line["override_rate"] = round(line["overridden"] / answered, 3) if answered else None
            line["feedback_coverage"] = round(answered / line["shown"], 3) if line["shown"] else None
            line["override_reasons"] = dict(sorted(line["override_reasons"].items(), key=lambda kv: -kv[1]["count"]))
            result[key] = line
        return result

    practitioners = finish(groups["by_practitioner"])
    ranked = sorted(practitioners.items(), key=lambda kv: (-kv[1]["overridden"], kv[0]))
    rates = sorted(line["override_rate"] for line in practitioners.values() if line["override_rate"] is not None)
    return {
        "since": since.isoformat() if since else None,
        "consultations": consultations,
        "silent_consultations": silent,
        "by_topic": finish(groups["by_topic"]),
        "by_rule": finish(groups["by_rule"]),
        "by_week": finish(groups["by_week"]),
        "practitioners_most_overrides": dict(ranked[:top]),
        "practitioner_override_rates": {
            "practitioners": len(practitioners),
            "min": rates[0] if rates else None,
            "median": rates[len(rates) // 2] if rates else None,
            "max": rates[-1] if rates else None,
        },
        "ratings_by_ordered_code": {code: dict(counts) for code, counts in sorted(ratings.items())},
        "ratings_by_week": {week: dict(counts) for week, counts in sorted(weekly.items())},
        "fhir_fallback": {"calls": fallback, "rate": round(fallback / consultations, 3) if consultations else None},
        "latency_ms": {
            name: _percentile(latencies, share) for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },  # fmt: skip
    }


def _percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank on the sorted values (no interpolation): a latency that was actually seen."""
    ordered = sorted(values)
    return round(ordered[int(share * (len(ordered) - 1))], 1) if ordered else None


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2)
    if fmt == "csv":
        return _csv(report)
    return _table(report)


_COLUMNS = ("shown", "accepted", "overridden", "no_feedback", "override_rate", "feedback_coverage", "silent")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # terminal escapes (ESC ...) and other control characters
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: Any) -> str:
    """A client-supplied string made safe to print: control characters shown as '?'."""
    return _CONTROL.sub("?", str(value))


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet cannot run as a formula (OWASP CSV injection)."""
    if not isinstance(value, str):
        return value
    value = _text(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"Consultations: {report['consultations']} (silent: {report['silent_consultations']})"
        + (f" since {report['since']}" if report["since"] else ""),
        f"FHIR fallback: {report['fhir_fallback']['calls']} calls; latency p50 {report['latency_ms']['p50']} ms, "
        f"p95 {report['latency_ms']['p95']} ms, p99 {report['latency_ms']['p99']} ms",
    ]
    sections = (("Cards by topic", "by_topic"), ("Cards by rule", "by_rule"), ("Cards by week", "by_week"),
                ("Practitioners with the most overrides (pseudonyms)", "practitioners_most_overrides"))  # fmt: skip
    for title, key in sections:
        lines += ["", title, f"  {'':24}" + "".join(f"{c:>14}" for c in _COLUMNS)]
        for name, line in report[key].items():
            values = ["-" if line[c] is None else line[c] for c in _COLUMNS]
            lines.append(f"  {_text(name):24}" + "".join(f"{v:>14}" for v in values))
            for code, reason in line["override_reasons"].items():
                lines.append(f"      overridden: {_text(reason['display'])} [{_text(code)}] ({reason['count']})")
    lines += ["", "Ratings by ordered code"]
    for code, counts in report["ratings_by_ordered_code"].items():
        lines.append(f"  {_text(code):24}" + ", ".join(f"{_text(r)} {n}" for r, n in sorted(counts.items())))
    return "\n".join(lines)


class _SafeWriter:
    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writerow(self, row: list[Any]) -> None:
        self._writer.writerow([_cell(value) for value in row])


def _csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = _SafeWriter(csv.writer(out))
    writer.writerow(["section", "key", *_COLUMNS, "detail", "code", "count"])
    for section in ("by_topic", "by_rule", "by_week", "practitioners_most_overrides"):
        for name, line in report[section].items():
            writer.writerow([section, name, *(line[c] if line[c] is not None else "" for c in _COLUMNS), "", "", ""])
            for code, reason in line["override_reasons"].items():
                writer.writerow([f"{section}.override_reason", name, *[""] * len(_COLUMNS), reason["display"], code,
                                 reason["count"]])  # fmt: skip
    for code, counts in report["ratings_by_ordered_code"].items():
        for rating, count in sorted(counts.items()):
            writer.writerow(["ratings_by_ordered_code", code, *[""] * len(_COLUMNS), rating, "", count])
    return out.getvalue()
