"""Typed fhir.resources R4B models for the resources the rules read, built leniently and once.

Only the elements a rule may read are typed (RESOURCE_TYPES[...].elements): a full Epic lab
Observation with contained resources costs about 2 ms in fhir.resources, its projection about
0.1 ms, and a malformed element no rule reads cannot cost a resource. An invalid element that a
rule might read is dropped (and noted) rather than the resource: a red flag must not vanish
because its recordedDate lacks a time zone.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import msgspec
import orjson
from pydantic import ValidationError

from .protocol.fhir import UNSET, WireResource
from .resource_types import RESOURCE_TYPES, required_defaults

EVERYTHING = frozenset({"*"})
_SERVICE_REQUEST: Any = RESOURCE_TYPES["ServiceRequest"].model
# read for the checks before typing (statuses, patient); kept when typed: no rule reads them, but
# dropping a required one would fail validation and cost a second pass
CHECKED_ELEMENTS = ("subject", "patient", "verificationStatus")
_DRAFT_ELEMENTS = ("id", "status", "intent", "subject", "reasonCode", "reasonReference")


def projection(resource: WireResource, elements: frozenset[str] = EVERYTHING) -> dict[str, Any]:
    """The elements the rules read, as plain JSON values ready for the R4B model."""
    projected: dict[str, Any] = {"resourceType": resource.resourceType}
    names = RESOURCE_TYPES[resource.resourceType].elements
    if "*" not in elements:
        names = tuple(name for name in names if name in elements or name in CHECKED_ELEMENTS)
    for name in names:
        value = getattr(resource, "class_" if name == "class" else name)
        if value is UNSET or value is None:
            continue
        if isinstance(value, msgspec.Raw):
            value = orjson.loads(bytes(value))
        elif isinstance(value, msgspec.Struct):
            value = msgspec.to_builtins(value)
        projected[name] = value
    return projected


def draft_order_model(order: dict[str, Any], patient_id: str, notes: list[str]) -> Any | None:
    """The typed R4B model of a draft order as the client sent it: the elements the rules read
    (its reasons; the ordered study is already known from its code)."""
    data = {key: order[key] for key in _DRAFT_ELEMENTS if key in order}
    data["resourceType"] = "ServiceRequest"
    try:  # validation reads its input and never changes it: no copy for a valid order
        return _SERVICE_REQUEST.model_validate(data)
    except (ValidationError, KeyError, TypeError, ValueError):
        pass
    # repairing drops invalid elements from the data: a copy, so the order as sent is left as it was
    return typed_model("ServiceRequest", copy.deepcopy(data), patient_id, notes)


def typed_model(resource_type: str, data: dict[str, Any], patient_id: str, notes: list[str]) -> Any | None:
    """The R4B model of `data`. Invalid elements are dropped (and noted) rather than the resource."""
    model = RESOURCE_TYPES[resource_type].model
    if model is None:  # no rule reads it: the projection as it is (audit.department_of reads it)
        return data
    errors: list[Any]
    for _ in range(4):
        try:
            return model.model_validate(data)  # type: ignore[attr-defined]
        except ValidationError as exc:
            errors = exc.errors()
        except (KeyError, TypeError, ValueError):  # fhir.resources raises KeyError for unknown contained types
            errors = [{"loc": ("contained",), "type": "unknown_resource_type"}]
        repaired = 0
        for error in sorted(errors, key=lambda e: [str(p) for p in e.get("loc", ())], reverse=True):
            loc = tuple(error.get("loc") or ())
            if not loc or loc[0] == "resourceType":
                continue
            if error.get("type") == "missing" and len(loc) == 1:
                default = required_defaults(resource_type, patient_id).get(str(loc[0]))
                if default is not None:
                    data[str(loc[0])] = default
                    repaired += 1
                continue
            if _delete_path(data, loc):
                repaired += 1
        if not repaired:
            break
        notes.append(f"{resource_type}: {repaired} invalid element(s) dropped or defaulted")
    notes.append(f"{resource_type}: could not be read and was ignored")
    return None


def _delete_path(data: Any, loc: Iterable[Any]) -> bool:
    path = list(loc)
    container = data
    for part in path[:-1]:
        try:
            container = container[part]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        del container[path[-1]]
    except (KeyError, IndexError, TypeError):
        return False
    return True
