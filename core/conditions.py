"""The five conditions RadTriage triages, and which body parts each applies to.

Body parts use DICOM BodyPartExamined defined terms (PS3.16 CID 4031), upper-cased, so a chest
model is never silently run on a knee film.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UnknownConditionError


@dataclass(frozen=True)
class Condition:
    code: str
    label: str
    region: str  # "chest", "musculoskeletal", "knee"
    body_parts: frozenset[str]
    # Horizontal flips are a fair augmentation for limbs and knees, not for chest films
    # (laterality matters: the heart is on the left).
    allow_horizontal_flip: bool

    def applies_to(self, body_part: str | None) -> bool:
        return normalise_body_part(body_part) in self.body_parts


CHEST_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "HEART", "RIBCAGE"})
LIMB_PARTS = frozenset(
    {
        "EXTREMITY",
        "UPPEREXTREMITY",
        "LOWEREXTREMITY",
        "ARM",
        "FOREARM",
        "HAND",
        "WRIST",
        "ELBOW",
        "HUMERUS",
        "SHOULDER",
        "FINGER",
        "LEG",
        "TIBIA",
        "FIBULA",
        "FEMUR",
        "ANKLE",
        "FOOT",
        "TOE",
        "KNEE",
        "HIP",
        "CLAVICLE",
        "RADIUS",
        "ULNA",
    }
)
KNEE_PARTS = frozenset({"KNEE", "LEG", "TIBIA", "FEMUR", "LOWEREXTREMITY"})
# Body parts no RadTriage model reads: an image labelled so is stored without AI analysis.
OTHER_BODY_PARTS = frozenset(
    {
        "SKULL",
        "HEAD",
        "NECK",
        "CSPINE",
        "TSPINE",
        "LSPINE",
        "SPINE",
        "ABDOMEN",
        "PELVIS",
        "SACRUM",
        "COCCYX",
        "JAW",
        "BREAST",
    }
)
# What an uploader may choose (never free text): chest first, then the limbs, then the rest.
KNOWN_BODY_PARTS: tuple[str, ...] = (
    "CHEST",
    *sorted(CHEST_PARTS - {"CHEST"}),
    *sorted(LIMB_PARTS | KNEE_PARTS),
    *sorted(OTHER_BODY_PARTS),
)
# The body part a recognised region stands for, when a PNG/JPEG has none.
REGION_BODY_PART = {"chest": "CHEST", "knee": "KNEE", "limb": "EXTREMITY"}

CONDITIONS: dict[str, Condition] = {
    c.code: c
    for c in (
        Condition("pneumonia", "Pneumonia", "chest", CHEST_PARTS, allow_horizontal_flip=False),
        Condition("cardiomegaly", "Cardiomegaly", "chest", CHEST_PARTS, allow_horizontal_flip=False),
        Condition("fracture", "Fracture", "musculoskeletal", LIMB_PARTS, allow_horizontal_flip=True),
        Condition(
            "knee_osteoarthritis",
            "Knee osteoarthritis",
            "knee",
            KNEE_PARTS,
            allow_horizontal_flip=True,
        ),
        Condition(
            "knee_osteoporosis",
            "Knee osteoporosis",
            "knee",
            KNEE_PARTS,
            allow_horizontal_flip=True,
        ),
    )
}

# How soon a positive finding of each condition needs a radiologist (higher first). The
# worklist sorts AI-positive studies by this, then by probability; it never changes the
# priority a person gave.
CONDITION_URGENCY: dict[str, int] = {
    "pneumonia": 3,
    "fracture": 3,
    "cardiomegaly": 2,
    "knee_osteoarthritis": 1,
    "knee_osteoporosis": 1,
}
assert set(CONDITION_URGENCY) == set(CONDITIONS), "every condition needs an urgency"


def normalise_body_part(body_part: str | None) -> str:
    """'Lower extremity' / 'lower_extremity' -> 'LOWEREXTREMITY' (DICOM style, no separators)."""
    if not body_part:
        return ""
    return "".join(ch for ch in body_part.upper() if ch.isalnum())


def get_condition(code: str) -> Condition:
    try:
        return CONDITIONS[code]
    except KeyError:
        known = ", ".join(CONDITIONS)
        raise UnknownConditionError(f"Unknown condition '{code}'. RadTriage knows: {known}.") from None


def conditions_for_body_part(body_part: str | None) -> list[str]:
    """Condition codes that apply to a body part, in catalogue order; [] if none or unknown."""
    return [c.code for c in CONDITIONS.values() if c.applies_to(body_part)]
