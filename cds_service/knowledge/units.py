"""Units the rules compare in: body temperature in degrees Celsius."""

from __future__ import annotations

from typing import Any


def celsius(value: Any, code: str | None, unit: str | None) -> float | None:
    """A body temperature in Celsius from Celsius or Fahrenheit (UCUM `Cel`, `[degF]`, or common text)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    text = f"{code or ''} {unit or ''}".lower()
    if "degf" in text or "°f" in text or "fahrenheit" in text or text.split() in (["f"], ["f", "f"]):
        return (number - 32) * 5 / 9
    if "cel" in text or "°c" in text or "celsius" in text or text.split() in (["c"], ["c", "c"]):
        return number
    return (number - 32) * 5 / 9 if number > 50 else number  # no unit: a plausible human temperature decides
