"""The vocabulary of the rule table: precedence groups, card topics, rating bases, proposals,
findings, rules and the assessment of one order. No clinical logic here (rules.py, plan.py)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..configuration import Thresholds
from .facts import Evidence, Facts
from .guidelines import UNA, Citation, Variant

LBP_SOURCE = "Lumbar MRI appropriateness (ACR 2021, ACP, NICE NG59)"
MR_SAFETY_SOURCE = "MRI safety (ACR Manual on MR Safety)"


class Group(enum.Enum):
    """Precedence groups, in precedence order (clinical specification 7.3)."""

    EMERGENCY = "emergency"
    URGENT = "urgent"
    ADVICE = "advice"  # imaging appropriate with advice, or outside these criteria
    REPEAT = "repeat"
    FAILED_CARE = "failed-care"
    DEFER = "defer"
    SAFETY = "safety"  # safety and modality: orthogonal, only when imaging goes ahead
    RATING = "rating"  # the PAMA rating: always recorded

    @property
    def rules_out_deferral(self) -> bool:
        """Every rule of the group that fires is named; the first decides, and the order is never deferred."""
        return self in (Group.EMERGENCY, Group.URGENT, Group.ADVICE)

    @property
    def decides(self) -> bool:
        """A group whose first firing rule gives the order's one appropriateness card."""
        return self not in (Group.SAFETY, Group.RATING)

    @property
    def defers(self) -> bool:
        return self in (Group.REPEAT, Group.DEFER)


class RatingBasis(enum.Enum):
    """How the order is rated (Argonaut PAMA) when the rule decides its appropriateness card."""

    ACR_VARIANT = "acr-variant"  # the ACR category of the ordered study in the rule's variant
    GUIDELINE_APPROPRIATE = "guideline-appropriate"  # appropriate on another guideline; no ACR variant covers it
    GUIDELINE_NOT_APPROPRIATE = "guideline-not-appropriate"  # not appropriate on another guideline (ACP 2011)
    OUTSIDE_CRITERIA = "outside-criteria"  # no criterion applies: no-criteria-apply


class Topic(enum.StrEnum):
    """A card's source.topic code (urn:lumbar-mri-cds:card-topic)."""

    DEFER_IMAGING = "defer-imaging"
    URGENT_IMAGING = "urgent-imaging"
    CT_ALTERNATIVE = "ct-alternative"
    IMAGING_APPROPRIATE = "imaging-appropriate"
    INTERVENTION_CANDIDACY = "intervention-candidacy"
    PRIOR_LUMBAR_SURGERY = "prior-lumbar-surgery"
    FRACTURE_RISK = "fracture-risk"
    CANCER_RISK_FACTORS = "cancer-risk-factors"
    INFECTION_RISK_FACTORS = "infection-risk-factors"
    CONTRAST_CHOICE = "contrast-choice"
    GADOLINIUM_KIDNEY = "gadolinium-kidney"
    GADOLINIUM_PREGNANCY = "gadolinium-pregnancy"
    MRI_SAFETY = "mri-safety"
    CLAUSTROPHOBIA = "claustrophobia"
    INFLAMMATORY_BACK_PAIN = "inflammatory-back-pain"
    RATING = "rating"  # no card

    @property
    def display(self) -> str:
        return _TOPIC_DISPLAYS[self]


_TOPIC_DISPLAYS = {
    Topic.DEFER_IMAGING: "Defer imaging",
    Topic.URGENT_IMAGING: "Urgent imaging",
    Topic.CT_ALTERNATIVE: "CT alternative",
    Topic.IMAGING_APPROPRIATE: "Imaging appropriate",
    Topic.INTERVENTION_CANDIDACY: "Surgery or injection candidacy",
    Topic.PRIOR_LUMBAR_SURGERY: "Prior lumbar surgery",
    Topic.FRACTURE_RISK: "Fracture risk",
    Topic.CANCER_RISK_FACTORS: "Cancer risk factors",
    Topic.INFECTION_RISK_FACTORS: "Infection risk factors",
    Topic.CONTRAST_CHOICE: "Contrast choice",
    Topic.GADOLINIUM_KIDNEY: "Gadolinium and kidney function",
    Topic.GADOLINIUM_PREGNANCY: "Gadolinium in pregnancy",
    Topic.MRI_SAFETY: "MRI safety",
    Topic.CLAUSTROPHOBIA: "Claustrophobia",
    Topic.INFLAMMATORY_BACK_PAIN: "Inflammatory back pain",
    Topic.RATING: "Appropriateness rating",
}


@dataclass(frozen=True)
class Proposal:
    """A change the card suggests; cards.py turns it into CDS Hooks actions with the site codes.

    kind: set-priority (value: stat | urgent), replace-study (value: a site code name),
    remove-order (value: a site code for a referral to create, or None), add-orders (value: a site code name)."""

    kind: str
    value: str | None
    label: str
    recommended: bool = False
    priority: str | None = None  # with replace-study: also set the order's priority


@dataclass
class Finding:
    """What a rule's test concluded; `assess` binds it to the rule that produced it."""

    evidence: list[Evidence]
    indicator: str
    summary: str
    advice: str
    proposals: list[Proposal] = field(default_factory=list)
    topic: Topic | None = None  # overrides the rule's card topic
    also: list[Evidence] = field(default_factory=list)  # supporting facts named in the detail
    rule: Rule = field(init=False)

    @property
    def card_topic(self) -> Topic:
        return self.topic or self.rule.topic


Test = Callable[["Facts", Thresholds, "Assessment"], "Finding | None"]


@dataclass(frozen=True)
class Rule:
    """One entry of the rule table. `test` is a pure function of the facts, the thresholds and the
    assessment so far (safety rules read the decided appropriateness finding)."""

    id: str
    title: str
    group: Group
    topic: Topic  # the card's source.topic code
    variant: Variant | None
    citations: tuple[Citation, ...]
    test: Test
    rating: RatingBasis = RatingBasis.ACR_VARIANT
    yields_to: tuple[str, ...] = ()  # safety rules whose card already says what this one would
    source: str = LBP_SOURCE  # the card's source.label

    def __post_init__(self) -> None:
        if not self.citations:  # a card must say whose advice it gives (source.url, Guideline line)
            raise ValueError(f"rule {self.id} has no citation: every rule cites the guideline it follows")


@dataclass
class Assessment:
    """What the rules concluded for one order: its rating, its one appropriateness card (if any),
    the orthogonal safety and modality cards, and every rule that fired."""

    facts: Facts
    rating: str = ""  # appropriate | not-appropriate | no-criteria-apply
    category: str | None = None  # ACR category of the ordered study: UA | MBA | UNA
    variant: Variant | None = None
    primary: Finding | None = None
    advice: list[Finding] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    other_red_flags: list[Finding] = field(default_factory=list)

    @property
    def deferred(self) -> bool:
        return self.primary is not None and self.primary.rule.group.defers

    @property
    def findings(self) -> list[Finding]:
        return ([self.primary] if self.primary and self.primary.summary else []) + self.advice


def rating_for(category: str | None) -> str:
    if category is None:
        return "no-criteria-apply"
    return "not-appropriate" if category == UNA else "appropriate"  # MBA counts as appropriate (decision, 9.3)
