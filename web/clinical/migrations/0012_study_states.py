"""The study's state machine: two new states (scheduled, reviewed), a report's first author when
a colleague takes it over, and the database's guard that a study is reported only with a signed
report.

Existing rows keep their status, except a "reported" study without a signed report: "mark
reviewed" used to set that, and "reviewed" is what happened (read, no report here). Each such
change is written to the audit log.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

GUARD = "clinical_study_reported_needs_signed_report"
GUARD_MESSAGE = "A study is reported only by signing its report: this one has no signed report."

POSTGRES_GUARD = f"""
CREATE OR REPLACE FUNCTION {GUARD}() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'reported' AND NOT EXISTS (
        SELECT 1 FROM clinical_report r WHERE r.study_id = NEW.id AND r.state = 'signed'
    ) THEN
        RAISE EXCEPTION '{GUARD_MESSAGE} (study %)', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER {GUARD} BEFORE INSERT OR UPDATE OF status ON clinical_study
    FOR EACH ROW EXECUTE FUNCTION {GUARD}();
"""
POSTGRES_UNGUARD = f"DROP TRIGGER IF EXISTS {GUARD} ON clinical_study; DROP FUNCTION IF EXISTS {GUARD}();"

_SQLITE_WHEN = (
    "WHEN NEW.status = 'reported' AND NOT EXISTS (SELECT 1 FROM clinical_report r "
    "WHERE r.study_id = NEW.id AND r.state = 'signed')"
)
SQLITE_GUARD = [
    f"CREATE TRIGGER {GUARD}_{when} BEFORE {event} ON clinical_study FOR EACH ROW {_SQLITE_WHEN} "
    f"BEGIN SELECT RAISE(ABORT, '{GUARD_MESSAGE}'); END;"
    for when, event in (("insert", "INSERT"), ("update", "UPDATE OF status"))
]
SQLITE_UNGUARD = [f"DROP TRIGGER IF EXISTS {GUARD}_{when};" for when in ("insert", "update")]


def guard_add(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_GUARD, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_GUARD:
            schema_editor.execute(statement, params=None)


def guard_remove(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_UNGUARD, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_UNGUARD:
            schema_editor.execute(statement, params=None)


# Used by the later migrations that add a column to the study table: SQLite rebuilds the table
# for it, which drops these triggers; they are removed before and made again after.
def sqlite_guard_remove(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        guard_remove(apps, schema_editor)


def sqlite_guard_add(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        guard_add(apps, schema_editor)


def reported_without_report_to_reviewed(apps, schema_editor):
    Study = apps.get_model("clinical", "Study")
    Report = apps.get_model("clinical", "Report")
    AuditEvent = apps.get_model("clinical", "AuditEvent")
    signed = Report.objects.filter(state="signed").values("study_id")
    wrong = list(Study.objects.filter(status="reported").exclude(pk__in=signed).values("pk", "patient_id"))
    if not wrong:
        return
    Study.objects.filter(pk__in=[row["pk"] for row in wrong]).update(status="reviewed")
    AuditEvent.objects.bulk_create(
        AuditEvent(
            actor_label="system",
            action="study.status",
            patient_id=row["patient_id"],
            study_id=row["pk"],
            object_type="study",
            object_id=str(row["pk"]),
            detail={
                "from": "reported",
                "to": "reviewed",
                "why": "marked reviewed without a signed report: reviewed is what happened",
            },
        )
        for row in wrong
    )


class Migration(migrations.Migration):
    dependencies = [
        ("clinical", "0011_reports"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="report",
            name="taken_over_from",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="study",
            name="status",
            field=models.CharField(
                choices=[
                    ("received", "Received"),
                    ("analysing", "AI analysing"),
                    ("scheduled", "AI scheduled (night window)"),
                    ("ai_complete", "AI complete"),
                    ("in_review", "In review"),
                    ("reviewed", "Reviewed, no report here"),
                    ("reported", "Reported"),
                ],
                default="received",
                max_length=16,
            ),
        ),
        migrations.RunPython(reported_without_report_to_reviewed, migrations.RunPython.noop),
        migrations.RunPython(guard_add, guard_remove),
    ]
