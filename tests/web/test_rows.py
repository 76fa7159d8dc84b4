"""rows_update: many rows' fields in one statement, stored as Model.save would store them."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import DataError, transaction

from web.clinical.models import Patient
from web.clinical.rows import rows_update

pytestmark = pytest.mark.django_db


def test_each_row_gets_its_own_values_and_the_others_are_left_alone() -> None:
    patients = [Patient.objects.create(patient_id=f"MRN-R{i}", name=f"Old^{i}") for i in range(4)]
    changed = patients[:3]
    for i, patient in enumerate(changed):
        patient.name, patient.birth_date, patient.sex = f"New^{i}", dt.date(1990, 1, 1 + i), "MF"[i % 2]
    patient_untouched_in_memory = patients[3]
    patient_untouched_in_memory.name = "not saved"

    rows_update(changed, ["name", "birth_date", "sex"])

    stored = {p.patient_id: (p.name, p.birth_date, p.sex) for p in Patient.objects.all()}
    assert stored == {
        "MRN-R0": ("New^0", dt.date(1990, 1, 1), "M"),
        "MRN-R1": ("New^1", dt.date(1990, 1, 2), "F"),
        "MRN-R2": ("New^2", dt.date(1990, 1, 3), "M"),
        "MRN-R3": ("Old^3", None, ""),
    }


def test_a_value_too_long_for_its_column_is_refused_not_cut() -> None:
    patients = [Patient.objects.create(patient_id=f"MRN-L{i}") for i in range(2)]
    patients[1].name = "x" * 201  # the column holds 200
    with pytest.raises(DataError), transaction.atomic():
        rows_update(patients, ["name"])
    assert set(Patient.objects.values_list("name", flat=True)) == {""}
