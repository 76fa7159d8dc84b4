"""The patient's fields the worklist sorts by, copied onto each of its studies (Study.patient_name,
patient_birth_date, patient_sex), so a sort by name, age or sex reads an index of the study
table instead of sorting the join with the patients. A study takes them when it is built
(Study.save, or study_patient_copies for a bulk insert); every change of a patient's name,
birth date or sex, or of a study's patient, goes through here and re-copies them in the same
transaction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import OuterRef, Subquery

from web.clinical.models import STUDY_PATIENT_COPIES as PATIENT_COPIES
from web.clinical.models import Patient, Study


def study_patient_copies(patient: Patient) -> dict[str, Any]:
    """The values a study of this patient holds: Study(..., **study_patient_copies(patient))."""
    return {column: getattr(patient, field) for column, field in PATIENT_COPIES.items()}


def patient_save(*, patient: Patient) -> int:
    """Save a patient, new or with a changed name, birth date or sex, and copy those onto its
    studies in the same transaction. Returns the number of studies written."""
    with transaction.atomic():
        patient.save()
        return Study.objects.filter(patient=patient).update(**study_patient_copies(patient))


def studies_patient_refresh(*, study_ids: Iterable[int]) -> int:
    """Copy each study's patient's fields onto it again: after a study is moved to another
    patient. One UPDATE; returns the number of studies written."""
    ids = list(study_ids)
    with transaction.atomic():
        # The patients' rows locked first: a patient_save under way on one of them commits
        # before these copies are read, so they are never the values it replaced.
        patients = Study.objects.filter(pk__in=ids).values("patient_id")
        list(Patient.objects.select_for_update().filter(pk__in=patients).values_list("pk", flat=True))
        of_patient = Patient.objects.filter(pk=OuterRef("patient_id"))
        return Study.objects.filter(pk__in=ids).update(
            **{column: Subquery(of_patient.values(field)[:1]) for column, field in PATIENT_COPIES.items()}
        )
