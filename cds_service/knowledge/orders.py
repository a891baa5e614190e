"""The draft order under review: which lumbar MRI it asks for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OrderedStudy:
    """The lumbar MRI a draft order asks for."""

    system: str
    code: str
    display: str
    contrast: str  # without | with | without-and-with | unspecified

    @property
    def uses_contrast(self) -> bool:
        return self.contrast in ("with", "without-and-with")


def codings_of(concept: Any) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept given as an untrusted dict."""
    if not isinstance(concept, Mapping):
        return []
    codings = concept.get("coding")
    if not isinstance(codings, list):
        return []
    return [coding for coding in codings if isinstance(coding, Mapping)]
