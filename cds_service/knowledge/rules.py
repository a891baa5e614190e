"""The rule base R-01..R-18: one entry per rule, pure functions of the facts and the thresholds.

Precedence (clinical specification 7.1 and 7.3): emergency (R-01, R-02, R-TRAUMA-MAJOR) -> urgent
(R-03, R-04) -> imaging appropriate with advice (R-05, R-07, R-06), or outside these criteria
(R-AS) -> repeat (R-11) -> failed care (R-10, R-10b) -> defer (R-08, R-09). The first that fires
decides the one appropriateness card of the order; any red flag (R-01..R-07, R-TRAUMA-MAJOR) and
axial spondyloarthritis (RF-AS) rule out deferral. Safety and modality rules (R-12..R-17) are
orthogonal and apply only when imaging goes ahead. R-18 rates the order (Argonaut PAMA).

`assess` walks RULES in the precedence of their groups (Group, in definition order); nothing
else names a rule. A rule's group says whether it rules out deferral (Group.rules_out_deferral)
and whether it defers (Group.defers).

To add a rule: one Rule entry in RULES (id, title, group, card topic, ACR variant, citations,
test), the value sets and facts its test reads (fact_table.py), and a patient fixture with its
scenario. tests/test_rule_table.py checks that every entry fires on some fixture.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..configuration import Thresholds
from .facts import Evidence, Facts
from .findings import MR_SAFETY_SOURCE, Assessment, Finding, Group, Proposal, RatingBasis, Rule, Topic, rating_for
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
)
from .plan import apply_plan, wants_gadolinium

# --- red flags ---------------------------------------------------------------------------------


def _cauda_equina(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    evidence = f.cauda_equina + f.ces_signs
    if not evidence:
        return None
    return Finding(
        evidence,
        "critical",
        "Possible cauda equina syndrome: emergency MRI today, do not defer",
        "Suspected cauda equina syndrome needs MRI the same day (ACR variant 4: MRI without contrast is "
        "usually appropriate; with and without contrast if infection or tumour is suspected). Contact the "
        "on-call spine surgeon now. If MRI is impossible, CT myelography or CT without contrast, without "
        "delaying transfer.",
        [Proposal("set-priority", "stat", "Keep the MRI and make it STAT", recommended=True)],
    )


def _neuro_deficit(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
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
        f.severe_deficit + [e for e in f.weakness if e not in f.severe_deficit],
        "critical" if critical else "warning",
        summary,
        "Severe or progressive neurological deficit is an indication for MRI without delay (ACP 2007 "
        "recommendation 3; ACR 2016); no 2021 ACR variant covers an isolated deficit. MRI without contrast is "
        "usually sufficient. Ask now about bladder function (retention, incontinence) and saddle numbness: "
        "either makes it suspected cauda equina syndrome. A rapidly progressive or multi-level deficit needs "
        "same-day imaging.",
        [
            Proposal(
                "set-priority",
                "stat" if critical else "urgent",
                "Keep the MRI and make it " + ("STAT" if critical else "urgent"),
                recommended=True,
            )
        ],
    )


def _major_trauma(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not f.major_trauma:
        return None
    if f.pregnancy:  # pregnancy never prompts CT; nor does it withhold CT after major trauma
        return Finding(
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
                "ct_thoracolumbar_without_contrast",
                "Replace with CT thoracic and lumbar spine without contrast, STAT",
                recommended=True,
                priority="stat",
            ),
            Proposal("set-priority", "stat", "Keep the MRI and make it STAT"),
        ],
    )


def _malignancy(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    strong = f.spinal_metastasis + [e for e in f.cancer if e not in f.spinal_metastasis]
    if strong:
        critical = bool(f.severe_deficit or f.weakness or f.ces_signs)
        what = "Spinal metastasis recorded" if f.spinal_metastasis else "Cancer recorded"
        return Finding(
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
    weaker = weaker_cancer_factors(f, t)
    if len(weaker) < 2:
        return None  # one weaker factor alone follows the ordinary rules; its advice rides on their card
    critical = bool(f.severe_deficit or f.weakness or f.ces_signs)
    return Finding(
        weaker,
        "critical" if critical else "warning",
        "Multiple cancer risk factors recorded: urgent MRI" + (" today" if critical else " (within a week)")
        + ", do not defer",
        "Two or more weaker risk factors for cancer (unexplained weight loss, age over 50, no improvement "
        "after a month of care) together are a major risk factor: ACP 2011 (table 2) advises immediate "
        "imaging. ACR variant 7: MRI without, or without and with, contrast is usually appropriate. A "
        "neurological deficit means suspected cord compression: image the same day.",
        _urgent_proposals(f, "stat" if critical else "urgent", prefer_contrast=False),
    )  # fmt: skip


def weaker_cancer_factors(f: Facts, t: Thresholds) -> list[Evidence]:
    """ACP 2007 table 1 / ACP 2011 table 2: unexplained weight loss, age over 50, and no improvement
    after about a month of conservative care (care begun at least `cancer_no_improvement_days` ago)."""
    weaker = list(f.weight_loss)
    if f.age is not None and f.age > t.cancer_risk_age:
        weaker.append(Evidence("Patient", None, f"Age {f.age} (over {t.cancer_risk_age})"))
    if f.care_start is not None and (f.now.date() - f.care_start).days >= t.cancer_no_improvement_days:
        weaker.append(Evidence("Patient", None, f"No improvement after care since {f.care_start.isoformat()}"))
    return weaker


def _infection(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    cofactors = f.iv_drug_use + f.recent_infection + f.immunosuppression + f.raised_markers
    infection = f.spinal_infection + [e for e in f.spinal_abscess if e not in f.spinal_infection]
    if not infection and not f.fever:
        risk = f.iv_drug_use + f.recent_infection + f.raised_markers
        if not risk:
            return None
        return Finding(
            risk,
            "info",
            "Spinal infection risk factor recorded: check for fever; imaging is not deferred",
            "IV drug use, a recent systemic infection or raised inflammatory markers are risk factors for "
            "vertebral infection (ACP 2007 table 1; NASS and ACEP Choosing Wisely). With fever, back pain "
            "and such a factor, MRI without and with contrast is indicated now (ACR variant 7).",
            topic=Topic.INFECTION_RISK_FACTORS,
        )
    critical = bool(f.sepsis or f.severe_deficit or f.weakness or f.ces_signs or f.spinal_abscess
                    or (f.fever and cofactors))  # fmt: skip
    return Finding(
        infection + f.fever,
        "critical" if critical else "warning",
        "Possible spinal infection: MRI "
        + ("today (possible epidural abscess)" if critical else "urgently")
        + ", with and without contrast",
        "Fever or a known spinal infection with back pain calls for MRI (ACR variant 7: MRI without and with "
        "contrast is usually appropriate; ACP 2011: fever with IV drug use or recent infection means "
        "immediate MRI). Fever with a risk factor, a suspected epidural abscess, sepsis or a neurological "
        "deficit make it an emergency: image today."
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


def _immunosuppression(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not f.immunosuppression:
        return None
    return Finding(
        f.immunosuppression,
        "info",
        "Immunosuppression recorded: imaging is appropriate (ACR variant 7); do not defer",
        "Back pain in an immunosuppressed patient warrants imaging (ACR variant 7: MRI without, or without "
        "and with, contrast is usually appropriate). Look for fever or raised inflammatory markers: "
        "spinal infection can present quietly.",
    )


def _prior_surgery(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
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
    if f.pregnancy or f.low_egfr:  # the gadolinium card decides the contrast: say nothing against it
        against = "pregnancy" if f.pregnancy else "kidney function"
        return Finding(
            f.lumbar_surgery,
            "info",
            f"New symptoms after lumbar surgery: imaging appropriate; contrast: see the {against} card",
            "ACR variant 5: MRI without and with contrast (scar versus recurrent disc) and without contrast are "
            f"usually appropriate; radiographs are usually appropriate for hardware and alignment. With the "
            f"{against} recorded, whether to give contrast is weighed on the {against} card.",
            proposals,
            also=f.indication[:1],
        )
    return Finding(
        f.lumbar_surgery,
        "info",
        "New symptoms after lumbar surgery: imaging appropriate; MRI with and without contrast preferred",
        "ACR variant 5: MRI without and with contrast (scar versus recurrent disc) and without contrast are "
        "usually appropriate; radiographs are usually appropriate for hardware and alignment.",
        proposals,
        also=f.indication[:1],
    )


def _pathological_fracture_question(f: Facts) -> bool:
    """A vertebral fracture with no osteoporosis, steroid use, trauma or elderly age recorded."""
    return bool(f.vertebral_fracture) and not f.fracture_risk


def _fracture_risk(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not f.fracture_risk and not f.vertebral_fracture:
        return None
    if _pathological_fracture_question(f):
        return Finding(
            f.vertebral_fracture,
            "warning",
            "Vertebral fracture without osteoporosis or trauma recorded: consider a pathological fracture; MRI",
            "A vertebral fracture with no osteoporosis, steroid use, trauma or older age recorded raises the "
            "question of a pathological fracture (malignancy, infection). MRI shows marrow replacement and the "
            "soft tissue best (ACR variant 7 if cancer is suspected: MRI without and with contrast, or without, "
            "usually appropriate). Look for a history of cancer, weight loss and raised ESR; keep the MRI.",
        )
    return Finding(
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


def _axial_spondyloarthritis(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not f.axial_spa:
        return None
    return Finding(
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


def _repeat_imaging(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not f.prior_imaging:
        return None
    prior = f.prior_imaging[0]
    if prior.when is None:
        return None  # prior imaging is read dated only
    if f.surgery_date is not None and prior.when is not None and f.surgery_date > prior.when:
        return None  # interval lumbar surgery
    if f.episode_start is not None and prior.when is not None and f.episode_start > prior.when:
        return None  # a new complaint since the study: a change in clinical status
    return Finding(
        [prior],
        "warning",
        f"Repeat lumbar imaging usually not indicated: last study {prior.when.isoformat()}, no change recorded",
        "Repeat imaging without a change in clinical status is not recommended (ACP 2011); MRI at one year "
        "does not distinguish good from poor outcomes in sciatica (el Barzouhi 2013). Review the previous "
        f"report. No red flag is recorded; no new symptom, finding or lumbar surgery is recorded since "
        f"{prior.when.isoformat()}.",
        [Proposal("remove-order", None, "Remove the repeat MRI order", recommended=True)],
    )


def _care_failed(f: Facts, t: Thresholds) -> bool:
    return f.care_start is not None and (f.now.date() - f.care_start).days >= t.conservative_care_days


def _failed_care_candidate(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not _care_failed(f, t) or not f.candidacy:
        return None
    return Finding(f.conservative_care[:2] + f.candidacy, "info", "", "")  # appropriate: no card


def _failed_care_without_candidacy(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not _care_failed(f, t) or f.candidacy:
        return None
    return Finding(
        f.conservative_care[:2],
        "info",
        "Imaging after failed conservative care helps only if surgery or injection is being considered",
        "Six weeks or more of conservative care are recorded (ACR variant 3). MRI is recommended only for "
        "patients who are candidates for surgery or epidural injection, where the result would change "
        "management (ACP 2007 recommendation 4; NICE NG59 1.1.6). No referral to spine surgery or "
        "planned injection is recorded.",
        also=_weaker_factors(f, t),
    )


def _acute(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if f.episode_days is None or f.episode_days >= t.acute_episode_days:
        return None
    return Finding(
        f.indication,
        "warning",
        "Lumbar MRI usually not appropriate yet: back pain under 6 weeks, no red flags recorded",
        f"Back pain for {f.episode_days} days, no red flag recorded: imaging is usually not appropriate (ACR "
        "variant 1) and does not improve outcomes (ACP 2007, 2011; Choosing Wisely; NICE NG59 1.1.4). "
        "Most episodes improve with conservative care: advise activity, and consider physical therapy; "
        "reassess at 6 weeks.",
        _defer_to_conservative_care(),
        also=_weaker_factors(f, t),
    )


def _defer_to_conservative_care() -> list[Proposal]:
    """R-08 and R-09 offer the same choices: withdraw the order, with a physical therapy referral first."""
    return [
        Proposal("remove-order", "pt_referral", "Remove the MRI order and refer to physical therapy", recommended=True),
        Proposal("remove-order", None, "Remove the MRI order"),
    ]


def _weaker_factors(f: Facts, t: Thresholds) -> list[Evidence]:
    """Named on the card shown: ACP 2011 defers imaging for a weaker cancer risk factor alone,
    suggesting radiographs and ESR after about a month without improvement."""
    return [
        Evidence(e.resource_type, e.id,
                 e.label + " (weaker cancer risk factor: radiographs and ESR if no improvement after about a month)",
                 e.when, source=e.source)
        for e in weaker_cancer_factors(f, t)
    ]  # fmt: skip


def _no_conservative_care(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
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
        f.indication,
        "warning",
        "Lumbar MRI usually not appropriate: no 6-week trial of conservative care recorded, no red flags recorded",
        f"{duration}. {started} With no red flag recorded and no 6 weeks of management, MRI is usually not "
        "appropriate (ACR variant 2). Start and document 6 weeks of conservative care (physical "
        "therapy, activity, analgesia); image if symptoms persist and surgery or injection is considered.",
        _defer_to_conservative_care(),
        also=_weaker_factors(f, t),
    )


# --- safety and modality (only when imaging goes ahead) -----------------------------------------


def _contrast_choice(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if f.study is None:
        return None
    if f.study.contrast == "with":
        return Finding(
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


def _contrast_choice_v3(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    """Part of R-12: in variant 3 the plain study is the usually-appropriate one."""
    if f.study is None or f.study.contrast != "without-and-with":
        return None
    return Finding(
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


def _implant(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not f.implants:
        return None
    if f.pregnancy:
        return Finding(
            f.implants,
            "warning",
            "Implant recorded in pregnancy: discuss with radiology before choosing MRI or CT",
            "An implant may make MRI unsafe: verify its MR status (many are MR Conditional). CT is not "
            "withheld when needed, but CT of the lumbar spine exposes the fetus (ACOG 723): decide with "
            "radiology.",
            topic=Topic.MRI_SAFETY,
            also=f.pregnancy,
        )
    neuro_emergency = (a.primary is not None and a.primary.rule.group is Group.EMERGENCY
                       and a.primary.rule.topic is Topic.URGENT_IMAGING and a.primary.indicator == "critical")  # fmt: skip
    if neuro_emergency:  # suspected cauda equina syndrome or a severe deficit: CT myelography first
        return Finding(
            f.implants,
            "critical",
            "Implant recorded with an emergency: ask the device clinic about MRI now; CT myelography if not",
            "Ask cardiology or the device clinic now about MR-conditional status and reprogramming (HRS 2017): "
            "it often makes the emergency MRI possible. If MRI cannot be done, CT myelography shows the root "
            "compression that plain CT can miss and is the fallback of cauda equina pathways (ACR variant 4: "
            "CT myelography and CT without contrast may be appropriate). Do not delay transfer.",
            [
                Proposal(
                    "add-orders",
                    "ct_myelography",
                    "Replace with CT myelography, STAT",
                    recommended=True,
                    priority="stat",
                ),
                Proposal(
                    "replace-study",
                    "ct_lumbar_without_contrast",
                    "Replace with CT lumbar spine without contrast, STAT",
                    priority="stat",
                ),
            ],  # fmt: skip
        )
    return Finding(
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


def _conditional_device(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not f.conditional_devices or f.implants:
        return None
    return Finding(
        f.conditional_devices,
        "info",
        "MR Conditional device recorded: confirm its scan conditions before MRI",
        "The device is labelled MR Conditional: MRI is possible under the manufacturer's conditions "
        "(field strength, mode, programming, body region). Confirm that its conditions cover a lumbar scan "
        "(some stimulators are conditional for head or limb scans only) and tell radiology before MRI.",
        topic=Topic.MRI_SAFETY,
    )


def _claustrophobia(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
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
        f.claustrophobia,
        "info",
        "Claustrophobia recorded: consider anxiolysis or a wide-bore or open MRI",
        "Claustrophobia is not a contraindication: oral anxiolysis, a wide-bore or open scanner, or "
        "sedation usually make MRI possible. Use CT only if MRI remains intolerable.",
        proposals,
    )


CONTRAST_HELPS = ("R-04", "R-07")  # infection; scar versus recurrent disc after surgery (ACR variants 5, 7)


def _contrast_wanted(a: Assessment) -> bool:
    """Another finding suggests a contrast study, or contrast is ordered where it helps answer the question."""
    findings = ([a.primary] if a.primary else []) + a.other_red_flags
    study = a.facts.study
    ordered_where_it_helps = study is not None and study.uses_contrast and any(
        f.rule.id in CONTRAST_HELPS for f in findings)  # fmt: skip
    return ordered_where_it_helps or wants_gadolinium(findings)


def _gadolinium_kidney(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    wanted = _contrast_wanted(a)
    if f.study is None or not f.low_egfr or not (f.study.uses_contrast or wanted):
        return None
    why = "Contrast helps answer this question (see the card above). " if wanted else ""
    plain = [] if f.study.contrast == "without" else [
        Proposal("replace-study", "mri_lumbar_without_contrast", "Change to MRI lumbar spine without contrast",
                 recommended=not wanted)]  # fmt: skip
    return Finding(
        f.low_egfr,
        "warning",
        "Reduced kidney function: if contrast is essential use a group II gadolinium agent",
        f"{why}eGFR below {t.egfr_low:g}, dialysis or acute kidney injury is recorded. The risk of NSF with "
        "group II agents is very low and contrast should not be withheld when it is needed (ACR-NKF 2021): if "
        "contrast is essential, give a group II agent; otherwise MRI without contrast. Decide with radiology. "
        "Do not switch to CT for this reason.",
        plain,
        topic=Topic.GADOLINIUM_KIDNEY,
    )


def _gadolinium_pregnancy(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    wanted = _contrast_wanted(a)
    if f.study is None or not f.pregnancy or not (f.study.uses_contrast or wanted):
        return None
    why = ("Contrast would usually help here (see the card above), but it is not suggested in pregnancy: "
           "discuss contrast with radiology if it is essential. " if wanted else "")  # fmt: skip
    plain = [] if f.study.contrast == "without" else [
        Proposal("replace-study", "mri_lumbar_without_contrast", "Change to MRI lumbar spine without contrast",
                 recommended=True)]  # fmt: skip
    return Finding(
        f.pregnancy,
        "warning",
        "Pregnancy recorded: avoid routine gadolinium; MRI without contrast is acceptable",
        f"{why}MRI without contrast can be done at any stage of pregnancy when indicated (ACR; ACOG 723). "
        "Gadolinium should be given only when it is essential, after discussion with radiology. Pregnancy is "
        "never a reason to switch to CT.",
        plain,
        topic=Topic.GADOLINIUM_PREGNANCY,
    )


def _ct_for_bony_detail(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    if not f.vertebral_fracture and not f.recent_trauma:
        return None
    if f.pregnancy:
        return None  # pregnancy never prompts CT
    if _pathological_fracture_question(f):
        return None  # MRI, not CT, answers a pathological fracture
    return Finding(
        f.vertebral_fracture + f.recent_trauma,
        "info",
        "For bony detail, CT lumbar spine without contrast is usually appropriate and may be the better study",
        "When fracture is the concern, CT shows the bone best (ACR 2016; ACR variant 6: CT without contrast "
        "is usually appropriate). Keep the MRI for a neurological deficit or to judge the fracture's age.",
        [Proposal("replace-study", "ct_lumbar_without_contrast", "Replace with CT lumbar spine without contrast")],
    )


def _mr_safety(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    return _implant(f, t, a) or _conditional_device(f, t, a)


def _contrast(f: Facts, t: Thresholds, a: Assessment) -> Finding | None:
    """R-12: contrast-only is usually not appropriate; after failed care alone, the plain study is."""
    finding = _contrast_choice(f, t, a)
    failed_care_alone = a.primary is not None and a.primary.rule.group is Group.FAILED_CARE and not a.other_red_flags
    if finding is None and failed_care_alone:
        finding = _contrast_choice_v3(f, t, a)
    return finding


RULES: tuple[Rule, ...] = (
    # emergency
    Rule("R-01", "Suspected cauda equina syndrome", Group.EMERGENCY, Topic.URGENT_IMAGING, V4,
         (ACR_LBP, ACP_2011, ACEP_CW), _cauda_equina),
    # no 2021 ACR variant covers an isolated progressive deficit: appropriate on ACP 2007 recommendation 3
    Rule("R-02", "Severe or progressive neurological deficit", Group.EMERGENCY, Topic.URGENT_IMAGING, None,
         (ACP_2007, ACP_2011, ACR_LBP_2016), _neuro_deficit, rating=RatingBasis.GUIDELINE_APPROPRIATE),
    Rule("R-TRAUMA-MAJOR", "High-energy trauma", Group.EMERGENCY, Topic.CT_ALTERNATIVE, None,
         (ACR_SPINE_TRAUMA, ACR_LBP_2016), _major_trauma, rating=RatingBasis.OUTSIDE_CRITERIA,
         source="Acute spinal trauma (ACR Appropriateness Criteria)"),
    # urgent
    Rule("R-03", "Suspected malignancy", Group.URGENT, Topic.URGENT_IMAGING, V7, (ACR_LBP, ACP_2007, ACP_2011),
         _malignancy),
    Rule("R-04", "Suspected spinal infection", Group.URGENT, Topic.URGENT_IMAGING, V7, (ACR_LBP, ACP_2011, ACEP_CW),
         _infection),
    # imaging appropriate, with advice; or outside these criteria
    Rule("R-05", "Immunosuppression", Group.ADVICE, Topic.IMAGING_APPROPRIATE, V7, (ACR_LBP,), _immunosuppression),
    Rule("R-07", "Prior lumbar surgery with new symptoms", Group.ADVICE, Topic.PRIOR_LUMBAR_SURGERY, V5, (ACR_LBP,),
         _prior_surgery),
    Rule("R-06", "Fracture risk", Group.ADVICE, Topic.FRACTURE_RISK, V6, (ACR_LBP, ACR_LBP_2016, ACP_2011),
         _fracture_risk),
    Rule("R-AS", "Axial spondyloarthritis (inflammatory back pain)", Group.ADVICE, Topic.INFLAMMATORY_BACK_PAIN, None,
         (ACR_AXIAL_SPA, ACP_2007, NICE_NG59), _axial_spondyloarthritis, rating=RatingBasis.OUTSIDE_CRITERIA,
         source="Inflammatory back pain (ACR, ACP 2007, NICE NG59)"),
    # no red flag recorded
    # ACR has no repeat-imaging variant: the basis is ACP 2011
    Rule("R-11", "Repeat imaging without clinical change", Group.REPEAT, Topic.DEFER_IMAGING, None,
         (ACP_2011, EL_BARZOUHI), _repeat_imaging, rating=RatingBasis.GUIDELINE_NOT_APPROPRIATE),
    Rule("R-10", "Failed conservative care, intervention candidate", Group.FAILED_CARE, Topic.IMAGING_APPROPRIATE, V3,
         (ACR_LBP, ACP_2007, NASS_2014), _failed_care_candidate),
    # ACR variant 3 requires candidacy, variant 2 no prior management: no variant applies
    Rule("R-10b", "Failed conservative care, candidacy not recorded", Group.FAILED_CARE,
         Topic.INTERVENTION_CANDIDACY, None, (ACP_2007, NICE_NG59, ACR_LBP), _failed_care_without_candidacy,
         rating=RatingBasis.OUTSIDE_CRITERIA),
    Rule("R-08", "Acute low back pain, no red flags recorded", Group.DEFER, Topic.DEFER_IMAGING, V1,
         (ACR_LBP, ACP_2011, CHOOSING_WISELY, NICE_NG59), _acute),
    Rule("R-09", "No trial of conservative care", Group.DEFER, Topic.DEFER_IMAGING, V2,
         (ACR_LBP, ACP_2011, CHOOSING_WISELY, NICE_NG59), _no_conservative_care),
    # safety and modality, in the order their cards are shown
    Rule("R-13", "MRI safety: implant", Group.SAFETY, Topic.CT_ALTERNATIVE, None, (ACR_MR_SAFETY, HRS_2017, ACR_LBP),
         _mr_safety, source="MRI safety: implants (ACR Manual on MR Safety, HRS 2017)"),
    Rule("R-17", "CT for bony detail", Group.SAFETY, Topic.CT_ALTERNATIVE, V6, (ACR_LBP, ACR_LBP_2016),
         _ct_for_bony_detail),
    Rule("R-16", "Gadolinium in pregnancy", Group.SAFETY, Topic.GADOLINIUM_PREGNANCY, None, (ACOG_723, ACR_MR_SAFETY),
         _gadolinium_pregnancy, source="Gadolinium in pregnancy (ACR, ACOG 723)"),
    Rule("R-15", "Gadolinium with reduced kidney function", Group.SAFETY, Topic.GADOLINIUM_KIDNEY, None,
         (ACR_NKF_GBCA,), _gadolinium_kidney, source="Gadolinium and kidney function (ACR-NKF 2021)"),
    Rule("R-14", "Claustrophobia", Group.SAFETY, Topic.CLAUSTROPHOBIA, None, (ACR_MR_SAFETY,), _claustrophobia, source=MR_SAFETY_SOURCE),
    # already suggest the plain study
    Rule("R-12", "Contrast choice", Group.SAFETY, Topic.CONTRAST_CHOICE, None, (ACR_LBP,), _contrast,
         yields_to=("R-15", "R-16")),
    # the rating is recorded for every evaluated order
    Rule("R-18", "Appropriateness rating (Argonaut PAMA)", Group.RATING, Topic.RATING, None,
         (ARGONAUT_PAMA, ACR_LBP), lambda f, t, a: None),
)  # fmt: skip
RULES_BY_ID = {rule.id: rule for rule in RULES}
RATING_RULE = "R-18"
CONTRAST_RULE = "R-12"  # also recorded when the ordered study itself is contrast-only


def _run(rule: Rule, facts: Facts, thresholds: Thresholds, assessment: Assessment) -> Finding | None:
    finding = rule.test(facts, thresholds, assessment)
    if finding is not None:
        finding.rule = rule
    return finding


def assess(facts: Facts, thresholds: Thresholds, rules: Sequence[Rule] = RULES) -> Assessment:
    """Walk the rule table in precedence order. Red-flag groups are read whole (the first decides,
    the others are named); in the other deciding groups the first rule that fires decides."""
    assessment = Assessment(facts, "no-criteria-apply", fired=[RATING_RULE])
    if facts.age is not None and facts.age < thresholds.adult_age:
        return assessment  # adults only: paediatric back pain is another ACR topic
    if not facts.indication:
        return assessment  # not ordered for back pain: these criteria do not apply

    red_flags: list[Finding] = []
    primary: Finding | None = None
    for group in (g for g in Group if g.decides):
        members = [rule for rule in rules if rule.group is group]
        if group.rules_out_deferral:
            red_flags += [f for rule in members if (f := _run(rule, facts, thresholds, assessment))]
            continue
        if red_flags:
            break
        primary = next((f for rule in members if (f := _run(rule, facts, thresholds, assessment))), None)
        if primary is not None:
            break
    others: list[Finding] = []
    if red_flags:
        primary, others = red_flags[0], red_flags[1:]
    if primary is None:
        return assessment
    assessment = Assessment(facts, primary=primary, other_red_flags=others, variant=primary.rule.variant)
    assessment.fired = [primary.rule.id] + [f.rule.id for f in others]

    study = facts.study
    basis = primary.rule.rating
    if study is not None and study.contrast == "with":
        assessment.category, assessment.rating = UNA, "not-appropriate"  # contrast-only: UNA in every variant
        assessment.fired.append(CONTRAST_RULE)
    elif basis is RatingBasis.OUTSIDE_CRITERIA:
        assessment.category, assessment.rating = None, "no-criteria-apply"
    elif basis is RatingBasis.GUIDELINE_APPROPRIATE:
        assessment.category, assessment.rating = None, "appropriate"
    elif basis is RatingBasis.GUIDELINE_NOT_APPROPRIATE:
        assessment.category, assessment.rating = None, "not-appropriate"
    else:
        variant = assessment.variant
        assessment.category = (
            UNA
            if primary.rule.group.defers and variant is None
            else (variant.mri_category(study.contrast if study else "without") if variant else UA)
        )
        assessment.rating = rating_for(assessment.category)

    if not assessment.deferred:
        for rule in (r for r in rules if r.group is Group.SAFETY):
            if any(f.rule.id in rule.yields_to for f in assessment.advice):
                continue
            finding = _run(rule, facts, thresholds, assessment)
            if finding is not None:
                assessment.advice.append(finding)
                if rule.id not in assessment.fired:
                    assessment.fired.append(rule.id)
    assessment.fired.append(RATING_RULE)
    if not assessment.deferred:
        apply_plan(facts, assessment)  # one complete, safe order behind every suggestion
    _drop_repeated_proposals(assessment)
    return assessment


def _drop_repeated_proposals(assessment: Assessment) -> None:
    """A change is offered once: on the safety card (say, CT instead) rather than the advice card, but on
    the emergency card itself when the emergency's card is critical (its action is the one to take)."""
    primary = assessment.primary
    if primary is None:
        return
    if primary.rule.group is Group.EMERGENCY and primary.indicator == "critical":
        kept = {(p.kind, p.value) for p in primary.proposals}
        for finding in assessment.advice:
            finding.proposals = [p for p in finding.proposals if (p.kind, p.value) not in kept]
        return
    offered = {(p.kind, p.value) for finding in assessment.advice for p in finding.proposals}
    primary.proposals = [p for p in primary.proposals if (p.kind, p.value) not in offered]
