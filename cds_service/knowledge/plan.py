"""One recommended order per draft order: the safety and modality layer's last word.

Each card's proposals are written by its own rule; a client may accept any subset of them, in any
order (Epic allows any number). So once every finding is known, the order's plan is decided from
all of them together: the priority (the most urgent any finding asks for; STAT in an emergency),
whether gadolinium may be suggested (never in pregnancy; with eGFR < 30 only with the group II
advice) and whether CT may be (never prompted by pregnancy). Every proposal is then rewritten to
that plan, so that no accepted suggestion loses the urgency or brings back a contraindicated
contrast (clinical specification 5.3, 5.4, 7.2 R-13, R-15, R-16).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from .facts import Facts
from .findings import Assessment, Finding, Group, Proposal

PRIORITY_RANK = {None: 0, "urgent": 1, "stat": 2}
GADOLINIUM_STUDIES = frozenset({"mri_lumbar_without_and_with_contrast"})  # site code names
CT_STUDIES = frozenset({"ct_lumbar_without_contrast", "ct_thoracolumbar_without_contrast", "ct_myelography"})
PLAIN_MRI = "mri_lumbar_without_contrast"
GROUP_II_NOTE = "if contrast is essential: a group II agent"


class Gadolinium(enum.Enum):
    ALLOWED = "allowed"
    GROUP_II = "group-ii"  # eGFR < 30, dialysis or AKI: only if essential, a group II agent (ACR-NKF 2021)
    AVOID = "avoid"  # pregnancy: not suggested; discuss with radiology (ACR; ACOG 723)


@dataclass(frozen=True)
class OrderPlan:
    priority: str | None
    gadolinium: Gadolinium
    ct_allowed: bool


def gives_gadolinium(proposal: Proposal) -> bool:
    return proposal.kind in ("replace-study", "add-orders") and proposal.value in GADOLINIUM_STUDIES


def gives_ct(proposal: Proposal) -> bool:
    return proposal.kind in ("replace-study", "add-orders") and proposal.value in CT_STUDIES


def wants_gadolinium(findings: list[Finding]) -> bool:
    """A finding suggests a contrast study (infection, tumour, scar versus recurrent disc)."""
    return any(gives_gadolinium(p) for finding in findings for p in finding.proposals)


def most_urgent(*priorities: str | None) -> str | None:
    return max(priorities, key=lambda p: PRIORITY_RANK.get(p, 0))


def plan_for(facts: Facts, assessment: Assessment) -> OrderPlan:
    findings = _all_findings(assessment) + assessment.other_red_flags  # a red flag named on the card counts too
    asked = [p.value if p.kind == "set-priority" else p.priority for f in findings for p in f.proposals]
    emergency = any(f.rule.group is Group.EMERGENCY and f.indicator == "critical" for f in findings)
    priority = most_urgent("stat" if emergency else None, *asked)
    if facts.pregnancy:
        gadolinium = Gadolinium.AVOID
    elif facts.low_egfr:
        gadolinium = Gadolinium.GROUP_II
    else:
        gadolinium = Gadolinium.ALLOWED
    return OrderPlan(priority, gadolinium, ct_allowed=not facts.pregnancy)


def apply_plan(facts: Facts, assessment: Assessment) -> OrderPlan:
    """Rewrite every proposal of every card to the order's plan (in place) and return the plan."""
    plan = plan_for(facts, assessment)
    ordered_gadolinium = facts.study is not None and facts.study.uses_contrast
    for finding in _all_findings(assessment):
        rewritten = []
        for proposal in finding.proposals:
            if gives_gadolinium(proposal) and plan.gadolinium is Gadolinium.AVOID:
                continue  # the pregnancy card says to discuss contrast with radiology
            if gives_ct(proposal) and not plan.ct_allowed:
                continue
            if proposal.kind == "set-priority" and ordered_gadolinium and plan.gadolinium is Gadolinium.AVOID:
                proposal = Proposal("replace-study", PLAIN_MRI, _with_priority("Change to MRI without contrast",
                                    plan.priority), proposal.recommended, plan.priority)  # fmt: skip
            rewritten.append(_to_plan(proposal, plan))
        finding.proposals = rewritten
    return plan


def _to_plan(proposal: Proposal, plan: OrderPlan) -> Proposal:
    if proposal.kind == "set-priority":
        priority = most_urgent(proposal.value, plan.priority)
        label = proposal.label if priority == proposal.value else f"Keep the MRI and make it {_word(priority)}"
        return dataclasses.replace(proposal, value=priority, label=label)
    if proposal.kind in ("replace-study", "add-orders"):
        priority = most_urgent(proposal.priority, plan.priority)
        label = proposal.label if priority == proposal.priority else _with_priority(proposal.label, priority)
        if gives_gadolinium(proposal) and plan.gadolinium is Gadolinium.GROUP_II and GROUP_II_NOTE not in label:
            label += f" ({GROUP_II_NOTE})"
        return dataclasses.replace(proposal, priority=priority, label=label)
    return proposal


def _with_priority(label: str, priority: str | None) -> str:
    if priority is None:
        return label
    for word in (", STAT", ", urgent"):
        label = label.removesuffix(word)
    return f"{label}, {_word(priority)}"


def _word(priority: str | None) -> str:
    return "STAT" if priority == "stat" else "urgent"


def _all_findings(assessment: Assessment) -> list[Finding]:
    return ([assessment.primary] if assessment.primary is not None else []) + assessment.advice
