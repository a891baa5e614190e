"""Cards: an assessment presented as CDS Hooks 2.0 cards and the rating written back to the order.

Presentation only: what to say was decided by the rules (knowledge/rules.py). Every card has a
uuid, a summary under 140 characters, Markdown detail naming the evidence and the guideline,
a source with a topic, absolute links to the guidelines, suggestions with uuids and a
selectionBehavior, and override reasons with displays.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .configuration import ClientProfile
from .knowledge.facts import Evidence, Facts
from .knowledge.guidelines import CATEGORY_NAMES, MBA, UA, UNA, radiation_level
from .knowledge.rules import Assessment, Finding, Proposal, RatingBasis, Topic, rating_for

TOPIC_SYSTEM = "urn:lumbar-mri-cds:card-topic"
OVERRIDE_SYSTEM = "urn:lumbar-mri-cds:override-reason"
ACR_CATEGORY_SYSTEM = "urn:lumbar-mri-cds:acr-category"
PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_CONSULT_ID = "http://fhir.org/argonaut/Extension/pama-rating-consult-id"
PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
_PAMA_EXTENSIONS = {
    PAMA_RATING,
    PAMA_CONSULT_ID,
    "http://fhir.org/argonaut/Extension/pama-rating-qcdsm-consulted",
    "http://fhir.org/argonaut/Extension/pama-rating-auc-applied",
}
DEFAULT_SITE_CODES = Path(__file__).resolve().parent / "knowledge" / "site_codes.json"

RATING_DISPLAYS = {
    "appropriate": "Appropriate",
    "not-appropriate": "Not appropriate",
    "no-criteria-apply": "No criteria apply",
}

_OVERRIDES = {
    "defer-imaging": [
        ("red-flag-not-in-record", "Red flag present, not yet documented"),
        ("progressive-neuro-deficit-on-exam", "Progressive neurological deficit on examination"),
        ("surgical-or-esi-candidate", "Surgery or injection candidate"),
        ("specialist-request", "Requested by a specialist"),
        ("prior-imaging-unavailable-or-inadequate", "Prior imaging unavailable or inadequate"),
        ("patient-informed-decision", "Informed decision with the patient"),
        ("other", "Other reason"),
    ],
    "urgent-imaging": [
        ("red-flag-excluded-on-assessment", "Red flag excluded on assessment"),
        ("imaging-already-arranged", "Urgent imaging already arranged"),
        ("patient-informed-decision", "Informed decision with the patient"),
        ("other", "Other reason"),
    ],
}
# Reasons that fit one rule's card (its topic may be shared: and trauma are all ct-alternative)
_RULE_OVERRIDES = {
    "R-13": [
        ("mr-status-verified-conditional", "MR status verified: MRI can proceed"),
        ("radiology-consulted", "Discussed with radiology"),
        ("ct-already-done", "CT already done or arranged"),
        ("other", "Other reason"),
    ],
    "R-17": [
        ("mri-needed-deficit-or-fracture-age", "MRI needed: neurological deficit or fracture age"),
        ("radiology-consulted", "Discussed with radiology"),
        ("ct-already-done", "CT already done or arranged"),
        ("other", "Other reason"),
    ],
    "R-TRAUMA-MAJOR": [
        ("trauma-imaging-done", "Trauma imaging already done or arranged"),
        ("not-high-energy-on-assessment", "Not a high-energy injury on assessment"),
        ("trauma-team-decision", "Decided with the trauma team"),
        ("other", "Other reason"),
    ],
    "R-10b": [
        ("intervention-being-considered", "Surgery or injection is being considered"),
        ("specialist-request", "Requested by a specialist"),
        ("patient-informed-decision", "Informed decision with the patient"),
        ("other", "Other reason"),
    ],
    "R-15": [
        ("contrast-essential-group-ii", "Contrast essential: a group II agent will be used"),
        ("kidney-function-checked", "Kidney function rechecked: not reduced"),
        ("radiology-consulted", "Discussed with radiology"),
        ("other", "Other reason"),
    ],
    "R-16": [
        ("contrast-essential-radiology", "Contrast essential, agreed with radiology"),
        ("not-pregnant", "Not pregnant (status checked)"),
        ("other", "Other reason"),
    ],
}
_TOPIC_OVERRIDES = {  # where the rule has none of its own
    "mri-safety": [
        ("mr-conditions-confirmed", "MR conditions confirmed for a lumbar scan"),
        ("radiology-consulted", "Discussed with radiology"),
        ("not-pregnant", "Not pregnant (status checked)"),
        ("other", "Other reason"),
    ],
}
_GENERIC_OVERRIDES = [("not-relevant", "Not relevant for this patient"), ("other", "Other reason")]
_RED_FLAG_CHECKLIST = (
    "new bladder or bowel dysfunction, saddle numbness, progressive or severe weakness, a history "
    "of cancer or unexplained weight loss, fever, IV drug use, immunosuppression, significant "
    "trauma or osteoporosis, lumbar surgery"
)


class SiteCodeError(ValueError):
    pass


def load_site_codes(path: Path | None) -> dict[str, list[dict[str, Any]]]:
    """The site code map; an override file needs only the entries it changes."""
    codes = json.loads(DEFAULT_SITE_CODES.read_text(encoding="utf-8"))
    if path is not None:
        try:
            codes.update(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise SiteCodeError(f"CDS_SITE_CODES: {exc}") from None
    codes.pop("_about", None)
    for name, orders in codes.items():
        if (
            not isinstance(orders, list)
            or not orders
            or not all(
                isinstance(o, dict) and {"system", "code", "display"} <= set(o.get("coding", {})) for o in orders
            )
        ):
            raise SiteCodeError(f"site code {name!r}: a list of orders, each with coding.system, code and display")
    return codes


@dataclass(frozen=True)
class PresentedCard:
    """A card as the audit trail, metrics and logs read it, with the CDS Hooks JSON it is sent as."""

    uuid: str
    topic: Topic
    rule_id: str
    indicator: str
    json: dict[str, Any]


@dataclass(frozen=True)
class RatingAction:
    """The system action that writes the PAMA rating back to the order, and the consult id it carries."""

    consult_id: str
    json: dict[str, Any]


EPIC_SCORE_BAND_SYSTEM = "urn:lumbar-mri-cds:epic-score-band"
# Epic stores an appropriateness score band: 7-9 Indicated, 4-6 Marginal, 1-3 Low Utility
_EPIC_BANDS = {UA: ("indicated", "Indicated (7-9)"), MBA: ("marginal", "Marginal (4-6)"),
               UNA: ("low-utility", "Low Utility (1-3)")}  # fmt: skip
_EPIC_BAND_BY_RATING = {"appropriate": _EPIC_BANDS[UA], "not-appropriate": _EPIC_BANDS[UNA]}


@dataclass
class Presenter:
    site_codes: dict[str, list[dict[str, Any]]]
    profile: ClientProfile = ClientProfile.SANDBOX
    new_uuid: Callable[[], str] = lambda: str(uuid.uuid4())

    # --- the rating (R-18) -------------------------------------------------------------------
    def new_consult_id(self) -> str:
        """One consult id per evaluated order: the rating action and every suggestion carry it, so that
        whichever the clinician accepts, the order's consult id is the one in the audit trail."""
        return f"urn:uuid:{self.new_uuid()}"

    def rated_copy(self, order: dict[str, Any], rating: str, category: str | None, consult_id: str) -> dict[str, Any]:
        """The order with the Argonaut PAMA rating extensions and no other change."""
        return self._rated(order, rating, category, consult_id)[0]

    def _rated(
        self, order: dict[str, Any], rating: str, category: str | None, consult_id: str
    ) -> tuple[dict[str, Any], str]:
        resource = orjson.loads(orjson.dumps(order))  # a deep copy: JSON data, several times faster than deepcopy
        kept = [
            e
            for e in resource.get("extension", [])
            if not (isinstance(e, dict) and isinstance(e.get("url"), str) and e["url"] in _PAMA_EXTENSIONS)
        ]
        rating_codings = [{"system": PAMA_RATING_SYSTEM, "code": rating, "display": RATING_DISPLAYS[rating]}]
        if category:
            rating_codings.append(
                {"system": ACR_CATEGORY_SYSTEM, "code": category, "display": CATEGORY_NAMES[category]}
            )
        band = _EPIC_BANDS.get(category or "") or _EPIC_BAND_BY_RATING.get(rating)
        if self.profile is ClientProfile.EPIC and band is not None:
            rating_codings.append({"system": EPIC_SCORE_BAND_SYSTEM, "code": band[0], "display": band[1]})
        resource["extension"] = kept + [
            {"url": PAMA_RATING, "valueCodeableConcept": {"coding": rating_codings}},
            {"url": PAMA_CONSULT_ID, "valueUri": consult_id},
        ]
        return resource, consult_id

    def rating_action(self, assessment: Assessment, order: dict[str, Any], consult_id: str) -> RatingAction:
        if assessment.category is not None:
            basis = f", {assessment.variant.name}" if assessment.variant else ""
            basis += " (ACR Appropriateness Criteria, Low Back Pain)"
        elif assessment.rating == "no-criteria-apply" or assessment.primary is None:
            basis = " (no ACR low back pain variant applies)"
        else:
            basis = f" (no ACR variant applies; basis: {assessment.primary.rule.citations[0].label.split(',')[0]})"
        resource, consult_id = self._rated(order, assessment.rating, assessment.category, consult_id)
        action = {
            "type": "update",
            "description": f"Record the appropriateness rating: {RATING_DISPLAYS[assessment.rating]}{basis}",
            "resource": resource,
        }
        return RatingAction(consult_id, action)

    # --- cards --------------------------------------------------------------------------------
    def cards(self, assessment: Assessment, order: dict[str, Any], consult_id: str) -> list[PresentedCard]:
        return [self._card(finding, assessment, order, consult_id) for finding in assessment.findings]

    def _card(self, finding: Finding, assessment: Assessment, order: dict[str, Any], consult_id: str) -> PresentedCard:
        topic = finding.card_topic
        card_uuid = self.new_uuid()
        card: dict[str, Any] = {
            "uuid": card_uuid,
            "summary": finding.summary,
            "indicator": finding.indicator,
            "detail": self._detail(finding, assessment),
            "source": {
                "label": finding.rule.source,
                "url": finding.rule.citations[0].url,
                "topic": {"system": TOPIC_SYSTEM, "code": topic.value, "display": topic.display},
            },
        }
        suggestions = [self._suggestion(p, finding, assessment, order, consult_id) for p in finding.proposals]
        if suggestions:
            card["suggestions"] = suggestions
            # Epic's client supports only "any"; every suggestion is a complete, safe order on its own
            card["selectionBehavior"] = "any" if self.profile is ClientProfile.EPIC else "at-most-one"
        card["overrideReasons"] = [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": display}
            for code, display in _override_reasons(finding)
        ]
        card["links"] = [{"label": c.label, "url": c.url, "type": "absolute"} for c in finding.rule.citations]
        return PresentedCard(card_uuid, topic, finding.rule.id, finding.indicator, card)

    def _detail(self, finding: Finding, assessment: Assessment) -> str:
        facts = assessment.facts
        lines = [finding.advice, ""]
        if finding.evidence:
            lines += ["**Recorded:**", *(f"- {e.describe()}" for e in finding.evidence), ""]
        also = finding.also + [e for other in assessment.other_red_flags for e in other.evidence]
        also = [e for e in _unique(finding.evidence + also) if e not in finding.evidence]
        if also:
            lines += ["**Also recorded:**", *(f"- {e.describe()}" for e in also), ""]
        variant = finding.rule.variant if finding is assessment.primary else None
        if variant is not None and facts.study is not None:
            category = assessment.category or UA
            lines.append(
                f"**Guideline:** ACR Appropriateness Criteria, Low Back Pain (2021), variant {variant.number}: "
                f"{variant.title}. Ordered: {facts.study.display} ({facts.study.code}): {CATEGORY_NAMES[category]}."
            )
        else:
            lines.append(f"**Guideline:** {finding.rule.citations[0].label}.")
        if finding.rule.group.defers and facts.study is not None and facts.study.contrast == "with":
            lines += [
                "",
                "**If you keep imaging:** the order is MRI with contrast only, which is usually not "
                "appropriate in any ACR variant: order MRI without contrast (or without and with).",
            ]
        if finding.rule.group.defers:
            lines += [
                "",
                f"**No red flag is recorded.** Checked for: {_RED_FLAG_CHECKLIST}. The absence of a recorded "
                "red flag is not the absence of one: if any is present, override and keep the order.",
                "",
                "**Looked at:** " + _looked_at(facts),
            ]
        lines += ["", f"_Rule {finding.rule.id}: {finding.rule.title}._"]
        return "\n".join(lines).strip()

    # --- suggestions --------------------------------------------------------------------------
    def _suggestion(
        self, proposal: Proposal, finding: Finding, assessment: Assessment, order: dict[str, Any], consult_id: str
    ) -> dict[str, Any]:
        reference = f"ServiceRequest/{order.get('id')}"
        actions: list[dict[str, Any]]
        if proposal.kind == "set-priority":
            resource = self.rated_copy(order, assessment.rating, assessment.category, consult_id)
            resource["priority"] = proposal.value
            actions = [
                {
                    "type": "update",
                    "description": f"Set the MRI order's priority to {proposal.value}",
                    "resource": resource,
                }
            ]
        elif proposal.kind == "replace-study":
            site, *more = self.site_codes[str(proposal.value)]  # more: studies ordered with it (thoracic CT)
            rating, category = _rating_of(site, assessment)
            resource = self.rated_copy(order, rating, category, consult_id)
            resource["code"] = {"coding": [dict(site["coding"])], "text": site["coding"]["display"]}
            description = f"Change the order to {site['coding']['display']}"
            if proposal.priority:
                resource["priority"] = proposal.priority
                description += f", priority {proposal.priority}"
            actions = [{"type": "update", "description": description, "resource": resource}]
            actions += [self._create(o, order, proposal.priority) for o in more]
        elif proposal.kind == "remove-order":
            actions = [{"type": "delete", "description": "Remove the draft lumbar MRI order", "resourceId": reference}]
            if proposal.value:
                actions += [self._create(o, order, None) for o in self.site_codes[str(proposal.value)]]
        elif proposal.kind == "add-orders":
            actions = [{"type": "delete", "description": "Remove the draft lumbar MRI order", "resourceId": reference}]
            actions += [self._create(o, order, proposal.priority) for o in self.site_codes[str(proposal.value)]]
        else:  # pragma: no cover - a rule proposing an unknown kind is a programming error
            raise ValueError(proposal.kind)
        label = proposal.label
        if proposal.kind in ("replace-study", "add-orders"):  # the cost in dose, beside each suggested study
            level = radiation_level(self.site_codes[str(proposal.value)])
            label += f" ({level})" if level else ""
        suggestion: dict[str, Any] = {"label": label, "uuid": self.new_uuid(), "actions": actions}
        if proposal.recommended:
            suggestion["isRecommended"] = True
        return suggestion

    def _create(self, site_order: dict[str, Any], draft: dict[str, Any], priority: str | None) -> dict[str, Any]:
        resource = self._new_order(site_order, draft)
        description = f"Order {site_order['coding']['display']}"
        if priority:
            resource["priority"] = priority
            description += f", priority {priority}"
        return {"type": "create", "description": description, "resource": resource}

    @staticmethod
    def _new_order(site_order: dict[str, Any], draft: dict[str, Any]) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "code": {"coding": [dict(site_order["coding"])], "text": site_order["coding"]["display"]},
        }
        for name in ("subject", "encounter", "reasonCode", "reasonReference"):
            if draft.get(name):
                resource[name] = copy.deepcopy(draft[name])
        return resource


_BASIS_RATING = {
    RatingBasis.GUIDELINE_APPROPRIATE: "appropriate",
    RatingBasis.GUIDELINE_NOT_APPROPRIATE: "not-appropriate",
    RatingBasis.OUTSIDE_CRITERIA: "no-criteria-apply",
}


def _rating_of(site: dict[str, Any], assessment: Assessment) -> tuple[str, str | None]:
    """The rating and ACR category of a suggested study: its category in the assessment's ACR variant;
    where no variant applies (an isolated deficit, trauma, axial SpA), the rule's own basis and no
    borrowed ACR category."""
    basis = assessment.primary.rule.rating if assessment.primary is not None else RatingBasis.OUTSIDE_CRITERIA
    variant = assessment.variant
    if basis is not RatingBasis.ACR_VARIANT or variant is None:
        return _BASIS_RATING.get(basis, assessment.rating), None
    modality = site.get("modality")
    category: str | None = None
    if modality == "mri":
        category = variant.mri_category(site.get("contrast", "without"))
    elif modality in ("ct", "ct-myelography"):
        category = variant.ct_without
    elif modality == "xr":
        category = UA if variant.number in (5, 6) else MBA
    return rating_for(category), category


def _override_reasons(finding: Finding) -> list[tuple[str, str]]:
    topic = finding.card_topic.value
    if finding.rule.id in _RULE_OVERRIDES and topic == finding.rule.topic.value:
        return _RULE_OVERRIDES[finding.rule.id]
    return _TOPIC_OVERRIDES.get(topic) or _OVERRIDES.get(topic, _GENERIC_OVERRIDES)


def _looked_at(facts: Facts) -> str:
    counts = facts.looked_at
    shown = [(counts.get("conditions", 0), "problem or diagnosis", "problems and diagnoses"),
             (counts.get("observations", 0), "result or finding", "results and findings"),
             (counts.get("orders", 0) + counts.get("procedures", 0), "order or procedure", "orders and procedures"),
             (counts.get("medicines", 0), "medicine", "medicines"),
             (counts.get("imaging", 0), "imaging report or study", "imaging reports and studies"),
             (counts.get("devices", 0), "device", "devices")]  # fmt: skip
    text = "; ".join(f"{n} {one if n == 1 else many}" for n, one, many in shown) + " that the rules read."
    if facts.unavailable:
        text += " Not available: " + ", ".join(facts.unavailable) + "."
    return text


def _unique(evidence: list[Evidence]) -> list[Evidence]:
    """Each item once; the patient's age once, whichever rule named it first."""
    seen: set[tuple[str, str | None, str]] = set()
    result = []
    for item in evidence:
        key = (item.resource_type, item.id, item.label)
        if item.resource_type == "Patient" and item.label.startswith("Age "):
            key = ("Patient", None, "age")
        if key not in seen:
            seen.add(key)
            result.append(item)
    return result
