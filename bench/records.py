"""Generated patient records for the benchmark: realistic EHR-shaped resources, mostly ones the
rules never read (as in a real chart), plus a lumbar MRI draft order for a patient with acute
low back pain so that the whole pipeline runs (record, rules, a deferral card, the rating)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CHRONIC = [
    ("I10", "Essential hypertension"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("E78.5", "Hyperlipidemia, unspecified"),
    ("J45.909", "Unspecified asthma, uncomplicated"),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    ("F41.1", "Generalized anxiety disorder"),
    ("M17.11", "Unilateral primary osteoarthritis, right knee"),
    ("E03.9", "Hypothyroidism, unspecified"),
    ("G47.33", "Obstructive sleep apnea"),
    ("N40.0", "Benign prostatic hyperplasia"),
]
LABS = [
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 13.5),
    ("6690-2", "Leukocytes [#/volume] in Blood", "10*3/uL", 7.1),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 98),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 140),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 4.2),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.9),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 6.1),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 180),
]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _epic_extras(rng: random.Random, index: int) -> dict:
    return {
        "meta": {"versionId": str(rng.randint(1, 9)), "lastUpdated": "2026-01-01T00:00:00Z"},
        "extension": [
            {
                "url": "http://open.epic.com/FHIR/StructureDefinition/extension/ip-ordering",
                "valueString": f"order-{index}",
            },
            {
                "url": "http://open.epic.com/FHIR/StructureDefinition/extension/specimen-source",
                "valueCodeableConcept": {"text": "Blood, venous"},
            },
        ],
        "identifier": [
            {"use": "official", "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.798268", "value": f"{900000 + index}"}
        ],
    }


def observation(rng, patient_id, index, code, display, unit, value, when):
    resource = {
        "resourceType": "Observation",
        "id": f"obs-{index}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ],
                "text": "Laboratory",
            },
            {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.10.798268.30", "code": "Lab"}]},
        ],
        "code": {
            "coding": [
                {"system": LOINC, "code": code, "display": display},
                {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.4", "code": str(1000 + index)},
            ],
            "text": display,
        },
        "subject": {"reference": f"Patient/{patient_id}", "display": "Benchmark, Patient"},
        "encounter": {
            "reference": f"Encounter/enc-{index % 40}",
            "identifier": {"system": "urn:oid:1.2.3", "value": str(index % 40)},
        },
        "effectiveDateTime": _iso(when),
        "issued": _iso(when + timedelta(hours=3)),
        "performer": [{"reference": "#lab1", "display": "Central Laboratory"}],
        "valueQuantity": {
            "value": round(value * rng.uniform(0.85, 1.15), 2),
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
        "interpretation": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}
                ],
                "text": "Normal",
            }
        ],
        "note": [{"text": "Specimen received in good condition. Result verified by the laboratory."}],
        "referenceRange": [
            {
                "low": {"value": value * 0.8, "unit": unit},
                "high": {"value": value * 1.2, "unit": unit},
                "text": f"{value * 0.8:.1f}-{value * 1.2:.1f} {unit}",
            }
        ],
        "contained": [
            {
                "resourceType": "Organization",
                "id": "lab1",
                "name": "Central Laboratory",
                "address": [
                    {"line": ["1 Laboratory Way"], "city": "Springfield", "state": "IL", "postalCode": "62701"}
                ],
            },
            {
                "resourceType": "Specimen",
                "id": "spec1",
                "type": {"text": "Blood"},
                "collection": {"collectedDateTime": _iso(when)},
            },
        ],
    }
    resource.update(_epic_extras(rng, index))
    return resource


def record(n_observations: int, n_conditions: int, n_requests: int, now: datetime | None = None, seed: int = 7) -> dict:
    """A CDS Hooks order-select request with prefetch for this project's templates."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    pid = "bench-patient"
    subject = {"reference": f"Patient/{pid}"}
    conditions = [
        {
            "resourceType": "Condition",
            "id": "cond-lbp",
            "subject": subject,
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "verificationStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                ]
            },
            "code": {
                "coding": [{"system": ICD, "code": "M54.50", "display": "Low back pain, unspecified"}],
                "text": "Low back pain",
            },
            "onsetDateTime": (now - timedelta(days=20)).date().isoformat(),
            "recordedDate": _iso(now - timedelta(days=19)),
        }
    ]
    for index in range(n_conditions - 1):
        code, display = CHRONIC[index % len(CHRONIC)]
        condition: dict[str, Any] = {
            "resourceType": "Condition",
            "id": f"cond-{index}",
            "subject": subject,
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "verificationStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                ]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [
                    {"system": ICD, "code": code, "display": display},
                    {"system": "http://snomed.info/sct", "code": str(38341003 + index)},
                ],
                "text": display,
            },
            "onsetDateTime": (now - timedelta(days=400 + index * 11)).date().isoformat(),
            "recordedDate": _iso(now - timedelta(days=390 + index * 11)),
            "recorder": {"reference": "Practitioner/pr-1", "display": "Clinician, Example"},
            "note": [{"text": "Stable on current management; review at next visit."}],
        }
        condition.update(_epic_extras(rng, index))
        conditions.append(condition)
    observations = []
    for index in range(n_observations):
        code, display, unit, value = LABS[index % len(LABS)]
        observations.append(
            observation(rng, pid, index, code, display, unit, value, now - timedelta(days=3 + index * 2))
        )
    # Vital signs at clinic visits: two in the rules' 14-day window, the rest older; eGFR yearly
    # plus one 30 days ago. Only in-window readings of the rules' codes are typed: 3 per record.
    visits = [1, 8] + [20 + 30 * k for k in range(max(0, n_observations // 60))]
    for index, days in enumerate(visits):
        temp = observation(
            rng, pid, 10000 + index, "8310-5", "Body temperature", "Cel", 36.8, now - timedelta(days=days)
        )
        temp["category"][0]["coding"][0]["code"] = "vital-signs"
        observations.insert(min(index * 7, len(observations)), temp)
    for index, days in enumerate([30, 400, 765]):
        observations.insert(
            3 + index,
            observation(
                rng,
                pid,
                20000 + index,
                "98979-8",
                "eGFR (CKD-EPI 2021)",
                "mL/min/{1.73_m2}",
                88,
                now - timedelta(days=days),
            ),
        )
    requests = []
    for index in range(n_requests):
        requests.append(
            {
                "resourceType": "ServiceRequest",
                "id": f"sr-{index}",
                "status": "completed",
                "intent": "order",
                "subject": subject,
                "category": [
                    {
                        "coding": [
                            {"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}
                        ]
                    }
                ],
                "code": {
                    "coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": str(80048 + index % 20)}],
                    "text": "Laboratory panel",
                },
                "authoredOn": _iso(now - timedelta(days=5 + index * 3)),
                "requester": {"reference": "Practitioner/pr-1"},
                "reasonCode": [{"text": "Routine monitoring"}],
                **_epic_extras(rng, index),
            }
        )

    # Medicines (chronic ones the rules never read, and one NSAID before the episode), radiology
    # reports and studies of other body parts, and social-history findings: as in a real chart.
    medicines = [("314076", "lisinopril 10 MG Oral Tablet"), ("860975", "metformin hydrochloride 500 MG Oral Tablet"),
                 ("617312", "atorvastatin 40 MG Oral Tablet"), ("197806", "ibuprofen 600 MG Oral Tablet")]  # fmt: skip
    medication_requests = []
    for index in range(max(4, n_requests // 3)):
        code, display = medicines[index % len(medicines)]
        medication_requests.append({
            "resourceType": "MedicationRequest", "id": f"mr-{index}", "status": "active", "intent": "order",
            "subject": subject, "authoredOn": _iso(now - timedelta(days=60 + index * 9)),
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                      "code": code, "display": display}], "text": display},
            "dosageInstruction": [{"text": "Take one tablet by mouth daily"}], **_epic_extras(rng, index),
        })  # fmt: skip
    medication_statements = [{
        "resourceType": "MedicationStatement", "id": "ms-0", "status": "active", "subject": subject,
        "medicationCodeableConcept": {"text": "Vitamin D3 1000 unit tablet"}, "dateAsserted": _iso(now - timedelta(days=90)),
    }]  # fmt: skip
    reports = [{
        "resourceType": "DiagnosticReport", "id": f"dr-{index}", "status": "final", "subject": subject,
        "category": [{"coding": [{"system": LOINC, "code": "LP29684-5", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "36643-5", "display": "XR Chest 2 Views"}]},
        "effectiveDateTime": _iso(now - timedelta(days=200 + index * 100)), "conclusion": "No acute disease.",
    } for index in range(3)]  # fmt: skip
    studies = [{
        "resourceType": "ImagingStudy", "id": "is-0", "status": "available", "subject": subject,
        "started": _iso(now - timedelta(days=300)),
        "series": [{"uid": "2.25.99", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
                    "bodySite": {"system": "http://snomed.info/sct", "code": "51185008", "display": "Thorax"},
                    "instance": [{"uid": f"2.25.99.{i}", "sopClass": {"system": "urn:ietf:rfc:3986",
                                  "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}} for i in range(40)]}],
    }]  # fmt: skip
    findings = [{
        "resourceType": "Observation", "id": "sh-smoking", "status": "final", "subject": subject,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "social-history"}]}],
        "code": {"coding": [{"system": LOINC, "code": "72166-2", "display": "Tobacco smoking status"}]},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "8517006",
                                             "display": "Ex-smoker"}]},
        "effectiveDateTime": _iso(now - timedelta(days=40)),
    }]  # fmt: skip

    def searchset(resources):
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "entry": [
                {
                    "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }

    draft = {
        "resourceType": "ServiceRequest",
        "id": "draft-mri",
        "status": "draft",
        "intent": "plan",
        "subject": subject,
        "code": {
            "coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148"}],
            "text": "MRI lumbar spine w/o contrast",
        },
        "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "279039007"}]}],
    }
    return {
        "hookInstance": "c3f3a0b6-0f8e-4f5e-9b7e-7d1f0f5d9a11",
        "hook": "order-select",
        "fhirServer": "https://ehr.example.org/fhir",
        "context": {
            "patientId": pid,
            "userId": "Practitioner/pr-1",
            "selections": ["ServiceRequest/draft-mri"],
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": pid,
                "gender": "female",
                "birthDate": "1979-04-01",
                "name": [{"family": "Benchmark", "given": ["Patient"]}],
            },
            "conditions": searchset(conditions),
            "observations": searchset(observations),
            "findings": searchset(findings),
            "serviceRequests": searchset(requests),
            "procedures": searchset([]),
            "medicationRequests": searchset(medication_requests),
            "medicationStatements": searchset(medication_statements),
            "reports": searchset(reports),
            "imagingStudies": searchset(studies),
            "devices": searchset([]),
        },
    }
