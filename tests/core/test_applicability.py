"""The applicability check: the header, the recogniser's view and the feature distance each can
turn an image away from a model's population, in words a radiologist understands."""

from __future__ import annotations

from core.applicability import Population, check_applicability, patient_age_years
from core.recognition import Recognition

CHILD_CHEST = Population.from_entry(
    {
        "population": {
            "region": "chest",
            "description": "Children's frontal chest films (Guangzhou, ages 1-5)",
            "recogniser_classes": ["chest_child"],
            "views": ["AP/PA frontal"],
            "age_group": "children",
            "age_range_years": [1, 5],
        }
    }
)
KNEE_CROP = Population.from_entry(
    {
        "population": {
            "region": "knee",
            "description": "CLAHE knee joint crops of adults (OAI)",
            "recogniser_classes": ["knee_crop"],
            "age_group": "adults",
            "image_kind": "joint crop",
        }
    }
)
LIMB = Population.from_entry(
    {
        "population": {
            "region": "limb",
            "description": "Limb films",
            "recogniser_classes": ["limb"],
            "age_group": "both",
        }
    }
)


def seen(population: str, region: str, share: float = 0.95) -> Recognition:
    probabilities = {c: 0.0 for c in ("chest_child", "chest_adult", "knee_crop", "knee_film", "limb")}
    if population in probabilities:
        probabilities[population] = share
    age = {"chest_child": "children", "chest_adult": "adults"}.get(population)
    return Recognition(
        region=region,
        region_confidence=share,
        population=population,
        probabilities=probabilities,
        age_group=age,
    )


def check(population, recognition, metadata=None, distance=1.0, cutoff=5.0):
    return check_applicability(
        population=population,
        model_name="pneumonia model",
        metadata=metadata or {},
        recognition=recognition,
        distance=distance,
        cutoff=cutoff,
    )


def test_a_childs_chest_film_is_applicable_to_the_childrens_pneumonia_model() -> None:
    result = check(CHILD_CHEST, seen("chest_child", "chest"))
    assert result.applicable and result.reason == ""


def test_an_adult_chest_film_is_turned_away_in_plain_words() -> None:
    result = check(CHILD_CHEST, seen("chest_adult", "chest", 0.97))
    assert not result.applicable
    assert result.reason == (
        "Outside this model's training population: the image recogniser sees an adult chest "
        "film (97%). The pneumonia model was trained on children's frontal chest films "
        "(Guangzhou, ages 1-5)."
    )


def test_a_knee_sent_to_a_chest_model_is_not_applicable() -> None:
    assert not check(CHILD_CHEST, seen("knee_film", "knee")).applicable


def test_the_header_age_decides_over_the_recogniser_for_a_chest() -> None:
    adult = check(
        CHILD_CHEST, seen("chest_child", "chest"), {"BodyPartExamined": "CHEST", "PatientAge": "045Y"}
    )
    child = check(
        CHILD_CHEST, seen("chest_adult", "chest"), {"BodyPartExamined": "CHEST", "PatientAge": "004Y"}
    )
    assert not adult.applicable and "45 years old, outside 1-5 years" in adult.reason
    assert child.applicable


def test_the_header_body_part_decides_and_a_disagreeing_recogniser_is_noted() -> None:
    result = check(CHILD_CHEST, seen("knee_film", "knee"), {"BodyPartExamined": "CHEST"})
    assert result.applicable
    assert any("header was followed" in note for note in result.notes)
    wrong = check(CHILD_CHEST, seen("chest_child", "chest"), {"BodyPartExamined": "KNEE"})
    assert not wrong.applicable and "body part KNEE" in wrong.reason


def test_a_lateral_view_is_outside_a_frontal_population() -> None:
    result = check(CHILD_CHEST, seen("chest_child", "chest"), {"ViewPosition": "LL"})
    assert not result.applicable and "view is LL" in result.reason
    for frontal in ("PA", "AP"):
        assert check(CHILD_CHEST, seen("chest_child", "chest"), {"ViewPosition": frontal}).applicable


def test_a_full_knee_film_is_outside_the_joint_crop_model() -> None:
    result = check(KNEE_CROP, seen("knee_film", "knee"))
    assert not result.applicable and "full knee film" in result.reason


def test_features_far_from_the_training_images_turn_an_image_away() -> None:
    result = check(CHILD_CHEST, seen("chest_child", "chest"), distance=9.0, cutoff=5.0)
    assert not result.applicable and "distance 9.0, cut-off 5.0" in result.reason


def test_an_unrecognised_image_or_a_missing_recogniser_never_counts() -> None:
    assert not check(LIMB, seen("unrecognised", "unrecognised", 0.3)).applicable
    assert "could not run" in check(LIMB, None).reason


def test_the_fracture_model_accepts_a_knee_as_a_limb() -> None:
    assert check(LIMB, seen("knee_film", "knee")).applicable


def test_a_model_without_a_declared_population_is_applicable_with_a_note() -> None:
    result = check(None, seen("unrecognised", "unrecognised"))
    assert result.applicable and "declares no training population" in result.notes[0]


def test_patient_age_comes_from_patient_age_or_birth_and_study_dates() -> None:
    assert patient_age_years({"PatientAge": "006M"}) == 0.5
    assert round(patient_age_years({"PatientBirthDate": "20000101", "StudyDate": "20100101"}), 1) == 10.0
    assert patient_age_years({"PatientAge": "garbage"}) is None


def test_a_body_part_chosen_at_upload_is_followed_and_the_recogniser_only_noted() -> None:
    chosen = {"chosen_body_part": "EXTREMITY"}
    for recognition in (seen("unrecognised", "unrecognised", 0.4), seen("chest_adult", "chest")):
        result = check(LIMB, recognition, chosen)
        assert result.applicable and result.reason == "", result.reason
        assert any(
            note.startswith("The image recogniser sees")
            and note.endswith("but the uploader chose body part EXTREMITY; the choice was followed.")
            for note in result.notes
        ), result.notes
        assert result.checks["body_part_source"] == "uploader"
        assert result.checks["chosen_body_part"] == "EXTREMITY"


def test_a_chosen_body_part_still_faces_the_age_view_and_feature_checks() -> None:
    unplaced = seen("unrecognised", "unrecognised", 0.4)
    chosen = {"chosen_body_part": "CHEST"}
    too_old = check(CHILD_CHEST, unplaced, {**chosen, "PatientAge": "045Y"})
    far = check(LIMB, unplaced, {"chosen_body_part": "HAND"}, distance=9.0, cutoff=5.0)
    lateral = check(CHILD_CHEST, unplaced, {**chosen, "ViewPosition": "LL"})

    assert not too_old.applicable and "the patient is 45 years old" in too_old.reason
    assert not far.applicable and "distance 9.0, cut-off 5.0" in far.reason
    assert not lateral.applicable and "the view is LL" in lateral.reason
    for result in (too_old, far, lateral):
        assert "not recognised" not in result.reason and "recogniser" not in result.reason


def test_the_dicom_header_wins_over_a_chosen_body_part() -> None:
    result = check(LIMB, seen("limb", "limb"), {"BodyPartExamined": "CHEST", "chosen_body_part": "HAND"})
    assert not result.applicable and "the DICOM header says body part CHEST" in result.reason
    assert result.checks["body_part_source"] == "header"


def test_without_a_header_or_a_choice_an_unrecognised_image_still_never_counts() -> None:
    result = check(LIMB, seen("unrecognised", "unrecognised", 0.3), {"chosen_body_part": ""})
    assert not result.applicable and "not recognised" in result.reason
    assert result.checks["body_part_source"] == ""
