"""The conditions of a study's findings kept on the study (beside its AI flag, by the finding
rule), so the worklist's "condition and positive" filter reads a column instead of searching
every result with the current-result rule; indexes for the worklist's sorts by a column of few
values (web.clinical.worklist.sort_indexes).

Existing studies get their values from the finding rule itself (analysis.findings).
"""

import importlib

from django.db import migrations, models

from web.clinical.worklist.sort_indexes import DATE_DESC_INDEX_SQL

# SQLite rebuilds a table to add a column; the study-state guard's triggers (0012) are dropped
# for the rebuild and made again after it (as in 0020).
_states = importlib.import_module("web.clinical.migrations.0012_study_states")


sqlite_guard_remove, sqlite_guard_add = _states.sqlite_guard_remove, _states.sqlite_guard_add


def finding_conditions_fill(apps, schema_editor):
    """Only flagged studies have a finding; each gets what the finding rule says (one UPDATE per
    distinct value in each chunk)."""
    from web.clinical.analysis.findings import studies_findings

    Study = apps.get_model("clinical", "Study")
    flagged = list(Study.objects.filter(ai_flagged=True).order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(flagged), 5000):
        chunk = flagged[start : start + 5000]
        found = studies_findings(chunk)
        by_value: dict[str, list[int]] = {}
        for pk in chunk:
            by_value.setdefault(found[pk][2] if pk in found else "", []).append(pk)
        for value, pks in by_value.items():
            Study.objects.filter(pk__in=pks).update(finding_conditions=value)


def date_desc_index_add(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":  # SQLite takes no NULLS LAST in an index
        schema_editor.execute(DATE_DESC_INDEX_SQL, params=None)


def date_desc_index_remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS study_sort_date_desc_idx", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("clinical", "0021_worklist_at_scale"),
    ]

    operations = [
        migrations.RunPython(sqlite_guard_remove, sqlite_guard_add),
        migrations.AddField(
            model_name="study",
            name="finding_conditions",
            field=models.CharField(default="", editable=False, max_length=200),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                condition=models.Q(("ai_flagged", True)),
                fields=["finding_conditions", "id"],
                name="study_finding_conditions_idx",
            ),
        ),
        migrations.RunPython(sqlite_guard_add, sqlite_guard_remove),
        migrations.RunPython(finding_conditions_fill, migrations.RunPython.noop),
        # The worklist's order under the sorts by a column of few values (worklist.sort_indexes).
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=[
                    "modality",
                    "priority",
                    "-finding_urgency",
                    "-finding_probability",
                    "created_at",
                    "id",
                ],
                name="study_sort_modality_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=[
                    "body_part",
                    "priority",
                    "-finding_urgency",
                    "-finding_probability",
                    "created_at",
                    "id",
                ],
                name="study_sort_region_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=["-priority", "-finding_urgency", "-finding_probability", "created_at", "id"],
                name="study_sort_priority_desc_idx",
            ),
        ),
        migrations.RunPython(date_desc_index_add, date_desc_index_remove),
    ]
