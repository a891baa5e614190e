"""CDS service definitions: one JSON file per service in hooks/, loaded and checked at start-up.

A definition carries the discovery fields (id, hook, title, description, usageRequirements,
prefetch) plus local settings that are never advertised (silent roll-out, per-key failure policy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .configuration import PrefetchFailurePolicy

SUPPORTED_HOOKS = ("order-select", "order-sign", "patient-view")
_SERVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_FHIR_ID = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9\-.]{1,64}$")
# CDS Hooks 2.0 prefetch tokens: root-level context fields marked "Prefetch Token: Yes" for these
# hooks, and the user identifiers. FHIRPath such as today() is 3.0-ballot only; 2.0 clients skip it.
_CONTEXT_TOKENS = {"context.patientId", "context.userId", "context.encounterId"}
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
DISCOVERY_FIELDS = ("hook", "title", "description", "id", "prefetch", "usageRequirements")


class DefinitionError(ValueError):
    """A file in hooks/ does not describe a valid service; raised at start-up, never per request."""


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    usage_requirements: str | None
    prefetch: Mapping[str, str]
    silent: bool = False
    failure_policy: Mapping[str, PrefetchFailurePolicy] = field(default_factory=dict)

    def discovery_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"hook": self.hook, "title": self.title, "description": self.description, "id": self.id}
        if self.prefetch:
            entry["prefetch"] = dict(self.prefetch)
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry

    def policy_for(self, key: str) -> PrefetchFailurePolicy:
        return self.failure_policy.get(key, PrefetchFailurePolicy.FAIL)


def load_services(hooks_dir: Path) -> dict[str, ServiceDefinition]:
    """Every *.json file in `hooks_dir`, keyed by service id, in file-name order."""
    services: dict[str, ServiceDefinition] = {}
    for path in sorted(Path(hooks_dir).glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            service = _definition(raw)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DefinitionError(f"{path.name}: {exc}") from None
        if service.id in services:
            raise DefinitionError(f"{path.name}: duplicate service id {service.id!r}")
        services[service.id] = service
    if not services:
        raise DefinitionError(f"no service definitions (*.json) in {hooks_dir}; set CDS_HOOKS_DIR")
    return services


def _definition(raw: Mapping[str, Any]) -> ServiceDefinition:
    for name in ("id", "hook", "title", "description"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise DefinitionError(f"{name!r} must be a non-empty string")
    if not _SERVICE_ID.match(raw["id"]):
        raise DefinitionError(f"id {raw['id']!r} is not URL-safe")
    if raw["hook"] not in SUPPORTED_HOOKS:
        raise DefinitionError(f"hook {raw['hook']!r} is not one of {SUPPORTED_HOOKS}")
    prefetch = raw.get("prefetch") or {}
    for key, template in prefetch.items():
        for token in _TOKEN.findall(template):
            if token not in _CONTEXT_TOKENS and token not in _USER_TOKENS:
                raise DefinitionError(f"prefetch {key!r} uses {{{{{token}}}}}, not a CDS Hooks 2.0 token")
    policies = {key: PrefetchFailurePolicy(value) for key, value in (raw.get("prefetchFailurePolicy") or {}).items()}
    unknown = set(policies) - set(prefetch)
    if unknown:
        raise DefinitionError(f"prefetchFailurePolicy names unknown keys {sorted(unknown)}")
    return ServiceDefinition(
        id=raw["id"],
        hook=raw["hook"],
        title=raw["title"],
        description=raw["description"],
        usage_requirements=raw.get("usageRequirements"),
        prefetch=dict(prefetch),
        silent=bool(raw.get("silent", False)),
        failure_policy=policies,
    )


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """The FHIR query for a prefetch template, or None when a token cannot be resolved.

    Token values are percent-encoded: they come from the client and must not add query parameters.
    """
    unresolved = False

    def value(match: re.Match[str]) -> str:
        nonlocal unresolved
        token = match.group(1)
        resolved: Any = None
        if token.startswith("context."):
            resolved = context.get(token.removeprefix("context."))
        elif token in _USER_TOKENS:
            user = context.get("userId") or ""
            prefix = _USER_TOKENS[token] + "/"
            resolved = user.removeprefix(prefix) if user.startswith(prefix) else None
        if not isinstance(resolved, str) or not _FHIR_ID.match(resolved):
            unresolved = True  # not a FHIR id ("..", "a/b", ...): never substituted into a query
            return ""
        return quote(resolved, safe="")

    rendered = _TOKEN.sub(value, template)
    return None if unresolved else rendered
