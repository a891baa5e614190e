"""The rule base R-01..R-18: one entry per rule, pure functions of the facts and the thresholds.

Precedence (clinical specification 7.1 and 7.3): emergency (R-01, R-02, R-TRAUMA-MAJOR) -> urgent
(R-03, R-04) -> imaging appropriate with advice (R-05, R-07, R-06), or outside these criteria
(R-AS) -> repeat (R-11) -> failed care (R-10, R-10b) -> defer (R-08, R-09). The first that fires
decides the one appropriateness card of the order; any red flag (R-01..R-07, R-TRAUMA-MAJOR) and
axial spondyloarthritis (RF-AS) rule out deferral. Safety and modality rules (R-12..R-17) are
orthogonal and apply only when imaging goes ahead. R-18 rates the order (Argonaut PAMA).

To add a rule: one Rule entry below (id, card topic, variant, citations, test), its value sets,
and a patient fixture with its scenario.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..configuration import Thresholds
from .facts import Evidence, Facts
from .guidelines import (
    ACEP_CW,
    ACOG_723,
    ACP_2007,
    ACP_2011,
    ACR_AXIAL_SPA,
    ACR_LBP,
    ACR_LBP_2016,
    ACR_MR_SAFETY,
    ACR_NKF_GBCA,
    ACR_SPINE_TRAUMA,
    ARGONAUT_PAMA,
    CHOOSING_WISELY,
    EL_BARZOUHI,
    HRS_2017,
    NASS_2014,
    NICE_NG59,
    UA,
    UNA,
    V1,
    V2,
    V3,
    V4,
    V5,
    V6,
    V7,
    Citation,
    Variant,
)

EMERGENCY, URGENT, ADVICE, REPEAT, FAILED_CARE, DEFER, SAFETY = (
    "emergency",
    "urgent",
    "advice",
    "repeat",
    "failed-care",
    "defer",
    "safety",
)
RED_FLAG_GROUPS = (EMERGENCY, URGENT, ADVICE)


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
    rule: Rule
    evidence: list[Evidence]
    indicator: str
    summary: str
    advice: str
    proposals: list[Proposal] = field(default_factory=list)
    topic: str | None = None  # overrides the rule's card topic
    also: list[Evidence] = field(default_factory=list)  # supporting facts named in the detail

    @property
    def card_topic(self) -> str:
        return self.topic or self.rule.topic


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    group: str
    topic: str  # the card's source.topic code
    variant: Variant | None
    citations: tuple[Citation, ...]
    test: Callable[[Facts, Thresholds], Finding | None]
    rated: bool = True  # False: the ACR low back pain criteria do not cover it; the order is rated no-criteria-apply


# --- red flags ---------------------------------------------------------------------------------


def _cauda_equina(f: Facts, t: Thresholds) -> Finding | None:
    evidence = f.cauda_equina + f.ces_signs
    if not evidence:
        return None
    return Finding(
        RULES_BY_ID["R-01"],
        evidence,
        "critical",
        "Possible cauda equina syndrome: emergency MRI today, do not defer",
        "Suspected cauda equina syndrome needs MRI the same day (ACR variant 4: MRI without contrast is "
        "usually appropriate; with and without contrast if infection or tumour is suspected). Contact the "
        "on-call spine surgeon now. If MRI is impossible, CT myelography or CT without contrast, without "
        "delaying transfer.",
        [Proposal("set-priority", "stat", "Keep the MRI and make it STAT", recommended=True)],
    )


def _neuro_deficit(f: Facts, t: Thresholds) -> Finding | None:
    if not f.severe_deficit and not f.weakness:
        return None
    distinct = {e.id for e in f.severe_deficit + f.weakness}
    critical = bool(f.severe_deficit) or len(distinct) >= 2
    summary = (
        "Severe neurological deficit recorded: MRI now, do not defer"
        if critical
        else "New motor weakness recorded: image promptly, do not defer"
    )
    return Finding(
        RULES_BY_ID["R-02"],
        f.severe_deficit + [e for e in f.weakness if e not in f.severe_deficit],
        "critical" if critical else "warning",
        summary,
        "Severe or progressive neurological deficit is an indication for MRI without delay (ACP 2007 "
        "recommendation 3; ACR 2016). MRI without contrast is usually sufficient. Re-examine: a rapidly "
        "progressive or multi-level deficit needs same-day imaging.",
        [
            Proposal(
                "set-priority",
                "stat" if critical else "urgent",
                "Keep the MRI and make it " + ("STAT" if critical else "urgent"),
                recommended=True,
            )
        ],
    )


def _major_trauma(f: Facts, t: Thresholds) -> Finding | None:
    if not f.major_trauma:
        return None
    if f.pregnancy:  # pregnancy never prompts CT; nor does it withhold CT after major trauma
        return Finding(
            RULES_BY_ID["R-TRAUMA-MAJOR"],
            f.major_trauma,
            "critical",
            "High-energy trauma recorded in pregnancy: trauma pathway now; agree CT or MRI with radiology",
            "After a vehicle collision or a fall from height the spine is assessed on the trauma pathway, "
            "where CT is the usual first study (ACR acute spinal trauma). CT is not withheld in pregnancy "
            "when it is needed (ACOG 723), but it exposes the fetus: decide the study with radiology. "
            "This is not back pain to defer.",
            [Proposal("set-priority", "stat", "Keep the MRI and make it STAT")],
            also=f.pregnancy,
        )
    return Finding(
        RULES_BY_ID["R-TRAUMA-MAJOR"],
        f.major_trauma,
        "critical",
        "High-energy trauma recorded: CT of the spine first (trauma pathway), do not defer",
        "After a vehicle collision or a fall from height, CT of the thoracic and lumbar spine (often "
        "reconstructed from a chest, abdomen and pelvis CT) is the usual first study (ACR acute spinal "
        "trauma, outside the low back pain criteria; ACR 2016: CT when fracture is the concern). MRI "
        "follows for a neurological deficit or a suspected cord or ligament injury.",
        [
            Proposal(
                "replace-study",
                "ct_lumbar_without_contrast",
                "Replace with CT lumbar spine without contrast, STAT",
                recommended=True,
                priority="stat",
            ),
            Proposal("set-priority", "stat", "Keep the MRI and make it STAT"),
        ],
    )


def _malignancy(f: Facts, t: Thresholds) -> Finding | None:
    strong = f.spinal_metastasis + [e for e in f.cancer if e not in f.spinal_metastasis]
    if strong:
        critical = bool(f.severe_deficit or f.weakness or f.ces_signs)
        what = "Spinal metastasis recorded" if f.spinal_metastasis else "Cancer recorded"
        return Finding(
            RULES_BY_ID["R-03"],
            strong,
            "critical" if critical else "warning",
            f"{what} with back pain: urgent MRI"
            + (" today (possible cord compression)" if critical else " (within a week)"),
            "A history of cancer is the most informative red flag for spinal metastasis (ACP 2007, 2011). "
            "ACR variant 7: MRI without, or without and with, contrast is usually appropriate. Any "
            "neurological deficit means suspected metastatic cord compression: image the same day; consider "
            "whole-spine MRI as oncology advises.",
            _urgent_proposals(f, "stat" if critical else "urgent", prefer_contrast=False),
        )
    weaker = list(f.weight_loss)
    if f.age is not None and f.age > t.cancer_risk_age:
        weaker.append(Evidence("Patient", None, f"Age {f.age} (over {t.cancer_risk_age})"))
    if f.weight_loss and len(weaker) >= 2:
        return Finding(
            RULES_BY_ID["R-03"],
            weaker,
            "info",
            "Weaker cancer risk factors together: imaging reasonable; consider radiographs and ESR first",
            "Unexplained weight loss with age over 50 raises the possibility of malignancy (ACP 2007 table 1). "
            "ACP 2011 suggests radiographs with ESR after about a month's trial of therapy; MRI if they are "
            "abnormal or suspicion stays high. Deferral is not advised with these findings recorded.",
            topic="cancer-risk-factors",
        )
    return None


def _infection(f: Facts, t: Thresholds) -> Finding | None:
    cofactors = f.iv_drug_use + f.recent_infection + f.immunosuppression + f.raised_markers
    if not f.spinal_infection and not f.fever:
        risk = f.iv_drug_use + f.recent_infection + f.raised_markers
        if not risk:
            return None
        return Finding(
            RULES_BY_ID["R-04"],
            risk,
            "info",
            "Spinal infection risk factor recorded: check for fever; imaging is not deferred",
            "IV drug use, a recent systemic infection or raised inflammatory markers are risk factors for "
            "vertebral infection (ACP 2007 table 1; NASS and ACEP Choosing Wisely). With fever, back pain "
            "and such a factor, MRI without and with contrast is indicated now (ACR variant 7).",
            topic="infection-risk-factors",
        )
    critical = bool(f.sepsis or f.severe_deficit or f.weakness or f.ces_signs)
    return Finding(
        RULES_BY_ID["R-04"],
        f.spinal_infection + f.fever,
        "critical" if critical else "warning",
        "Possible spinal infection: urgent MRI" + (" today" if critical else "") + ", with and without contrast",
        "Fever or a known spinal infection with back pain calls for MRI (ACR variant 7: MRI without and with "
        "contrast is usually appropriate; ACP 2011: fever with IV drug use or recent infection means "
        "immediate MRI). Sepsis or a neurological deficit makes it an emergency."
        + (
            "" if cofactors or f.spinal_infection else " No other infection risk factor is recorded: confirm the fever."
        ),
        _urgent_proposals(f, "stat" if critical else "urgent", prefer_contrast=True),
        also=cofactors + f.sepsis,
    )


def _urgent_proposals(f: Facts, priority: str, prefer_contrast: bool) -> list[Proposal]:
    """Keep the MRI at a higher priority; for infection (and tumour) MRI without and with contrast
    is usually appropriate too, and preferred for infection (ACR variant 7)."""
    word = "STAT" if priority == "stat" else "urgent"
    keep = Proposal("set-priority", priority, f"Keep the MRI and make it {word}", recommended=not prefer_contrast)
    if f.study is None or f.study.contrast != "without":
        return [Proposal("set-priority", priority, f"Keep the MRI and make it {word}", recommended=True)]
    change = Proposal(
        "replace-study",
        "mri_lumbar_without_and_with_contrast",
        f"Change to MRI without and with contrast, {word}",
        recommended=prefer_contrast,
        priority=priority,
    )
    return [change, keep] if prefer_contrast else [keep, change]


def _immunosuppression(f: Facts, t: Thresholds) -> Finding | None:
    if not f.immunosuppression:
        return None
    return Finding(
        RULES_BY_ID["R-05"],
        f.immunosuppression,
        "info",
        "Immunosuppression recorded: imaging is appropriate (ACR variant 7); do not defer",
        "Back pain in an immunosuppressed patient warrants imaging (ACR variant 7: MRI without, or without "
        "and with, contrast is usually appropriate). Look for fever or raised inflammatory markers: "
        "spinal infection can present quietly.",
    )


def _prior_surgery(f: Facts, t: Thresholds) -> Finding | None:
    if not f.lumbar_surgery or not f.indication:
        return None
    if f.surgery_date is not None and f.episode_start is not None and f.episode_start <= f.surgery_date:
        return None  # the symptoms predate the operation: not "new after surgery"
    proposals = []
    if f.study is not None and f.study.contrast == "without":
        proposals.append(
            Proposal(
                "replace-study",
                "mri_lumbar_without_and_with_contrast",
                "Change to MRI lumbar spine without and with contrast",
            )
        )
    return Finding(
        RULES_BY_ID["R-07"],
        f.lumbar_surgery,
        "info",
        "New symptoms after lumbar surgery: imaging appropriate; MRI with and without contrast preferred",
        "ACR variant 5: MRI without and with contrast (scar versus recurrent disc) and without contrast are "
        "usually appropriate; radiographs are usually appropriate for hardware and alignment.",
        proposals,
        also=f.indication[:1],
    )


def _fracture_risk(f: Facts, t: Thresholds) -> Finding | None:
    if not f.fracture_risk and not f.vertebral_fracture:
        return None
    return Finding(
        RULES_BY_ID["R-06"],
        f.fracture_risk + f.vertebral_fracture,
        "info",
        "Fracture risk recorded: imaging appropriate; radiographs or CT are reasonable first studies",
        "ACR variant 6: radiographs, CT without contrast and MRI without contrast are all usually "
        "appropriate. Radiographs are a reasonable first study; CT shows bony detail best; MRI if there is "
        "a neurological deficit, or films are negative and suspicion persists.",
        [
            Proposal("replace-study", "xr_lumbar", "Order lumbar spine radiographs instead"),
            Proposal("replace-study", "ct_lumbar_without_contrast", "Order CT lumbar spine without contrast instead"),
        ],
    )


def _axial_spondyloarthritis(f: Facts, t: Thresholds) -> Finding | None:
    if not f.axial_spa:
        return None
    return Finding(
        RULES_BY_ID["R-AS"],
        f.axial_spa,
        "info",
        "Axial spondyloarthritis recorded: not for deferral; consider rheumatology and sacroiliac-joint imaging",
        "Inflammatory back pain is outside the ACR low back pain criteria (ACR has a separate topic for "
        "axial spondyloarthritis) and is not managed by waiting 6 weeks (ACP 2007; NICE NG59 1.1.1). "
        "Radiographs or MRI of the sacroiliac joints and a rheumatology opinion are the usual next steps; "
        "lumbar MRI is for another indication such as a neurological deficit or a suspected fracture of "
        "the ankylosed spine.",
    )


# --- no red flag: repeat, failed care, defer -----------------------------------------------------


def _repeat_imaging(f: Facts, t: Thresholds) -> Finding | None:
    if not f.prior_imaging:
        return None
    prior = f.prior_imaging[0]
    if f.surgery_date is not None and prior.when is not None and f.surgery_date > prior.when:
        return None  # interval lumbar surgery
    if f.episode_start is not None and prior.when is not None and f.episode_start > prior.when:
        return None  # a new complaint since the study: a change in clinical status
    return Finding(
        RULES_BY_ID["R-11"],
        [prior],
        "warning",
        f"Repeat lumbar imaging usually not indicated: last study {prior.when.isoformat()}, no change recorded",
        "Repeat imaging without a change in clinical status is not recommended (ACP 2011); MRI at one year "
        "does not distinguish good from poor outcomes in sciatica (el Barzouhi 2013). Review the previous "
        f"report. No red flag is recorded; no new symptom, finding or lumbar surgery is recorded since "
        f"{prior.when.isoformat()}.",
        [Proposal("remove-order", None, "Remove the repeat MRI order", recommended=True)],
    )


def _failed_care(f: Facts, t: Thresholds) -> Finding | None:
    if f.care_start is None or (f.now.date() - f.care_start).days < t.conservative_care_days:
        return None
    if f.candidacy:
        return Finding(
            RULES_BY_ID["R-10"], f.conservative_care[:2] + f.candidacy, "info", "", ""
        )  # appropriate: no card
    return Finding(
        RULES_BY_ID["R-10b"],
        f.conservative_care[:2],
        "info",
        "Imaging after failed conservative care helps only if surgery or injection is being considered",
        "Six weeks or more of conservative care are recorded (ACR variant 3). MRI is recommended only for "
        "patients who are candidates for surgery or epidural injection, where the result would change "
        "management (ACP 2007 recommendation 4; NICE NG59 1.1.6). No referral to spine surgery or "
        "planned injection is recorded.",
    )


def _acute(f: Facts, t: Thresholds) -> Finding | None:
    if f.episode_days is None or f.episode_days >= t.acute_episode_days:
        return None
    return Finding(
        RULES_BY_ID["R-08"],
        f.indication,
        "warning",
        "Lumbar MRI usually not appropriate yet: back pain under 6 weeks, no red flags recorded",
        f"Back pain for {f.episode_days} days without a red flag: imaging is usually not appropriate (ACR "
        "variant 1) and does not improve outcomes (ACP 2007, 2011; Choosing Wisely; NICE NG59 1.1.4). "
        "Most episodes improve with conservative care: advise activity, and consider physical therapy; "
        "reassess at 6 weeks.",
        [
            Proposal(
                "remove-order", "pt_referral", "Remove the MRI order and refer to physical therapy", recommended=True
            ),
            Proposal("remove-order", None, "Remove the MRI order"),
        ],
        also=_weaker_factors(f),
    )


def _weaker_factors(f: Facts) -> list[Evidence]:
    """Named on a deferral card: ACP 2011 defers imaging for a weaker cancer risk factor alone,
    suggesting radiographs and ESR after about a month without improvement."""
    return [
        Evidence(
            e.resource_type,
            e.id,
            e.label + " (weaker cancer risk factor: radiographs and ESR if no improvement after about a month)",
            e.when,
        )
        for e in f.weight_loss
    ]


def _no_conservative_care(f: Facts, t: Thresholds) -> Finding | None:
    if f.care_start is not None:
        started = f"Conservative care recorded since {f.care_start.isoformat()}: under 6 weeks so far."
    else:
        started = "No physical therapy or other conservative care is recorded."
    duration = (
        f"Back pain for {f.episode_days} days"
        if f.episode_days is not None
        else "The duration of the back pain is not recorded"
    )
    return Finding(
        RULES_BY_ID["R-09"],
        f.indication,
        "warning",
        "Lumbar MRI usually not appropriate: no 6-week trial of conservative care recorded, no red flags recorded",
        f"{duration}. {started} Without red flags and without 6 weeks of management, MRI is usually not "
        "appropriate (ACR variants 1 and 2). Start and document 6 weeks of conservative care (physical "
        "therapy, activity, analgesia); image if symptoms persist and surgery or injection is considered.",
        [
            Proposal(
                "remove-order", "pt_referral", "Remove the MRI order and refer to physical therapy", recommended=True
            ),
            Proposal("remove-order", None, "Remove the MRI order"),
        ],
        also=_weaker_factors(f),
    )


# --- safety and modality (only when imaging goes ahead) -----------------------------------------


def _contrast_choice(f: Facts, t: Thresholds) -> Finding | None:
    if f.study is None:
        return None
    if f.study.contrast == "with":
        return Finding(
            RULES_BY_ID["R-12"],
            [],
            "info",
            "Post-contrast-only lumbar MRI is usually not appropriate: choose without, or without and with, contrast",
            "MRI lumbar spine with IV contrast only is usually not appropriate in every ACR low back pain "
            "variant. MRI without contrast suits most questions; without and with contrast for suspected "
            "infection, tumour or recurrent disc after surgery.",
            [
                Proposal(
                    "replace-study",
                    "mri_lumbar_without_contrast",
                    "Change to MRI lumbar spine without contrast",
                    recommended=True,
                ),
                Proposal(
                    "replace-study",
                    "mri_lumbar_without_and_with_contrast",
                    "Change to MRI lumbar spine without and with contrast",
                ),
            ],
        )
    return None


def _contrast_choice_v3(f: Facts, t: Thresholds) -> Finding | None:
    """Part of R-12: in variant 3 the plain study is the usually-appropriate one."""
    if f.study is None or f.study.contrast != "without-and-with":
        return None
    return Finding(
        RULES_BY_ID["R-12"],
        [],
        "info",
        "MRI without contrast is the usually appropriate study here (ACR variant 3)",
        "After failed conservative care without other red flags, MRI without contrast is usually "
        "appropriate; without and with contrast may be appropriate (ACR variant 3).",
        [
            Proposal(
                "replace-study",
                "mri_lumbar_without_contrast",
                "Change to MRI lumbar spine without contrast",
                recommended=True,
            )
        ],
    )


def _implant(f: Facts, t: Thresholds) -> Finding | None:
    if not f.implants:
        return None
    if f.pregnancy:
        return Finding(
            RULES_BY_ID["R-13"],
            f.implants,
            "warning",
            "Implant recorded in pregnancy: discuss with radiology before choosing MRI or CT",
            "An implant may make MRI unsafe: verify its MR status (many are MR Conditional). CT is not "
            "withheld when needed, but CT of the lumbar spine exposes the fetus (ACOG 723): decide with "
            "radiology.",
            topic="mri-safety",
            also=f.pregnancy,
        )
    return Finding(
        RULES_BY_ID["R-13"],
        f.implants,
        "warning",
        "Implant recorded: MRI may be unsafe. Verify MR status; CT lumbar spine is the alternative",
        "Verify the device's MR status first: many pacemakers, neurostimulators and cochlear implants are "
        "MR Conditional and can be scanned under their conditions (HRS 2017; ACR MR safety). If MRI "
        "cannot be done: CT lumbar spine without contrast; CT myelography when nerve-root or canal detail "
        "is needed.",
        [
            Proposal(
                "replace-study",
                "ct_lumbar_without_contrast",
                "Replace with CT lumbar spine without contrast",
                recommended=True,
            ),
            Proposal("add-orders", "ct_myelography", "Replace with CT myelography (nerve-root or canal detail)"),
        ],
    )


def _conditional_device(f: Facts, t: Thresholds) -> Finding | None:
    if not f.conditional_devices or f.implants:
        return None
    return Finding(
        RULES_BY_ID["R-13"],
        f.conditional_devices,
        "info",
        "MR Conditional device recorded: confirm its scan conditions before MRI",
        "The device is labelled MR Conditional: MRI is possible under the manufacturer's conditions "
        "(field strength, mode, programming). Tell radiology; no change of study is needed.",
        topic="mri-safety",
    )


def _claustrophobia(f: Facts, t: Thresholds) -> Finding | None:
    if not f.claustrophobia:
        return None
    proposals = (
        []
        if f.pregnancy
        else [
            Proposal(
                "replace-study",
                "ct_lumbar_without_contrast",
                "MRI not tolerable: order CT lumbar spine without contrast instead",
            )
        ]
    )
    return Finding(
        RULES_BY_ID["R-14"],
        f.claustrophobia,
        "info",
        "Claustrophobia recorded: consider anxiolysis or a wide-bore or open MRI",
        "Claustrophobia is not a contraindication: oral anxiolysis, a wide-bore or open scanner, or "
        "sedation usually make MRI possible. Use CT only if MRI remains intolerable.",
        proposals,
    )


def _gadolinium_kidney(f: Facts, t: Thresholds) -> Finding | None:
    if f.study is None or not f.study.uses_contrast or not f.low_egfr:
        return None
    return Finding(
        RULES_BY_ID["R-15"],
        f.low_egfr,
        "warning",
        "Reduced kidney function: if contrast is essential use a group II gadolinium agent",
        f"eGFR below {t.egfr_low:g}, dialysis or acute kidney injury is recorded. The risk of NSF with group "
        "II agents is very low and contrast should not be withheld when it is needed (ACR-NKF 2021); "
        "consider whether MRI without contrast answers the question. Do not switch to CT for this reason.",
        [
            Proposal(
                "replace-study",
                "mri_lumbar_without_contrast",
                "Change to MRI lumbar spine without contrast",
                recommended=True,
            )
        ],
        topic="gadolinium-kidney",
    )


def _gadolinium_pregnancy(f: Facts, t: Thresholds) -> Finding | None:
    if f.study is None or not f.study.uses_contrast or not f.pregnancy:
        return None
    return Finding(
        RULES_BY_ID["R-16"],
        f.pregnancy,
        "warning",
        "Pregnancy recorded: avoid routine gadolinium; MRI without contrast is acceptable",
        "MRI without contrast can be done at any stage of pregnancy when indicated (ACR; ACOG 723). "
        "Gadolinium should be given only when it is essential. Pregnancy is never a reason to switch to CT.",
        [
            Proposal(
                "replace-study",
                "mri_lumbar_without_contrast",
                "Change to MRI lumbar spine without contrast",
                recommended=True,
            )
        ],
        topic="gadolinium-pregnancy",
    )


def _ct_for_bony_detail(f: Facts, t: Thresholds) -> Finding | None:
    if not f.vertebral_fracture and not f.recent_trauma:
        return None
    if f.pregnancy:
        return None  # pregnancy never prompts CT
    return Finding(
        RULES_BY_ID["R-17"],
        f.vertebral_fracture + f.recent_trauma,
        "info",
        "For bony detail, CT lumbar spine without contrast is usually appropriate and may be the better study",
        "When fracture is the concern, CT shows the bone best (ACR 2016; ACR variant 6: CT without contrast "
        "is usually appropriate). Keep the MRI for a neurological deficit or to judge the fracture's age.",
        [Proposal("replace-study", "ct_lumbar_without_contrast", "Replace with CT lumbar spine without contrast")],
    )


RULES: tuple[Rule, ...] = (
    Rule(
        "R-01",
        "Suspected cauda equina syndrome",
        EMERGENCY,
        "urgent-imaging",
        V4,
        (ACR_LBP, ACP_2011, ACEP_CW),
        _cauda_equina,
    ),
    Rule(
        "R-02",
        "Severe or progressive neurological deficit",
        EMERGENCY,
        "urgent-imaging",
        V4,
        (ACP_2007, ACP_2011, ACR_LBP_2016),
        _neuro_deficit,
    ),
    Rule(
        "R-TRAUMA-MAJOR",
        "High-energy trauma",
        EMERGENCY,
        "ct-alternative",
        None,
        (ACR_SPINE_TRAUMA, ACR_LBP_2016),
        _major_trauma,
        rated=False,
    ),
    Rule("R-03", "Suspected malignancy", URGENT, "urgent-imaging", V7, (ACR_LBP, ACP_2007, ACP_2011), _malignancy),
    Rule("R-04", "Suspected spinal infection", URGENT, "urgent-imaging", V7, (ACR_LBP, ACP_2011, ACEP_CW), _infection),
    Rule("R-05", "Immunosuppression", ADVICE, "imaging-appropriate", V7, (ACR_LBP,), _immunosuppression),
    Rule(
        "R-07", "Prior lumbar surgery with new symptoms", ADVICE, "prior-lumbar-surgery", V5, (ACR_LBP,), _prior_surgery
    ),
    Rule("R-06", "Fracture risk", ADVICE, "fracture-risk", V6, (ACR_LBP, ACR_LBP_2016, ACP_2011), _fracture_risk),
    Rule(
        "R-AS",
        "Axial spondyloarthritis (inflammatory back pain)",
        ADVICE,
        "inflammatory-back-pain",
        None,
        (ACR_AXIAL_SPA, ACP_2007, NICE_NG59),
        _axial_spondyloarthritis,
        rated=False,
    ),
    Rule(
        "R-11",
        "Repeat imaging without clinical change",
        REPEAT,
        "defer-imaging",
        None,
        (ACP_2011, EL_BARZOUHI),
        _repeat_imaging,
    ),
    Rule(
        "R-10",
        "Failed conservative care, intervention candidate",
        FAILED_CARE,
        "imaging-appropriate",
        V3,
        (ACR_LBP, ACP_2007, NASS_2014),
        _failed_care,
    ),
    Rule(
        "R-10b",
        "Failed conservative care, candidacy not recorded",
        FAILED_CARE,
        "intervention-candidacy",
        V3,
        (ACR_LBP, ACP_2007, NICE_NG59),
        _failed_care,
    ),
    Rule(
        "R-08",
        "Acute low back pain without red flags",
        DEFER,
        "defer-imaging",
        V1,
        (ACR_LBP, ACP_2011, CHOOSING_WISELY, NICE_NG59),
        _acute,
    ),
    Rule(
        "R-09",
        "No trial of conservative care",
        DEFER,
        "defer-imaging",
        V2,
        (ACR_LBP, ACP_2011, CHOOSING_WISELY, NICE_NG59),
        _no_conservative_care,
    ),
    Rule(
        "R-16",
        "Gadolinium in pregnancy",
        SAFETY,
        "gadolinium-pregnancy",
        None,
        (ACOG_723, ACR_MR_SAFETY),
        _gadolinium_pregnancy,
    ),
    Rule(
        "R-15",
        "Gadolinium with reduced kidney function",
        SAFETY,
        "gadolinium-kidney",
        None,
        (ACR_NKF_GBCA,),
        _gadolinium_kidney,
    ),
    Rule("R-12", "Contrast choice", SAFETY, "contrast-choice", None, (ACR_LBP,), _contrast_choice),
    Rule("R-13", "MRI safety: implant", SAFETY, "ct-alternative", None, (ACR_MR_SAFETY, HRS_2017, ACR_LBP), _implant),
    Rule("R-14", "Claustrophobia", SAFETY, "claustrophobia", None, (ACR_MR_SAFETY,), _claustrophobia),
    Rule("R-17", "CT for bony detail", SAFETY, "ct-alternative", V6, (ACR_LBP, ACR_LBP_2016), _ct_for_bony_detail),
    Rule(
        "R-18",
        "Appropriateness rating (Argonaut PAMA)",
        SAFETY,
        "rating",
        None,
        (ARGONAUT_PAMA, ACR_LBP),
        lambda f, t: None,
    ),
)
RULES_BY_ID = {rule.id: rule for rule in RULES}

# R-10 and R-10b share one test: whether candidacy is recorded decides which of them fired.


@dataclass
class Assessment:
    """What the rules concluded for one order: its rating, its one appropriateness card (if any),
    the orthogonal safety and modality cards, and every rule that fired."""

    facts: Facts
    rating: str  # appropriate | not-appropriate | no-criteria-apply
    category: str | None = None  # ACR category of the ordered study: UA | MBA | UNA
    variant: Variant | None = None
    primary: Finding | None = None
    advice: list[Finding] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    other_red_flags: list[Finding] = field(default_factory=list)

    @property
    def deferred(self) -> bool:
        return self.primary is not None and self.primary.rule.group in (REPEAT, DEFER)

    @property
    def findings(self) -> list[Finding]:
        return ([self.primary] if self.primary and self.primary.summary else []) + self.advice


def rating_for(category: str | None) -> str:
    if category is None:
        return "no-criteria-apply"
    return "not-appropriate" if category == UNA else "appropriate"  # MBA counts as appropriate (decision, 9.3)


def assess(facts: Facts, thresholds: Thresholds) -> Assessment:
    if facts.age is not None and facts.age < thresholds.adult_age:
        return Assessment(facts, "no-criteria-apply", fired=["R-18"])
    if not facts.indication:
        return Assessment(facts, "no-criteria-apply", fired=["R-18"])

    red_flags = [
        finding
        for rule in RULES
        if rule.group in RED_FLAG_GROUPS
        for finding in [rule.test(facts, thresholds)]
        if finding is not None
    ]
    if red_flags:
        primary, others = red_flags[0], red_flags[1:]
    else:
        others = []
        primary = (
            _repeat_imaging(facts, thresholds)
            or _failed_care(facts, thresholds)
            or _acute(facts, thresholds)
            or _no_conservative_care(facts, thresholds)
        )
    assessment = Assessment(facts, "", primary=primary, other_red_flags=others)
    assessment.variant = primary.rule.variant
    assessment.fired = [primary.rule.id] + [f.rule.id for f in others]

    study = facts.study
    if study is not None and study.contrast == "with":
        category = UNA
        assessment.fired.append("R-12")
    elif primary.rule.group in (REPEAT, DEFER):
        category = UNA
    elif not primary.rule.rated:
        category = None  # outside the low back pain criteria
    else:
        category = assessment.variant.mri_category(study.contrast if study else "without") if assessment.variant else UA
    assessment.category = category
    assessment.rating = rating_for(category)

    if not assessment.deferred:
        assessment.advice = _safety_findings(facts, thresholds, assessment)
        assessment.fired += [f.rule.id for f in assessment.advice if f.rule.id not in assessment.fired]
    assessment.fired.append("R-18")
    _drop_repeated_proposals(assessment)
    return assessment


def _safety_findings(facts: Facts, thresholds: Thresholds, assessment: Assessment) -> list[Finding]:
    findings = []
    for test in (
        _implant,
        _conditional_device,
        _ct_for_bony_detail,
        _gadolinium_pregnancy,
        _gadolinium_kidney,
        _claustrophobia,
    ):
        finding = test(facts, thresholds)
        if finding is not None:
            findings.append(finding)
    gadolinium = any(f.rule.id in ("R-15", "R-16") for f in findings)  # they already suggest the plain study
    if not gadolinium:
        contrast = _contrast_choice(facts, thresholds)
        no_contrast_reason = (
            assessment.primary is not None
            and assessment.primary.rule.id in ("R-10", "R-10b")
            and not assessment.other_red_flags
        )
        if contrast is None and no_contrast_reason:
            contrast = _contrast_choice_v3(facts, thresholds)
        if contrast is not None:
            findings.append(contrast)
    return findings


def _drop_repeated_proposals(assessment: Assessment) -> None:
    """A change offered on a safety card (say, CT instead) is not offered again on the advice card."""
    offered = {(p.kind, p.value) for finding in assessment.advice for p in finding.proposals}
    if assessment.primary is not None:
        assessment.primary.proposals = [p for p in assessment.primary.proposals if (p.kind, p.value) not in offered]
