"""The patient's name, birth date and sex copied onto each study (kept by
web.clinical.worklist.patients), and indexes that hold the worklist's order under the sorts by
them (web.clinical.worklist.sort_indexes), so those sorts read an index instead of sorting the
join of every study with its patient.

Existing studies get their patient's values in one UPDATE, before the indexes are made.
"""

import importlib

from django.db import migrations, models
from django.db.models import OuterRef, Subquery

# As web.clinical.worklist.sort_indexes.AGE_INDEX_SQL reads today; written out here, so the
# migration stays what it was when applied.
AGE_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS study_sort_age_idx ON clinical_study (patient_birth_date DESC NULLS LAST, "
    "priority, finding_urgency DESC, finding_probability DESC, created_at, id)"
)

# SQLite rebuilds a table to add a column; the study-state guard's triggers (0012) are dropped
# for the rebuild and made again after it (as in 0021 and 0022).
_states = importlib.import_module("web.clinical.migrations.0012_study_states")

COPIES = {"patient_name": "name", "patient_birth_date": "birth_date", "patient_sex": "sex"}


sqlite_guard_remove, sqlite_guard_add = _states.sqlite_guard_remove, _states.sqlite_guard_add


def patient_copies_fill(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":  # a join: one pass over each table
        schema_editor.execute(
            "UPDATE clinical_study s SET patient_name = p.name, patient_birth_date = p.birth_date, "
            "patient_sex = p.sex FROM clinical_patient p WHERE p.id = s.patient_id",
            params=None,
        )
        return
    Patient, Study = apps.get_model("clinical", "Patient"), apps.get_model("clinical", "Study")
    of_patient = Patient.objects.filter(pk=OuterRef("patient_id"))
    Study.objects.update(**{c: Subquery(of_patient.values(f)[:1]) for c, f in COPIES.items()})


def age_index_add(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":  # SQLite takes no NULLS LAST in an index
        schema_editor.execute(AGE_INDEX_SQL, params=None)


def age_index_remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS study_sort_age_idx", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("clinical", "0022_worklist_counts_conditions_sorts"),
    ]

    operations = [
        migrations.RunPython(sqlite_guard_remove, sqlite_guard_add),
        migrations.AddField(
            model_name="study",
            name="patient_birth_date",
            field=models.DateField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="study",
            name="patient_name",
            field=models.CharField(blank=True, default="", editable=False, max_length=200),
        ),
        migrations.AddField(
            model_name="study",
            name="patient_sex",
            field=models.CharField(blank=True, default="", editable=False, max_length=1),
        ),
        migrations.RunPython(sqlite_guard_add, sqlite_guard_remove),
        migrations.RunPython(patient_copies_fill, migrations.RunPython.noop),
        # The worklist's order under the sorts by the patient's fields (worklist.sort_indexes).
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=[
                    "patient_name",
                    "priority",
                    "-finding_urgency",
                    "-finding_probability",
                    "created_at",
                    "id",
                ],
                name="study_sort_patient_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=[
                    "-patient_name",
                    "priority",
                    "-finding_urgency",
                    "-finding_probability",
                    "created_at",
                    "id",
                ],
                name="study_sort_patient_desc_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=[
                    "patient_sex",
                    "priority",
                    "-finding_urgency",
                    "-finding_probability",
                    "created_at",
                    "id",
                ],
                name="study_sort_sex_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=[
                    "patient_birth_date",
                    "priority",
                    "-finding_urgency",
                    "-finding_probability",
                    "created_at",
                    "id",
                ],
                name="study_sort_birth_date_idx",
            ),
        ),
        migrations.RunPython(age_index_add, age_index_remove),
    ]
