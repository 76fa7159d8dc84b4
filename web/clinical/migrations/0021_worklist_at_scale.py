"""The worklist at scale: the strongest finding's urgency and probability kept on the study
(beside its AI flag, by the finding rule), so the triage order is a sort on an index; indexes
for the studies still to be read, the status filter and the date columns; on PostgreSQL,
trigram indexes (pg_trgm) for the search by patient name, patient ID and accession number.

Existing studies get their values from the finding rule itself (analysis.findings).
"""

import importlib

from django.db import migrations, models

# SQLite rebuilds a table to add a column; the study-state guard's triggers (0012) are dropped
# for the rebuild and made again after it.
_states = importlib.import_module("web.clinical.migrations.0012_study_states")

# What the search's icontains compares on PostgreSQL: UPPER(column::text) LIKE UPPER(term).
TRIGRAM_INDEXES = [
    ("patient_name_trgm_idx", "clinical_patient", "name"),
    ("patient_id_trgm_idx", "clinical_patient", "patient_id"),
    ("study_accession_trgm_idx", "clinical_study", "accession_number"),
]


sqlite_guard_remove, sqlite_guard_add = _states.sqlite_guard_remove, _states.sqlite_guard_add


def trigram_add(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm", params=None)
    for name, table, column in TRIGRAM_INDEXES:
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ((UPPER({column}::text)) gin_trgm_ops)",
            params=None,
        )


def trigram_remove(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _table, _column in TRIGRAM_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}", params=None)


def top_finding_fill(apps, schema_editor):
    """Only flagged studies have a finding; each gets what the finding rule says."""
    from web.clinical.analysis.findings import studies_top_finding

    Study = apps.get_model("clinical", "Study")
    flagged = list(Study.objects.filter(ai_flagged=True).order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(flagged), 2000):
        chunk = flagged[start : start + 2000]
        top = studies_top_finding(chunk)
        for pk in chunk:
            urgency, probability = top.get(pk, (0, 0.0))
            Study.objects.filter(pk=pk).update(
                ai_flagged=pk in top, finding_urgency=urgency, finding_probability=probability
            )


class Migration(migrations.Migration):
    dependencies = [
        ("clinical", "0020_model_days"),
    ]

    operations = [
        migrations.RunPython(sqlite_guard_remove, sqlite_guard_add),
        migrations.RemoveIndex(
            model_name="study",
            name="study_worklist_flag_idx",
        ),
        migrations.AddField(
            model_name="study",
            name="finding_probability",
            field=models.FloatField(default=0.0, editable=False),
        ),
        migrations.AddField(
            model_name="study",
            name="finding_urgency",
            field=models.PositiveSmallIntegerField(default=0, editable=False),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=["priority", "-finding_urgency", "-finding_probability", "created_at", "id"],
                name="study_triage_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                condition=models.Q(("status__in", ["reviewed", "reported"]), _negated=True),
                fields=["created_at", "id"],
                name="study_waiting_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(fields=["status", "priority"], name="study_status_idx"),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(fields=["study_date", "id"], name="study_date_idx"),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(fields=["created_at", "id"], name="study_arrival_idx"),
        ),
        migrations.RunPython(sqlite_guard_add, sqlite_guard_remove),
        migrations.RunPython(top_finding_fill, migrations.RunPython.noop),
        migrations.RunPython(trigram_add, trigram_remove),
    ]
