"""Is this image one the model was made for? Decided before a result may count.

Every model learned one population (children's chest films, adults' chest films, knee joint
crops, ...). Run on anything else it still answers, and its answer means nothing: the
pneumonia model trained on children flagged 63% of normal adult chests. So each result is
checked against the model's declared population (registry entry `population`) three ways:

1. the DICOM header where it says something: BodyPartExamined, ViewPosition, the patient's
   age (PatientAge, or PatientBirthDate and StudyDate);
2. the image recogniser (core.recognition), from the pixels, always: body region, and within a
   region the kind of image (children's vs adults' chest, knee joint crop vs full knee film).
   For DICOM the header decides the region and a disagreeing recogniser is noted. Where the
   header has no body part, a body part a person chose at upload (metadata key
   CHOSEN_BODY_PART) decides in the same way: the region's model runs and the recogniser's
   disagreement is a note, never a problem. The other checks still apply to it;
3. the distance of the image's own pooled features (as the model sees them) to the model's
   training features (core.population), with a cut-off set on validation.

A result that fails any check is "not applicable": stored with the reason in plain words,
never flagged, never moving a study up the worklist.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.conditions import CHEST_PARTS, KNEE_PARTS, LIMB_PARTS, normalise_body_part

REGIONS = ("chest", "knee", "limb")
# Which DICOM body parts stand for which recogniser region. KNEE_PARTS is a subset of
# LIMB_PARTS (a knee is a limb for the fracture model), so the knee is asked first.
REGION_BODY_PARTS = {"chest": CHEST_PARTS, "knee": KNEE_PARTS, "limb": LIMB_PARTS}
FRONTAL_VIEWS = frozenset({"PA", "AP", "APSUPINE", "APERECT", "PAERECT"})
# Not a DICOM attribute: the body part a person chose at upload for an image whose header
# has none (the caller adds it to the metadata; the header's BodyPartExamined always wins).
CHOSEN_BODY_PART = "chosen_body_part"

# Recogniser population classes in words (core.recognition names them).
CLASS_WORDS = {
    "chest_child": "a child's chest film",
    "chest_adult": "an adult's chest film",
    "knee_crop": "a knee joint crop",
    "knee_film": "a full knee film",
    "limb": "a limb film",
}


class RecognitionLike(Protocol):
    """What this module needs of core.recognition.Recognition."""

    @property
    def region(self) -> str: ...
    @property
    def population(self) -> str: ...
    @property
    def age_group(self) -> str | None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Population:
    """A model's training population, from its registry entry's `population` object."""

    region: str
    description: str
    recogniser_classes: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    age_group: str = "both"  # "children" | "adults" | "both"
    age_range_years: tuple[float, float] | None = None
    image_kind: str = "full film"

    @classmethod
    def from_entry(cls, raw: dict[str, Any] | None) -> Population | None:
        """None when the entry declares no population (then only the header is checked)."""
        spec = (raw or {}).get("population")
        if not spec:
            return None
        age_range = spec.get("age_range_years")
        return cls(
            region=str(spec.get("region", "")),
            description=str(spec.get("description", "")),
            recogniser_classes=tuple(spec.get("recogniser_classes") or ()),
            views=_view_tokens(spec.get("views") or ()),
            age_group=str(spec.get("age_group") or "both"),
            age_range_years=(float(age_range[0]), float(age_range[1])) if age_range else None,
            image_kind=str(spec.get("image_kind") or "full film"),
        )


@dataclass(frozen=True)
class Applicability:
    applicable: bool
    reason: str = ""  # plain words, empty when applicable
    notes: tuple[str, ...] = ()  # e.g. the recogniser disagreeing with the header
    checks: dict[str, Any] = field(default_factory=dict)  # what each check saw (stored)


def check_applicability(
    *,
    population: Population | None,
    model_name: str,
    metadata: dict[str, Any],
    recognition: RecognitionLike | None,
    distance: float | None = None,
    cutoff: float | None = None,
) -> Applicability:
    """Decide whether a result of the model named `model_name` ("the pneumonia model") may
    count for this image. metadata: the DICOM header summary ({} for PNG/JPEG), plus
    CHOSEN_BODY_PART where a person chose the body part at upload."""
    checks = _checks_seen(metadata, recognition, distance, cutoff)
    if population is None:
        return Applicability(
            True,
            notes=(f"The {model_name} declares no training population: only the header was checked.",),
            checks=checks,
        )
    problems, notes = _header_and_pixels(population, metadata, recognition)
    if distance is not None and cutoff is not None and distance > cutoff:
        problems.append(
            f"its image features are unlike this model's training images (distance "
            f"{distance:.1f}, cut-off {cutoff:.1f})"
        )
    elif distance is None:
        notes.append("The feature-distance check is unavailable for this model.")
    if not problems:
        return Applicability(True, notes=tuple(notes), checks=checks)
    reason = (
        f"Outside this model's training population: {'; '.join(problems)}. "
        f"The {model_name} was trained on {_lower_first(population.description)}."
    )
    return Applicability(False, reason=reason, notes=tuple(notes), checks=checks)


def _header_and_pixels(
    population: Population, metadata: dict[str, Any], recognition: RecognitionLike | None
) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    notes: list[str] = []
    header_region = region_of_body_part(str(metadata.get("BodyPartExamined") or ""))
    given = _given_body_part(metadata)
    seen_region = recognition.region if recognition is not None else None
    if given is not None:
        if given.region != population.region and not _limb_model_on_knee(population, given.region):
            problems.append(given.said)
        notes.extend(_recogniser_notes(recognition, given))
    elif recognition is None:
        problems.append("the image recogniser could not run, so the image's body region is unknown")
    elif seen_region == "unrecognised":
        problems.append("it is not recognised as a chest, knee or limb radiograph")
    elif seen_region != population.region and not _limb_model_on_knee(population, seen_region):
        problems.append(f"the image recogniser sees {seen_as(recognition)}")
    problems.extend(_kind_problems(population, metadata, recognition, header_region))
    problems.extend(_view_problems(population, metadata))
    return problems, notes


@dataclass(frozen=True)
class _Given:
    """A body part given by the header or chosen by a person, and its region."""

    region: str
    body_part: str
    from_header: bool

    @property
    def said(self) -> str:
        who = "the DICOM header says" if self.from_header else "the uploader chose"
        return f"{who} body part {self.body_part}"


def _given_body_part(metadata: dict[str, Any]) -> _Given | None:
    """The header's body part where it names a region, else a person's choice at upload."""
    header = str(metadata.get("BodyPartExamined") or "")
    if region_of_body_part(header):
        return _Given(region_of_body_part(header), header, from_header=True)
    chosen = normalise_body_part(str(metadata.get(CHOSEN_BODY_PART) or ""))
    if region_of_body_part(chosen):
        return _Given(region_of_body_part(chosen), chosen, from_header=False)
    return None


def _recogniser_notes(recognition: RecognitionLike | None, given: _Given) -> list[str]:
    """The recogniser disagreeing with the header or a person's choice: said, not followed."""
    if recognition is None:
        decided = "the DICOM header decided" if given.from_header else "the uploader's choice decided"
        return [f"The image recogniser could not run; {decided}."]
    seen_region = recognition.region
    if not seen_region or seen_region == given.region:
        return []
    if given.from_header:
        # An image the recogniser does not place says nothing against the header.
        if seen_region == "unrecognised":
            return []
        return [
            f"The image recogniser sees {seen_as(recognition)}, but the DICOM header says "
            f"{given.body_part}; the header was followed."
        ]
    # Against a person's choice even an unplaced image is worth saying: only the choice placed it.
    return [
        f"The image recogniser sees {seen_as(recognition)}, but the uploader chose body part "
        f"{given.body_part}; the choice was followed."
    ]


def seen_as(recognition: RecognitionLike | None) -> str:
    """'an adult chest film (97%)': the recogniser's words with their article."""
    words = recognition.describe() if recognition is not None else "nothing"
    if words.startswith("not recognised"):
        return f"an image it does not recognise ({words.split(': ', 1)[-1]})"
    return f"{'an' if words[:1] in 'aeiou' else 'a'} {words}"


def _limb_model_on_knee(population: Population, region: str | None) -> bool:
    # The fracture model's limb films include legs and knees.
    return population.region == "limb" and region == "knee"


def _kind_problems(
    population: Population, metadata: dict[str, Any], recognition: RecognitionLike | None, header_region: str
) -> list[str]:
    """Within the right region: the right kind of image. The patient's age from the header
    where it has one, else the recogniser's age group (chest); crop or film (knee)."""
    age = patient_age_years(metadata)
    if age is not None:
        problems = _age_problems(population, age)
    elif (
        population.region == "chest"
        and population.age_group != "both"
        and recognition is not None
        and recognition.region == "chest"
        and recognition.age_group
        and recognition.age_group != population.age_group
    ):
        problems = [f"the image recogniser sees {seen_as(recognition)}"]
    else:
        problems = []
    if (
        population.region == "knee"
        and population.recogniser_classes
        and recognition is not None
        and recognition.region == "knee"
        and recognition.population not in population.recogniser_classes
    ):
        problems.append(f"the image recogniser sees {seen_as(recognition)}")
    return problems


def _age_problems(population: Population, age: float) -> list[str]:
    if population.age_range_years is None:
        if population.age_group == "children" and age >= 18:
            return [f"the patient is {age:.0f} years old (an adult)"]
        if population.age_group == "adults" and age < 18:
            return [f"the patient is {_age_words(age)} (a child)"]
        return []
    low, high = population.age_range_years
    # Ages are whole years in the data: a 5-year-old is inside "1-5" until the 6th birthday.
    if not low <= age < high + 1:
        return [f"the patient is {_age_words(age)}, outside {low:g}-{high:g} years"]
    return []


def _view_problems(population: Population, metadata: dict[str, Any]) -> list[str]:
    view = normalise_body_part(str(metadata.get("ViewPosition") or ""))
    if not view or not population.views or view in population.views:
        return []
    if view in FRONTAL_VIEWS and set(population.views) & (FRONTAL_VIEWS | {"FRONTAL"}):
        return []
    return [f"the view is {metadata.get('ViewPosition')}, not a {'/'.join(population.views).lower()} view"]


def _view_tokens(views: Any) -> tuple[str, ...]:
    """["PA/AP frontal"] -> ("PA", "AP", "FRONTAL"): the registry states views in words."""
    tokens: list[str] = []
    for view in views:
        tokens.extend(t for t in re.split(r"[^A-Za-z0-9]+", str(view).upper()) if t)
    return tuple(dict.fromkeys(tokens))


def region_of_body_part(body_part: str) -> str:
    """'KNEE' -> 'knee', 'CHEST' -> 'chest', 'HAND' -> 'limb', anything else -> ''."""
    part = normalise_body_part(body_part)
    for region in REGIONS:
        if part in REGION_BODY_PARTS[region]:
            return region
    return ""


def patient_age_years(metadata: dict[str, Any]) -> float | None:
    """From PatientAge ('045Y', '006M', '002W', '010D') or PatientBirthDate + StudyDate."""
    age = str(metadata.get("PatientAge") or "").strip().upper()
    if len(age) == 4 and age[:3].isdigit() and age[3] in "YMWD":
        per_year = {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[age[3]]
        return int(age[:3]) / per_year
    birth = _dicom_date(metadata.get("PatientBirthDate"))
    study = _dicom_date(metadata.get("StudyDate")) or _dicom_date(metadata.get("AcquisitionDate"))
    if birth and study and study >= birth:
        return (study - birth).days / 365.25
    return None


def _dicom_date(value: Any) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if text else None
    except ValueError:
        return None


def _age_words(age: float) -> str:
    if age < 2:
        return f"{age * 12:.0f} months old"
    return f"{age:.0f} years old"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else "a population it does not describe"


def _checks_seen(
    metadata: dict[str, Any],
    recognition: RecognitionLike | None,
    distance: float | None,
    cutoff: float | None,
) -> dict[str, Any]:
    return {
        "header_body_part": str(metadata.get("BodyPartExamined") or ""),
        "chosen_body_part": normalise_body_part(str(metadata.get(CHOSEN_BODY_PART) or "")),
        "body_part_source": _body_part_source(metadata, recognition),
        "header_view": str(metadata.get("ViewPosition") or ""),
        "patient_age_years": _round(patient_age_years(metadata)),
        "recognised": recognition.describe() if recognition is not None else None,
        "recognised_region": recognition.region if recognition is not None else None,
        "recognised_population": recognition.population if recognition is not None else None,
        "feature_distance": _round(distance),
        "feature_cutoff": _round(cutoff),
    }


def _body_part_source(metadata: dict[str, Any], recognition: RecognitionLike | None) -> str:
    """Who placed the image in its region: "header", "uploader" (a person's choice at upload),
    "recogniser", or "" (nobody)."""
    if region_of_body_part(str(metadata.get("BodyPartExamined") or "")):
        return "header"
    if region_of_body_part(str(metadata.get(CHOSEN_BODY_PART) or "")):
        return "uploader"
    if recognition is not None and recognition.region in REGIONS:
        return "recogniser"
    return ""


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
