"""Guideline sources and the ACR Appropriateness Criteria "Low Back Pain" variants (2021 update).

Categories per variant are those of the ACR 2021 tables (UA usually appropriate, MBA may be
appropriate, UNA usually not appropriate), for MRI lumbar spine by contrast option and for CT
lumbar spine without contrast (the CT alternative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

UA, MBA, UNA = "UA", "MBA", "UNA"
CATEGORY_NAMES = {UA: "Usually Appropriate", MBA: "May Be Appropriate", UNA: "Usually Not Appropriate"}


@dataclass(frozen=True)
class Citation:
    label: str
    url: str


ACR_LBP = Citation(
    "ACR Appropriateness Criteria: Low Back Pain (2021 update), Hutchins et al., J Am Coll Radiol 2021;18:S361-S379",
    "https://acsearch.acr.org/docs/69483/Narrative/",
)
ACR_LBP_2016 = Citation(
    "ACR Appropriateness Criteria: Low Back Pain (2016), Patel et al., J Am Coll Radiol 2016;13:1069-1078",
    "https://doi.org/10.1016/j.jacr.2016.06.008",
)
ACP_2007 = Citation(
    "ACP/APS guideline: diagnosis and treatment of low back pain, Chou et al., Ann Intern Med 2007",
    "https://doi.org/10.7326/0003-4819-147-7-200710020-00006",
)
ACP_2011 = Citation(
    "ACP high-value care: diagnostic imaging for low back pain, Chou et al., Ann Intern Med 2011",
    "https://doi.org/10.7326/0003-4819-154-3-201102010-00008",
)
NICE_NG59 = Citation(
    "NICE NG59: Low back pain and sciatica in over 16s (2016, updated 2020)",
    "https://www.nice.org.uk/guidance/ng59/chapter/Recommendations",
)
CHOOSING_WISELY = Citation(
    "Choosing Wisely: spinal imaging for acute low back pain (ACA; also AAFP, NASS, ACEP)",
    "https://www.choosingwisely.org/clinician-lists/aca-spinal-imaging-for-acute-low-back-pain/",
)
ACEP_CW = Citation(
    "Choosing Wisely (ACEP): lumbar spine imaging in the emergency department",
    "https://www.choosingwisely.org/clinician-lists/acep-lumbar-spine-imaging-in-the-ed/",
)
EL_BARZOUHI = Citation(
    "el Barzouhi et al., MRI in follow-up assessment of sciatica, N Engl J Med 2013;368:999-1007",
    "https://pubmed.ncbi.nlm.nih.gov/23484826/",
)
NASS_2014 = Citation(
    "NASS guideline: lumbar disc herniation with radiculopathy, Kreiner et al., Spine J 2014",
    "https://pubmed.ncbi.nlm.nih.gov/24239490/",
)
ACR_MR_SAFETY = Citation("ACR Manual on MR Safety", "https://www.acr.org/Clinical-Resources/Radiology-Safety/MR-Safety")
HRS_2017 = Citation(
    "HRS 2017 expert consensus: MRI in patients with cardiac implantable electronic devices",
    "https://www.hrsonline.org/2017-hrs-expert-consensus-statement-magnetic-resonance-imaging-and-radiation-exposure-patients",
)
ACR_NKF_GBCA = Citation(
    "ACR-NKF consensus: gadolinium-based contrast in kidney disease, Weinreb et al., Radiology 2021",
    "https://pubmed.ncbi.nlm.nih.gov/33170103/",
)
ACOG_723 = Citation(
    "ACOG Committee Opinion 723: diagnostic imaging during pregnancy (endorsed by ACR)",
    "https://pubmed.ncbi.nlm.nih.gov/28937575/",
)
ACR_SPINE_TRAUMA = Citation(
    "ACR Appropriateness Criteria: Acute Spinal Trauma (2024 update), variant 9: blunt trauma "
    "meeting criteria for thoracic and lumbar imaging",
    "https://acsearch.acr.org/list/GetAppendix?TopicId=23&PanelName=Musculoskeletal",
)
ACR_AXIAL_SPA = Citation(
    "ACR Appropriateness Criteria: Chronic Back Pain, Suspected Sacroiliitis-Spondyloarthropathy, Bernard et al., "
    "J Am Coll Radiol 2017;14:S62-S70 (superseded by the Inflammatory Back Pain topic)",
    "https://doi.org/10.1016/j.jacr.2017.01.048",
)
ARGONAUT_PAMA = Citation("Argonaut: CDS Hooks for PAMA", "https://github.com/argonautproject/cds-hooks-for-pama")


@dataclass(frozen=True)
class Variant:
    number: int
    title: str
    scenarios: tuple[str, ...]  # ACR portal scenario ids
    mri: dict[str, str]  # contrast option -> category
    ct_without: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"ACR variant {self.number}"

    def mri_category(self, contrast: str) -> str:
        return self.mri.get(contrast, self.mri["without"])  # an unspecified MRI is read as the plain study


def _mri(without: str, without_and_with: str) -> dict[str, str]:
    return {"without": without, "without-and-with": without_and_with, "with": UNA}  # contrast-only: UNA everywhere


V1 = Variant(
    1,
    "Acute low back pain with or without radiculopathy; no red flags; no prior management",
    ("3194291",),
    _mri(UNA, UNA),
    UNA,
)
V2 = Variant(
    2,
    "Subacute or chronic low back pain with or without radiculopathy; no red flags; no prior management",
    ("3194294", "3194293"),
    _mri(UNA, UNA),
    UNA,
)
V3 = Variant(
    3,
    "Subacute or chronic low back pain; surgery or intervention candidate with persistent or progressive "
    "symptoms during or following 6 weeks of optimal medical management",
    ("3194297", "3194296"),
    _mri(UA, MBA),
    MBA,
)
V4 = Variant(4, "Low back pain with suspected cauda equina syndrome", ("3194299",), _mri(UA, UA), MBA)
V5 = Variant(
    5,
    "Low back pain with prior lumbar surgery; new or progressing symptoms or clinical findings",
    ("3194302", "3194301"),
    _mri(UA, UA),
    MBA,
)
V6 = Variant(
    6,
    "Low back pain with low-velocity trauma, osteoporosis, elderly age or chronic steroid use",
    ("3194307", "3194306", "3194305", "3194304"),
    _mri(UA, MBA),
    UA,
)
V7 = Variant(
    7,
    "Low back pain with suspected cancer, infection or immunosuppression",
    ("3194311", "3194310", "3194309"),
    _mri(UA, UA),
    MBA,
)


# ACR relative radiation levels, adult (clinical specification 2.3), by site-code modality and contrast.
_RADIATION_MSV = {"mri": 0, "xr": 1, "ct": 1, "ct-myelography": 2}
_RADIATION_WORDS = (
    "no ionising radiation",
    "radiation 1-10 mSv (ACR level 3 of 5)",
    "radiation 10-30 mSv (ACR level 4 of 5)",
)


def radiation_level(orders: list[dict[str, str | None]]) -> str | None:
    """The ACR relative radiation level of a suggested study (its highest order), in words; None when
    no order of it is an imaging study (a referral) or the site's code map gives no modality."""
    levels = []
    for order in orders:
        level = _RADIATION_MSV.get(str(order.get("modality")))
        if level is not None and order.get("modality") == "ct" and order.get("contrast") == "without-and-with":
            level = 2  # CT without and with contrast: 10-30 mSv
        if level is not None:
            levels.append(level)
    return _RADIATION_WORDS[max(levels)] if levels else None
