"""Trying the service on any date: the example requests and patient fixtures are dated around
2026-06-01; moved by whole days so that this reference date becomes today, they keep their meaning
(an episode of 14 days is still 14 days, a patient of 43 is still 43)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

REFERENCE = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # fixtures/scenarios.json "clock"
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:\d{2})$")


def shift_dates(value: Any, now: datetime, reference: datetime = REFERENCE) -> Any:
    """`value` (JSON data) with every FHIR date, dateTime and year-month moved by the whole days from
    `reference` to `now`; a bare year, and anything that is not a date, is left as it is."""
    days = timedelta(days=(now.date() - reference.date()).days)
    return _shift(value, days)


def _shift(value: Any, days: timedelta) -> Any:
    if isinstance(value, dict):
        return {key: _shift(item, days) for key, item in value.items()}
    if isinstance(value, list):
        return [_shift(item, days) for item in value]
    if isinstance(value, str):
        return _shift_text(value, days)
    return value


def _shift_text(text: str, days: timedelta) -> str:
    try:
        if match := _DATE.match(text):
            return (date(*map(int, match.groups())) + days).isoformat()
        if match := _DATETIME.match(text):
            day, time_of_day, zone = match.groups()
            return f"{(date.fromisoformat(day) + days).isoformat()}T{time_of_day}{zone}"
        if match := _MONTH.match(text):
            return (date(int(match.group(1)), int(match.group(2)), 1) + days).strftime("%Y-%m")
    except ValueError:  # "2026-13-45": not a date after all
        return text
    return text
