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
    return {"shown": 0, "accepted": 0, "overridden": 0, "no_feedback": 0, "silent": 0, "override_reasons": Counter()}


def build_report(store: Store, since: datetime | None = None) -> dict[str, Any]:
    latest: dict[str, dict[str, Any]] = {}
    for row in store.cards_with_feedback(since):  # ordered by card, then outcome time
        current = latest.get(row["card_uuid"])
        if current is None or row["feedback_id"] is not None:
            latest[row["card_uuid"]] = row
    by_topic: dict[str, dict[str, Any]] = defaultdict(_empty_line)
    by_rule: dict[str, dict[str, Any]] = defaultdict(_empty_line)
    for card in latest.values():
        for line in (by_topic[card["topic"]], by_rule[card["rule_id"]]):
            if card["silent"]:
                line["silent"] += 1
                continue
            line["shown"] += 1
            if card["outcome"] == "accepted":
                line["accepted"] += 1
            elif card["outcome"] == "overridden":
                line["overridden"] += 1
                reason = card["override_reason_display"] or card["override_reason_code"] or "(no reason given)"
                line["override_reasons"][reason] += 1
            else:
                line["no_feedback"] += 1
    ratings: dict[str, Counter] = defaultdict(Counter)
    consultations = silent = 0
    for record in store.audit_rows(since):
        consultations += 1
        silent += bool(record["silent"])
        ratings[record["order_code"]][record["rating"]] += 1

    def finish(lines: dict[str, dict[str, Any]]) -> dict[str, Any]:
        result = {}
        for key in sorted(lines):
            line = dict(lines[key])
            line["override_rate"] = round(line["overridden"] / line["shown"], 3) if line["shown"] else None
            line["override_reasons"] = dict(line["override_reasons"].most_common())
            result[key] = line
        return result

    return {
        "since": since.isoformat() if since else None,
        "consultations": consultations,
        "silent_consultations": silent,
        "by_topic": finish(by_topic),
        "by_rule": finish(by_rule),
        "ratings_by_ordered_code": {code: dict(counts) for code, counts in sorted(ratings.items())},
    }


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2)
    if fmt == "csv":
        return _csv(report)
    return _table(report)


_COLUMNS = ("shown", "accepted", "overridden", "no_feedback", "override_rate", "silent")
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
        + (f" since {report['since']}" if report["since"] else "")
    ]
    for title, key in (("Cards by topic", "by_topic"), ("Cards by rule", "by_rule")):
        lines += ["", title, f"  {'':24}" + "".join(f"{c:>14}" for c in _COLUMNS)]
        for name, line in report[key].items():
            values = ["-" if line[c] is None else line[c] for c in _COLUMNS]
            lines.append(f"  {_text(name):24}" + "".join(f"{v:>14}" for v in values))
            for reason, count in line["override_reasons"].items():
                lines.append(f"      overridden: {_text(reason)} ({count})")
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
    writer.writerow(["section", "key", *_COLUMNS, "detail", "count"])
    for section in ("by_topic", "by_rule"):
        for name, line in report[section].items():
            writer.writerow([section, name, *(line[c] if line[c] is not None else "" for c in _COLUMNS), "", ""])
            for reason, count in line["override_reasons"].items():
                writer.writerow([f"{section}.override_reason", name, *[""] * len(_COLUMNS), reason, count])
    for code, counts in report["ratings_by_ordered_code"].items():
        for rating, count in sorted(counts.items()):
            writer.writerow(["ratings_by_ordered_code", code, *[""] * len(_COLUMNS), rating, count])
    return out.getvalue()
