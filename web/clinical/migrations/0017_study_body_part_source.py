"""Who gave a study its body part at upload: the DICOM header, the uploader, or the image
recogniser. The analyses follow a body part a person chose as they follow the header."""

import importlib

from django.db import migrations, models

# SQLite rebuilds the study table to add a column, which drops the study-state guard's
# triggers (0012): they are removed first and put back after, as 0015 and 0016 do.
_states = importlib.import_module("web.clinical.migrations.0012_study_states")


sqlite_guard_remove, sqlite_guard_add = _states.sqlite_guard_remove, _states.sqlite_guard_add


class Migration(migrations.Migration):
    dependencies = [
        ("clinical", "0016_report_fields_and_templates"),
    ]

    operations = [
        migrations.RunPython(sqlite_guard_remove, sqlite_guard_add),
        migrations.AddField(
            model_name="study",
            name="body_part_source",
            field=models.CharField(
                blank=True,
                choices=[
                    ("header", "DICOM header"),
                    ("uploader", "chosen by the uploader"),
                    ("recogniser", "image recogniser"),
                    ("", "none"),
                ],
                default="",
                max_length=16,
            ),
        ),
        migrations.RunPython(sqlite_guard_add, sqlite_guard_remove),
    ]
