"""What a golden comparison looks at: topics, indicators, actions and ratings, never UUIDs or prose."""

from __future__ import annotations

from typing import Any

from cds_service.cards import PAMA_RATING


def _rating(resource: dict[str, Any]) -> str | None:
    for extension in resource.get("extension", []):
        if extension.get("url") == PAMA_RATING:
            return extension["valueCodeableConcept"]["coding"][0]["code"]
    return None


def _action(action: dict[str, Any]) -> str:
    if action["type"] == "delete":
        return f"delete {action['resourceId']}"
    resource = action["resource"]
    code = (resource.get("code", {}).get("coding") or [{}])[0].get("code")
    if action["type"] == "create":
        text = f"create {resource['resourceType']} code={code}"
        return text + (f" priority={resource['priority']}" if resource.get("priority") else "")
    text = f"update {resource['resourceType']}/{resource.get('id')} code={code}"
    if resource.get("priority"):
        text += f" priority={resource['priority']}"
    return text + f" rating={_rating(resource)}"


def summarize(response: dict[str, Any], rules: list[str]) -> dict[str, Any]:
    return {
        "cards": [
            {
                "topic": card["source"]["topic"]["code"],
                "indicator": card["indicator"],
                "suggestions": [
                    {"recommended": bool(s.get("isRecommended")), "actions": [_action(a) for a in s.get("actions", [])]}
                    for s in card.get("suggestions", [])
                ],
            }
            for card in response.get("cards", [])
        ],
        "ratings": {
            f"ServiceRequest/{a['resource']['id']}": _rating(a["resource"]) for a in response.get("systemActions", [])
        },
        "rules": rules,
    }
