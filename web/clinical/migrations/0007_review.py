import django.utils.timezone
from django.db import migrations, models
from django.db.models import Q


class Migration(migrations.Migration):
    dependencies = [("clinical", "0006_roles")]

    operations = [
        migrations.AlterModelOptions(name="annotation", options={"ordering": ["created_at", "id"]}),
        migrations.AddField(
            model_name="annotation",
            name="updated_at",
            field=models.DateTimeField(auto_now=True, default=django.utils.timezone.now),
            preserve_default=False,
        ),
        migrations.AddConstraint(
            model_name="annotation",
            constraint=models.UniqueConstraint(
                condition=~Q(verdict=""),
                fields=("analysis", "author"),
                name="annotation_one_verdict_per_author",
            ),
        ),
    ]
