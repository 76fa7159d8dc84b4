"""The three role groups (web.access.Role). Their rights are in web.access, not in Django
permissions, so the groups carry no permissions: membership is the role."""

from django.db import migrations

ROLES = ("technologist", "radiologist", "admin")


def create_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ROLES:
        Group.objects.get_or_create(name=name)


def delete_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("clinical", "0005_applicability"),
    ]

    operations = [migrations.RunPython(create_groups, delete_groups)]
