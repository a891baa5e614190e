"""The fact table: every fact the rules read, one declaration each, in the order they are read.

To add a fact: one `Fact` entry below (its sources: element, value sets, window, status policy;
a `keep` test for a value or a body site; a `derive` step only to combine facts), and its value
set file in value_sets/. The reader, the prefetch reading list and `cds-service evaluate` pick it
up from here. A fact that another fact's `derive` reads must come before it.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from .facts import Element, Evidence, Fact, FactContext, Match, Source, Window, conditions, named_reasons, observations
from .facts import orders_and_procedures as requests_or_procedures
from .fhir_values import codings, concept_label, in_value_set, is_positive, is_raised, quantity_celsius, quantity_text
from .statuses import INACTIVE_CLINICAL, StatusPolicy, clinical_status

INDICATION = ("low-back-pain", "sciatica", "radiculopathy", "lumbar-disc", "lumbar-stenosis")
PRIOR_IMAGING = ("order-mri-lumbar-spine", "order-ct-lumbar-spine")
PRIOR_IMAGING_WINDOW: dict[str, Any] = {
    "window": Window.LOOKBACK,
    "lookback": "repeat_imaging_days",
    "status": StatusPolicy.PERFORMED,
    "dated_only": True,
}
PREGNANT = "77386006"  # SNOMED CT: Patient currently pregnant
SEVERE = "24484000"  # SNOMED CT severity: Severe
_SADDLE_WORDS = re.compile(r"saddle|perine|perian", re.IGNORECASE)
_PROGRESSIVE = re.compile(r"progress|worsening", re.IGNORECASE)
NEW_INJURY = {"window": Window.NEW, "lead": "red_flag_recent_days"}  # an injury just before the pain began counts
_ABSENT = {"373067005", "2667000", "260385009", "N", "NEG"}  # SNOMED No, Absent, Negative; v2 normal/negative
LUMBAR_MODALITIES = {"MR", "CT"}  # DICOM modality codes of a lumbar MRI or CT study


def anywhere(*value_sets: str, **options: Any) -> tuple[Source, ...]:
    """A red flag wherever the chart codes it (issue: never defer beside a recorded red flag): a Condition
    of any category (a provisional or differential one is a suspicion and counts), the draft order's
    reasonCode, a Condition its reasonReference names (whatever its status or date), and an Observation
    coded with it (unless its answer is no) or answered with it."""
    return (
        conditions(*value_sets, **options),
        Source(Element.ORDER_REASON, value_sets, status=StatusPolicy.EVER),
        Source(Element.ORDER_REASON_REFERENCE, value_sets, status=StatusPolicy.EVER),
        Source(
            Element.OBSERVATION_CODE,
            value_sets,
            status=StatusPolicy.EVER,
            keep=_finding_present,
            **_observation_window(options),
        ),  # fmt: skip
        Source(Element.OBSERVATION_VALUE, value_sets, status=StatusPolicy.EVER, **_observation_window(options)),
    )


def _observation_window(options: dict[str, Any]) -> dict[str, Any]:
    return {key: options[key] for key in ("window", "lookback", "lead") if key in options}


# --- keep: a further test on a matched resource ---------------------------------------------------


def _finding_present(match: Match) -> Evidence | None:
    """An Observation coded as the finding counts unless it records the finding as absent."""
    observation = match.resource
    if observation.valueBoolean is False:
        return None
    if any(c.code in _ABSENT for c in codings(observation.valueCodeableConcept)):
        return None
    return match.evidence()


def _lumbar_study(match: Match) -> Evidence | None:
    """An MR or CT ImagingStudy of the lumbar spine: a lumbar MRI or CT procedure code, or an MR or CT
    series (or study modality) with a lumbar body site."""
    study = match.resource
    vs = match.context.value_sets
    imaging = (vs["order-mri-lumbar-spine"], vs["order-ct-lumbar-spine"])
    for concept in study.procedureCode or []:
        value_set = next((v for v in imaging if in_value_set(concept, v)), None)
        if value_set is not None:
            return match.evidence(concept_label(concept, value_set))
    lumbar = vs["lumbar-body-site"]
    modalities = {c.code for c in study.modality or []}
    for series in study.series or []:
        modality = series.modality.code if series.modality else None
        site = series.bodySite
        if (modality in LUMBAR_MODALITIES or modalities & LUMBAR_MODALITIES) and site is not None \
                and lumbar.contains(site.system, site.code):  # fmt: skip
            kind = modality if modality in LUMBAR_MODALITIES else sorted(modalities & LUMBAR_MODALITIES)[0]
            return match.evidence(f"{'MRI' if kind == 'MR' else 'CT'} of the lumbar spine (imaging study)")
    return None


def _active_or_named_by_order(match: Match) -> Evidence | None:
    """A resolved back-pain Condition still counts when the order names it as its reason."""
    if clinical_status(match.resource) in INACTIVE_CLINICAL and match.resource.id not in named_reasons(
        match.context.order_model
    ):
        return None
    return match.evidence()


def _saddle(match: Match) -> Evidence | None:
    perineal = match.context.value_sets["perineal-body-site"]
    condition = match.resource
    saddle = any(
        in_value_set(site, perineal) or _SADDLE_WORDS.search(site.text or "") for site in condition.bodySite or []
    )
    if not saddle and not _SADDLE_WORDS.search(getattr(condition.code, "text", None) or ""):
        return None
    return match.evidence("Saddle sensory loss: " + concept_label(condition.code, match.value_set))


def _sciatica_side(match: Match) -> Evidence | None:
    assert match.value_set is not None
    coding = match.value_set.first_match(codings(match.concept))
    side = match.value_set.extra.get("sides", {}).get(coding.code.upper().replace(" ", "")) if coding else None
    return match.evidence(value=side) if side else None


def _febrile(match: Match) -> Evidence | None:
    quantity = match.resource.valueQuantity
    degrees = quantity_celsius(quantity)
    if degrees is None or degrees < match.context.thresholds.fever_celsius:
        return None
    shown = quantity_text(quantity)
    if "cel" not in shown.lower() and "°c" not in shown.lower():
        shown += f" ({degrees:.1f} °C)"
    return match.evidence("Body temperature", shown)


def _raised_marker(match: Match) -> Evidence | None:
    observation = match.resource
    if not is_raised(observation):
        return None
    shown = quantity_text(observation.valueQuantity) if observation.valueQuantity else "high"
    return match.evidence(value=shown)


def _pregnancy_status(match: Match) -> Evidence | None:
    if not any(c.code == PREGNANT for c in codings(match.resource.valueCodeableConcept)):
        return None
    return match.evidence("Pregnancy status: pregnant")


def _positive_hcg(match: Match) -> Evidence | None:
    return match.evidence("Urine pregnancy test: positive") if is_positive(match.resource) else None


def _egfr_value(match: Match) -> Evidence | None:
    quantity = match.resource.valueQuantity
    if quantity is None or quantity.value is None:
        return None
    return match.evidence("eGFR", quantity_text(quantity), float(quantity.value))


def _device(match: Match, wanted: str) -> Evidence | None:
    """A current device by MR safety: `wanted` is "conditional" or "unsafe" (unsafe or unknown)."""
    device = match.resource
    safety = match.context.value_sets["device-mr-safety"]
    codes = {c.code for concept in (device.safety or []) for c in codings(concept)}
    name = next((n.name for n in (device.deviceName or []) if n.name), None)
    name = name or (concept_label(device.type) if device.type else "Implanted device")
    if codes & set(safety.extra.get("safe", ())):
        return None
    conditional = bool(codes & set(safety.extra.get("conditional", ())))
    if wanted == "conditional":
        return match.evidence(name, "MR Conditional") if conditional else None
    return None if conditional else match.evidence(name, "MR status not recorded as safe or conditional")


# --- derive: facts that combine others ------------------------------------------------------------


def _with_bilateral_sciatica(context: FactContext, found: list[Evidence]) -> list[Evidence]:
    first_by_side: dict[str, Evidence] = {}
    for evidence in context.facts.sciatica_side:
        first_by_side.setdefault(evidence.value or "", evidence)
    if "right" not in first_by_side or "left" not in first_by_side:
        return found
    dates = [e.when for e in first_by_side.values() if e.when]
    left = first_by_side["left"]
    return found + [
        Evidence("Condition", left.id, "Bilateral sciatica (right and left recorded)", max(dates, default=None))
    ]


def _with_severe_weakness(context: FactContext, found: list[Evidence]) -> list[Evidence]:
    """A weakness coded as severe, or documented as progressive, is a severe deficit."""
    by_id = {e.id: e for e in context.facts.weakness}
    for condition in context.record.conditions:
        evidence = by_id.get(condition.id)
        if evidence is None:
            continue
        words = " ".join(
            filter(None, [getattr(condition.code, "text", None), *(c.display for c in codings(condition.code))])
        )
        if any(c.code == SEVERE for c in codings(condition.severity)) or _PROGRESSIVE.search(words):
            found.append(evidence)
    return found


def _with_trauma_and_age(context: FactContext, found: list[Evidence]) -> list[Evidence]:
    found = found + context.facts.recent_trauma
    age, elderly = context.facts.age, context.thresholds.elderly_age
    if age is not None and age >= elderly:
        patient = context.record.patient
        found.append(
            Evidence("Patient", patient.id if patient else None, f"Age {age} (ACR 'elderly': {elderly} or older)")
        )
    return found


def _latest_egfr_if_low(context: FactContext, found: list[Evidence]) -> list[Evidence]:
    results = [e for e in found if e.resource_type == "Observation"]
    latest = max(results, key=lambda e: e.when or date.min, default=None)
    kept = [e for e in found if e.resource_type != "Observation"]
    if latest is not None and latest.number is not None and latest.number < context.thresholds.egfr_low:
        kept.append(latest)
    return kept


def _newest_first(context: FactContext, found: list[Evidence]) -> list[Evidence]:
    return sorted(found, key=lambda e: e.when or date.min, reverse=True)


FACTS: tuple[Fact, ...] = (
    # indication and episode (clinical specification 6.1): the episode starts at the earliest dated one
    Fact(
        "indication",
        "low back pain, sciatica, radiculopathy, disc or stenosis: the order's reason or an active Condition",
        (
            Source(Element.ORDER_REASON, INDICATION, status=StatusPolicy.EVER),
            conditions(*INDICATION, status=StatusPolicy.EVER, keep=_active_or_named_by_order),
        ),
    ),
    # red flags (clinical specification 4)
    Fact("cauda_equina", "coded cauda equina syndrome", anywhere("cauda-equina")),
    Fact("sciatica_side", "sciatica coded with its side", (conditions("bilateral-sciatica", keep=_sciatica_side),)),
    Fact(
        "ces_signs",
        "new bladder or bowel dysfunction, saddle sensory loss, bilateral sciatica",
        (
            *anywhere("bladder-bowel-dysfunction", window=Window.NEW),
            conditions("saddle-sensory-loss", window=Window.NEW, keep=_saddle),
        ),
        derive=_with_bilateral_sciatica,
    ),
    Fact("weakness", "new motor weakness or foot drop", anywhere("motor-weakness", window=Window.NEW)),
    Fact(
        "severe_deficit",
        "new severe or progressive neurological deficit",
        anywhere("severe-neuro-deficit", window=Window.NEW),
        derive=_with_severe_weakness,
    ),
    Fact("cancer", "cancer, active or history", anywhere("malignancy", status=StatusPolicy.CURRENT_OR_HISTORY)),
    Fact("spinal_metastasis", "spinal metastasis", anywhere("spinal-metastasis")),
    Fact(
        "weight_loss",
        "unexplained weight loss in the last year",
        anywhere("weight-loss", window=Window.LOOKBACK, lookback=365),
    ),
    Fact("spinal_infection", "known spinal infection", anywhere("spinal-infection")),
    Fact("spinal_abscess", "suspected epidural or intraspinal abscess", anywhere("spinal-abscess")),
    Fact(
        "fever",
        "fever: coded, or a febrile temperature",
        (
            *anywhere("fever", window=Window.LOOKBACK, lookback="infection_signs_lookback_days"),
            observations(
                "body-temperature",
                window=Window.LOOKBACK,
                lookback="infection_signs_lookback_days",
                keep=_febrile,
                values=("valueQuantity",),
                read_at_or_above="fever_celsius",
            ),
        ),
    ),
    Fact("iv_drug_use", "IV drug use", anywhere("iv-drug-use")),
    Fact(
        "recent_infection",
        "recent systemic infection",
        anywhere("recent-infection", window=Window.LOOKBACK, lookback="recent_infection_days"),
    ),
    Fact("sepsis", "recent sepsis", anywhere("sepsis", window=Window.LOOKBACK, lookback="recent_infection_days")),
    Fact(
        "raised_markers",
        "raised ESR or CRP",
        (
            observations(
                "inflammatory-markers",
                window=Window.LOOKBACK,
                lookback="infection_signs_lookback_days",
                keep=_raised_marker,
                values=("valueQuantity", "interpretation", "referenceRange"),
            ),
        ),
    ),
    Fact("immunosuppression", "immunosuppression", anywhere("immunosuppression")),
    Fact("recent_trauma", "recent low-velocity trauma", anywhere("low-velocity-trauma", **NEW_INJURY)),
    Fact("major_trauma", "recent high-energy trauma", anywhere("high-energy-trauma", **NEW_INJURY)),
    Fact("axial_spa", "axial spondyloarthritis", anywhere("axial-spondyloarthritis")),
    Fact(
        "fracture_risk",
        "osteoporosis, chronic steroids, recent trauma or elderly age",
        anywhere("fracture-risk"),
        derive=_with_trauma_and_age,
    ),
    Fact("vertebral_fracture", "vertebral fracture", anywhere("vertebral-fracture")),
    Fact(
        "lumbar_surgery",
        "lumbar spine surgery (procedure, or post-surgical state)",
        (Source(Element.PROCEDURE_CODE, ("lumbar-surgery",)), *anywhere("lumbar-surgery", status=StatusPolicy.EVER)),
    ),
    # management and history (clinical specification 6.2, 6.3)
    Fact(
        "conservative_care",
        "conservative care in this episode",
        (
            *requests_or_procedures("conservative-care", window=Window.EPISODE),
            # medicines (clinical specification 6.2): prescribed, or reported by the patient (over the counter)
            Source(
                Element.MEDICATION_REQUEST,
                ("conservative-medication",),
                window=Window.EPISODE,
                status=StatusPolicy.EVER,
            ),
            Source(
                Element.MEDICATION_STATEMENT,
                ("conservative-medication",),
                window=Window.EPISODE,
                status=StatusPolicy.EVER,
            ),
        ),  # fmt: skip
    ),
    Fact(
        "candidacy",
        "surgery referral or planned injection in this episode",
        requests_or_procedures("intervention-candidacy", window=Window.EPISODE),
    ),
    Fact(
        "prior_imaging",
        "lumbar MRI or CT done within the repeat-imaging window",
        (
            *requests_or_procedures(*PRIOR_IMAGING, **PRIOR_IMAGING_WINDOW),
            Source(Element.REPORT_CODE, PRIOR_IMAGING, **PRIOR_IMAGING_WINDOW),  # a final radiology report
            Source(Element.IMAGING_STUDY, keep=_lumbar_study, **PRIOR_IMAGING_WINDOW),
        ),
        derive=_newest_first,
    ),
    # MRI safety and contrast (clinical specification 5)
    Fact(
        "implants",
        "implant whose MR status is unsafe or unknown",
        (conditions("mr-implant"), Source(Element.DEVICE, keep=lambda match: _device(match, "unsafe"))),
    ),
    Fact(
        "conditional_devices",
        "MR Conditional device",
        (Source(Element.DEVICE, keep=lambda match: _device(match, "conditional")),),
    ),
    Fact("claustrophobia", "claustrophobia", (conditions("claustrophobia"),)),
    Fact(
        "pregnancy",
        "pregnancy: coded, a pregnancy status or a positive urine hCG",
        (
            conditions("pregnancy"),
            observations(
                "pregnancy-status",
                window=Window.LOOKBACK,
                lookback="pregnancy_lookback_days",
                keep=_pregnancy_status,
                values=("valueCodeableConcept",),
            ),
            observations(
                "hcg-urine",
                window=Window.LOOKBACK,
                lookback="pregnancy_lookback_days",
                keep=_positive_hcg,
                values=("valueCodeableConcept", "valueString", "valueBoolean", "interpretation"),
            ),
        ),
    ),
    Fact(
        "low_egfr",
        "eGFR below the threshold (latest result), CKD 4-5, dialysis or recent acute kidney injury",
        (
            conditions("severe-kidney-disease"),
            conditions("acute-kidney-injury", window=Window.LOOKBACK, lookback="aki_lookback_days"),
            observations(
                "egfr",
                window=Window.LOOKBACK,
                lookback="egfr_lookback_days",
                keep=_egfr_value,
                values=("valueQuantity",),  # read for every order: a suggestion may lead to contrast
            ),
        ),
        derive=_latest_egfr_if_low,
    ),
)
FACTS_BY_NAME = {fact.name: fact for fact in FACTS}
