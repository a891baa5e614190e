"""Facts the rules read, taken from the patient record, the draft order and a clock.

Each fact carries its evidence (which resource, which code, which date) so that a card can say
exactly what it rests on. Pure functions: no I/O, no globals.

Conventions (the clinical specification, sections 6 and 7):
* a Condition counts as active unless its clinicalStatus is inactive, remission or resolved;
  history codes (Z85 cancer history, Z98.1 arthrodesis status...) count as history whatever
  their clinical status;
* a finding is "new" when its onset (else recordedDate) falls in the current episode or within
  the red-flag window; an undated finding counts as new (the safe reading);
* dates come from onset[x] (else recordedDate) for Conditions, effective[x] (else issued) for
  Observations, authoredOn or occurrence[x] for ServiceRequests, performed[x] for Procedures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..configuration import Thresholds
from .orders import OrderedStudy
from .units import celsius
from .value_sets import ValueSet

INACTIVE_CLINICAL = {"inactive", "remission", "resolved"}
CLOSED_REQUEST = {"revoked", "entered-in-error", "draft"}
NOT_DONE_PROCEDURE = {"not-done", "entered-in-error", "preparation"}
NOT_CURRENT_DEVICE = {"inactive", "entered-in-error"}
PREGNANT = "77386006"
SEVERE = "24484000"  # SNOMED CT severity: Severe
_HIGH_INTERPRETATIONS = {"H", "HH", "HU", "A", "AA"}
_POSITIVE = {"10828004", "POS", "positive", "pos", "detected", "260373001"}
_SADDLE_WORDS = re.compile(r"saddle|perine|perian", re.IGNORECASE)
_PROGRESSIVE = re.compile(r"progress|worsening", re.IGNORECASE)


@dataclass(frozen=True)
class Evidence:
    """One resource a fact rests on, in the words a card can show."""

    resource_type: str
    id: str | None
    label: str
    when: date | None = None
    value: str | None = None

    def describe(self) -> str:
        parts = [self.label]
        if self.value:
            parts.append(self.value)
        text = ": ".join(parts)
        return f"{text} ({self.when.isoformat()})" if self.when else text


@dataclass
class Facts:
    now: datetime
    age: int | None = None
    study: OrderedStudy | None = None
    indication: list[Evidence] = field(default_factory=list)
    episode_start: date | None = None
    episode_days: int | None = None
    # red flags
    cauda_equina: list[Evidence] = field(default_factory=list)  # coded CES
    ces_signs: list[Evidence] = field(default_factory=list)  # new bladder/bowel/saddle, bilateral sciatica
    severe_deficit: list[Evidence] = field(default_factory=list)
    weakness: list[Evidence] = field(default_factory=list)
    cancer: list[Evidence] = field(default_factory=list)  # history or active
    spinal_metastasis: list[Evidence] = field(default_factory=list)
    weight_loss: list[Evidence] = field(default_factory=list)
    spinal_infection: list[Evidence] = field(default_factory=list)
    fever: list[Evidence] = field(default_factory=list)
    iv_drug_use: list[Evidence] = field(default_factory=list)
    recent_infection: list[Evidence] = field(default_factory=list)
    sepsis: list[Evidence] = field(default_factory=list)
    raised_markers: list[Evidence] = field(default_factory=list)
    immunosuppression: list[Evidence] = field(default_factory=list)
    fracture_risk: list[Evidence] = field(default_factory=list)
    vertebral_fracture: list[Evidence] = field(default_factory=list)
    recent_trauma: list[Evidence] = field(default_factory=list)  # low-velocity: a fall, a minor injury
    major_trauma: list[Evidence] = field(default_factory=list)  # high-energy: a vehicle collision, a fall from height
    axial_spa: list[Evidence] = field(default_factory=list)  # inflammatory back pain: not deferred, not rated
    lumbar_surgery: list[Evidence] = field(default_factory=list)
    surgery_date: date | None = None
    # management and history
    conservative_care: list[Evidence] = field(default_factory=list)
    care_start: date | None = None
    candidacy: list[Evidence] = field(default_factory=list)
    prior_imaging: list[Evidence] = field(default_factory=list)  # lumbar MRI/CT within the look-back
    # MRI safety and modality
    implants: list[Evidence] = field(default_factory=list)  # MR status unsafe or unknown
    conditional_devices: list[Evidence] = field(default_factory=list)
    claustrophobia: list[Evidence] = field(default_factory=list)
    pregnancy: list[Evidence] = field(default_factory=list)
    low_egfr: list[Evidence] = field(default_factory=list)  # eGFR < threshold, CKD 4-5, dialysis, AKI
    # what was looked at, for the deferral card
    looked_at: dict[str, int] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)


# --- FHIR value helpers (typed R4B models) -------------------------------------------------------


def as_date(value: Any) -> date | None:
    """A FHIR date, dateTime or partial date ("2024", "2024-05") as a date (partials: first day)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value)
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7:
            return date(int(text[:4]), int(text[5:7]), 1)
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def codings(concept: Any) -> list[Any]:
    return list(getattr(concept, "coding", None) or [])


def concept_label(concept: Any, value_set: ValueSet | None = None) -> str:
    """ "Display (SYSTEM CODE)" for the first coding, preferring one in `value_set`."""
    chosen = None
    for coding in codings(concept):
        if value_set is None or value_set.contains(coding.system, coding.code):
            chosen = coding
            break
    chosen = chosen or next(iter(codings(concept)), None)
    text = getattr(concept, "text", None)
    if chosen is None:
        return text or "unnamed"
    display = (
        chosen.display or (value_set.display(chosen.system, chosen.code) if value_set else None) or text or chosen.code
    )
    return f"{display} ({_system_name(chosen.system)} {chosen.code})"


def _system_name(system: str | None) -> str:
    return {
        "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
        "urn:oid:2.16.840.1.113883.6.90": "ICD-10-CM",
        "http://snomed.info/sct": "SNOMED CT",
        "http://loinc.org": "LOINC",
        "http://www.ama-assn.org/go/cpt": "CPT",
    }.get(system or "", "code")


def in_value_set(concept: Any, value_set: ValueSet) -> Any | None:
    return value_set.first_match(codings(concept))


def clinical_status(condition: Any) -> str | None:
    for coding in codings(condition.clinicalStatus):
        if coding.code:
            return coding.code
    return None


def condition_date(condition: Any) -> date | None:
    onset = condition.onsetDateTime or (condition.onsetPeriod.start if condition.onsetPeriod else None)
    return as_date(onset) or as_date(condition.recordedDate)


def observation_date(observation: Any) -> date | None:
    period = observation.effectivePeriod.start if observation.effectivePeriod else None
    return as_date(observation.effectiveDateTime or observation.effectiveInstant or period or observation.issued)


def request_date(request: Any) -> date | None:
    period = request.occurrencePeriod.start if request.occurrencePeriod else None
    return as_date(request.occurrenceDateTime or period or request.authoredOn)


def procedure_date(procedure: Any) -> date | None:
    period = procedure.performedPeriod.start if procedure.performedPeriod else None
    return as_date(procedure.performedDateTime or period)


def age_on(birth: Any, today: date) -> int | None:
    born = as_date(birth)
    if born is None:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def quantity_celsius(quantity: Any) -> float | None:
    return None if quantity is None else celsius(quantity.value, quantity.code, quantity.unit)


def quantity_text(quantity: Any) -> str:
    value = quantity.value
    if isinstance(value, Decimal):
        value = value.normalize()
    return f"{value} {quantity.unit or quantity.code or ''}".strip()


# --- reading the record ----------------------------------------------------------------------------


class FactReader:
    """Builds Facts from a PatientRecord for one order. One instance per evaluation."""

    def __init__(self, value_sets: dict[str, ValueSet], thresholds: Thresholds, now: datetime) -> None:
        self.vs = value_sets
        self.t = thresholds
        self.now = now
        self.today = now.date()

    def read(self, record: Any, order: dict[str, Any], order_model: Any, study: OrderedStudy) -> Facts:
        facts = Facts(now=self.now, study=study)
        facts.age = age_on(record.patient.birthDate, self.today) if record.patient else None
        facts.looked_at = {
            "conditions": len(record.conditions),
            "observations": len(record.observations) + record.checked,
            "orders": len(record.service_requests),
            "procedures": len(record.procedures),
            "devices": len(record.devices),
        }
        facts.unavailable = list(record.unavailable)
        conditions = [c for c in record.conditions]
        self._indication(facts, conditions, order_model, record)
        self._red_flags(facts, conditions, record)
        self._management(facts, record, order)
        self._safety(facts, conditions, record)
        return facts

    # indication and episode (clinical specification 6.1, 7.1)
    def _indication(self, facts: Facts, conditions: list[Any], order_model: Any, record: Any) -> None:
        family = [self.vs[v] for v in ("low-back-pain", "sciatica", "radiculopathy", "lumbar-disc", "lumbar-stenosis")]
        for reason in (order_model.reasonCode or []) if order_model is not None else []:
            for value_set in family:
                if in_value_set(reason, value_set):
                    facts.indication.append(
                        Evidence("ServiceRequest", order_model.id, "Order reason: " + concept_label(reason, value_set))
                    )
                    break
        referenced = (
            {ref.reference.split("/")[-1] for ref in (order_model.reasonReference or [])} if order_model else set()
        )
        starts = []
        for condition in conditions:
            value_set = next((v for v in family if in_value_set(condition.code, v)), None)
            if value_set is None:
                continue
            active = clinical_status(condition) not in INACTIVE_CLINICAL
            if not active and condition.id not in referenced:
                continue
            when = condition_date(condition)
            facts.indication.append(Evidence("Condition", condition.id, concept_label(condition.code, value_set), when))
            if when:
                starts.append(when)
        if starts:
            facts.episode_start = min(starts)
            facts.episode_days = (self.today - facts.episode_start).days

    def _is_new(self, facts: Facts, when: date | None, lead_days: int = 0) -> bool:
        """In the current episode, or within the red-flag window of today. `lead_days` also admits
        what came shortly before the episode began: an injury precedes the pain it causes."""
        if when is None:
            return True
        recent = self.today - timedelta(days=self.t.red_flag_recent_days)
        return when >= recent or (
            facts.episode_start is not None and when >= facts.episode_start - timedelta(days=lead_days)
        )

    def _conditions_in(
        self,
        conditions: Iterable[Any],
        value_set_id: str,
        *,
        history_counts: bool = False,
        new_only: bool = False,
        facts: Facts | None = None,
        within_days: int | None = None,
        lead_days: int = 0,
    ) -> list[Evidence]:
        value_set = self.vs[value_set_id]
        found = []
        for condition in conditions:
            coding = in_value_set(condition.code, value_set)
            if coding is None:
                continue
            is_history = value_set.role(coding.system, coding.code) == "history"
            if clinical_status(condition) in INACTIVE_CLINICAL and not (history_counts and is_history):
                continue
            when = condition_date(condition)
            if new_only and facts is not None and not self._is_new(facts, when, lead_days):
                continue
            if within_days is not None and when is not None and when < self.today - timedelta(days=within_days):
                continue
            found.append(Evidence("Condition", condition.id, concept_label(condition.code, value_set), when))
        return found

    def _red_flags(self, facts: Facts, conditions: list[Any], record: Any) -> None:
        facts.cauda_equina = self._conditions_in(conditions, "cauda-equina")
        facts.ces_signs = self._conditions_in(conditions, "bladder-bowel-dysfunction", new_only=True, facts=facts)
        sensory = self.vs["saddle-sensory-loss"]
        perineal = self.vs["perineal-body-site"]
        for condition in conditions:
            if in_value_set(condition.code, sensory) is None or clinical_status(condition) in INACTIVE_CLINICAL:
                continue
            sites = condition.bodySite or []
            saddle = any(in_value_set(site, perineal) or _SADDLE_WORDS.search(site.text or "") for site in sites)
            saddle = saddle or bool(_SADDLE_WORDS.search(getattr(condition.code, "text", None) or ""))
            if saddle and self._is_new(facts, condition_date(condition)):
                facts.ces_signs.append(
                    Evidence(
                        "Condition",
                        condition.id,
                        "Saddle sensory loss: " + concept_label(condition.code, sensory),
                        condition_date(condition),
                    )
                )
        sides = self.vs["bilateral-sciatica"].extra.get("sides", {})
        sciatica = {}
        for condition in conditions:
            coding = in_value_set(condition.code, self.vs["bilateral-sciatica"])
            if coding is not None and clinical_status(condition) not in INACTIVE_CLINICAL:
                sciatica.setdefault(sides.get(coding.code.upper().replace(" ", "")), condition)
        if "right" in sciatica and "left" in sciatica:
            dates = [condition_date(c) for c in sciatica.values()]
            facts.ces_signs.append(
                Evidence(
                    "Condition",
                    sciatica["left"].id,
                    "Bilateral sciatica (right and left recorded)",
                    max((d for d in dates if d), default=None),
                )
            )
        facts.severe_deficit = self._conditions_in(conditions, "severe-neuro-deficit", new_only=True, facts=facts)
        facts.weakness = self._conditions_in(conditions, "motor-weakness", new_only=True, facts=facts)
        for condition in conditions:  # a weakness coded as severe, or documented as progressive, is a severe deficit
            evidence = next((e for e in facts.weakness if e.id == condition.id), None)
            if evidence is None:
                continue
            words = " ".join(
                filter(None, [getattr(condition.code, "text", None), *(c.display for c in codings(condition.code))])
            )
            if any(c.code == SEVERE for c in codings(condition.severity)) or _PROGRESSIVE.search(words):
                facts.severe_deficit.append(evidence)
        facts.cancer = self._conditions_in(conditions, "malignancy", history_counts=True)
        facts.spinal_metastasis = self._conditions_in(conditions, "spinal-metastasis")
        facts.weight_loss = self._conditions_in(conditions, "weight-loss", within_days=365)
        facts.spinal_infection = self._conditions_in(conditions, "spinal-infection")
        facts.fever = self._conditions_in(conditions, "fever", within_days=self.t.infection_signs_lookback_days)
        facts.iv_drug_use = self._conditions_in(conditions, "iv-drug-use")
        facts.recent_infection = self._conditions_in(
            conditions, "recent-infection", within_days=self.t.recent_infection_days
        )
        facts.sepsis = self._conditions_in(conditions, "sepsis", within_days=self.t.recent_infection_days)
        facts.immunosuppression = self._conditions_in(conditions, "immunosuppression")
        injury_lead = self.t.red_flag_recent_days  # an injury in the days before the pain began caused this episode
        facts.recent_trauma = self._conditions_in(
            conditions, "low-velocity-trauma", new_only=True, facts=facts, lead_days=injury_lead
        )
        facts.major_trauma = self._conditions_in(
            conditions, "high-energy-trauma", new_only=True, facts=facts, lead_days=injury_lead
        )
        facts.axial_spa = self._conditions_in(conditions, "axial-spondyloarthritis")
        facts.fracture_risk = self._conditions_in(conditions, "fracture-risk") + facts.recent_trauma
        if facts.age is not None and facts.age >= self.t.elderly_age:
            facts.fracture_risk.append(
                Evidence(
                    "Patient",
                    record.patient.id if record.patient else None,
                    f"Age {facts.age} (ACR 'elderly': {self.t.elderly_age} or older)",
                )
            )
        facts.vertebral_fracture = self._conditions_in(conditions, "vertebral-fracture")
        self._observations(facts, record.observations)
        self._surgery(facts, conditions, record.procedures)

    def _observations(self, facts: Facts, observations: Sequence[Any]) -> None:
        cutoff = self.today - timedelta(days=self.t.infection_signs_lookback_days)
        temperature, markers = self.vs["body-temperature"], self.vs["inflammatory-markers"]
        for observation in observations:
            when = observation_date(observation)
            if in_value_set(observation.code, temperature):
                degrees = quantity_celsius(observation.valueQuantity)
                if degrees is not None and degrees >= self.t.fever_celsius and (when is None or when >= cutoff):
                    shown = quantity_text(observation.valueQuantity)
                    if "cel" not in shown.lower() and "°c" not in shown.lower():
                        shown += f" ({degrees:.1f} °C)"
                    facts.fever.append(Evidence("Observation", observation.id, "Body temperature", when, shown))
            elif in_value_set(observation.code, markers) and (when is None or when >= cutoff) and _raised(observation):
                facts.raised_markers.append(
                    Evidence(
                        "Observation",
                        observation.id,
                        concept_label(observation.code, markers),
                        when,
                        quantity_text(observation.valueQuantity) if observation.valueQuantity else "high",
                    )
                )

    def _surgery(self, facts: Facts, conditions: list[Any], procedures: Sequence[Any]) -> None:
        surgery = self.vs["lumbar-surgery"]
        dates = []
        for procedure in procedures:
            if procedure.status in NOT_DONE_PROCEDURE or in_value_set(procedure.code, surgery) is None:
                continue
            when = procedure_date(procedure)
            facts.lumbar_surgery.append(
                Evidence("Procedure", procedure.id, concept_label(procedure.code, surgery), when)
            )
            if when:
                dates.append(when)
        for condition in conditions:  # post-surgical states are history, whatever their status
            if in_value_set(condition.code, surgery) is not None:
                facts.lumbar_surgery.append(
                    Evidence(
                        "Condition", condition.id, concept_label(condition.code, surgery), condition_date(condition)
                    )
                )
        facts.surgery_date = max(dates) if dates else None

    # conservative care, candidacy, prior imaging (clinical specification 6.2, 6.3)
    def _management(self, facts: Facts, record: Any, order: dict[str, Any]) -> None:
        care, candidacy = self.vs["conservative-care"], self.vs["intervention-candidacy"]
        imaging = [self.vs["order-mri-lumbar-spine"], self.vs["order-ct-lumbar-spine"]]
        lookback = self.today - timedelta(days=round(self.t.repeat_imaging_months * 30.44))
        care_dates = []
        items = [
            (r, "ServiceRequest", request_date(r), r.status not in CLOSED_REQUEST) for r in record.service_requests
        ]
        items += [(p, "Procedure", procedure_date(p), p.status not in NOT_DONE_PROCEDURE) for p in record.procedures]
        for resource, kind, when, current in items:
            if not current or resource.id == order.get("id"):
                continue
            if in_value_set(resource.code, care):
                if facts.episode_start is None or when is None or when >= facts.episode_start:
                    facts.conservative_care.append(
                        Evidence(kind, resource.id, concept_label(resource.code, care), when)
                    )
                    if when:
                        care_dates.append(when)
            elif in_value_set(resource.code, candidacy):
                if facts.episode_start is None or when is None or when >= facts.episode_start:
                    facts.candidacy.append(Evidence(kind, resource.id, concept_label(resource.code, candidacy), when))
            else:
                value_set = next((v for v in imaging if in_value_set(resource.code, v)), None)
                done = resource.status == "completed"
                if value_set is not None and done and when is not None and when >= lookback:
                    facts.prior_imaging.append(
                        Evidence(kind, resource.id, concept_label(resource.code, value_set), when)
                    )
        facts.care_start = min(care_dates) if care_dates else None
        facts.prior_imaging.sort(key=lambda e: e.when, reverse=True)

    # MRI safety and contrast (clinical specification 5)
    def _safety(self, facts: Facts, conditions: list[Any], record: Any) -> None:
        facts.implants = self._conditions_in(conditions, "mr-implant")
        safety = self.vs["device-mr-safety"]
        safe, conditional = set(safety.extra.get("safe", ())), set(safety.extra.get("conditional", ()))
        for device in record.devices:
            if device.status in NOT_CURRENT_DEVICE:
                continue
            codes = {c.code for concept in (device.safety or []) for c in codings(concept)}
            name = next((n.name for n in (device.deviceName or []) if n.name), None)
            name = name or (concept_label(device.type) if device.type else "Implanted device")
            if codes & safe:
                continue
            if codes & conditional:
                facts.conditional_devices.append(Evidence("Device", device.id, name, value="MR Conditional"))
            else:
                facts.implants.append(
                    Evidence("Device", device.id, name, value="MR status not recorded as safe or conditional")
                )
        facts.claustrophobia = self._conditions_in(conditions, "claustrophobia")
        facts.pregnancy = self._conditions_in(conditions, "pregnancy")
        window = self.today - timedelta(days=self.t.pregnancy_lookback_days)
        for observation in record.observations:
            when = observation_date(observation)
            if when is not None and when < window:
                continue
            if in_value_set(observation.code, self.vs["pregnancy-status"]):
                if any(c.code == PREGNANT for c in codings(observation.valueCodeableConcept)):
                    facts.pregnancy.append(Evidence("Observation", observation.id, "Pregnancy status: pregnant", when))
            elif in_value_set(observation.code, self.vs["hcg-urine"]) and _positive(observation):
                facts.pregnancy.append(Evidence("Observation", observation.id, "Urine pregnancy test: positive", when))
        facts.low_egfr = self._conditions_in(conditions, "severe-kidney-disease")
        facts.low_egfr += self._conditions_in(conditions, "acute-kidney-injury", within_days=self.t.aki_lookback_days)
        egfr_window = self.today - timedelta(days=self.t.egfr_lookback_days)
        latest = max(
            (
                (observation_date(o), o)
                for o in record.observations
                if in_value_set(o.code, self.vs["egfr"])
                and o.valueQuantity is not None
                and o.valueQuantity.value is not None
                and (observation_date(o) is None or observation_date(o) >= egfr_window)
            ),
            key=lambda pair: pair[0] or date.min,
            default=None,
        )
        if latest is not None and float(latest[1].valueQuantity.value) < self.t.egfr_low:
            facts.low_egfr.append(
                Evidence("Observation", latest[1].id, "eGFR", latest[0], quantity_text(latest[1].valueQuantity))
            )


def _raised(observation: Any) -> bool:
    if any(c.code in _HIGH_INTERPRETATIONS for concept in (observation.interpretation or []) for c in codings(concept)):
        return True
    quantity = observation.valueQuantity
    if quantity is None or quantity.value is None:
        return False
    for reference in observation.referenceRange or []:
        if reference.high is not None and reference.high.value is not None and quantity.value > reference.high.value:
            return True
    return False


def _positive(observation: Any) -> bool:
    if observation.valueBoolean is True:
        return True
    if observation.valueString and observation.valueString.strip().lower() in _POSITIVE:
        return True
    concepts = [observation.valueCodeableConcept, *(observation.interpretation or [])]
    return any(c.code in _POSITIVE for concept in concepts if concept for c in codings(concept))
