"""Who gave a study its body part at upload: the DICOM header, the uploader, or the image
recogniser. The analyses follow a body part a person chose as they follow the header."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("clinical", "0016_report_fields_and_templates"),
    ]

    operations = [
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
    ]
