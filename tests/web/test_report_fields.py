"""A report's three fields (clinical information, findings, impression) and the report templates
that fill them: through the API and the Django admin, frozen when signed, printed in the PDF
(read back with pdftotext), on PostgreSQL; the migration on a fresh SQLite too."""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.web.fixtures import with_role
from tests.web.test_reports import pdf_text
from web.clinical.models import AuditEvent, Patient, Report, ReportTemplate, SignedReportChanged, Study

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
SEEDED = importlib.import_module("web.clinical.migrations.0016_report_fields_and_templates").DEFAULT_TEMPLATES
CHEST_FINDINGS = "Heart size normal. Mediastinal contours normal. Lungs clear."


def seed_templates() -> dict[str, ReportTemplate]:
    """The templates the migration seeds (a transactional test's flush may have removed them)."""
    for fields in SEEDED:
        ReportTemplate.objects.get_or_create(name=fields["name"], defaults=fields)
    return {t.region: t for t in ReportTemplate.objects.filter(name__in=[f["name"] for f in SEEDED])}


def make_study(body_part: str = "CHEST", n: int = 1) -> Study:
    patient = Patient.objects.create(patient_id=f"MRN-FIELDS-{n}", name="Fields^Fiona")
    return Study.objects.create(
        patient=patient, study_instance_uid=f"1.2.826.0.1.3680043.10.999.{n}", body_part=body_part
    )


def save(api, study: Study, **body):
    return api.post(f"/api/studies/{study.pk}/reports/", {"impression": "", **body}, format="json")


def test_the_three_fields_round_trip_through_the_api_and_one_left_out_stays(api) -> None:
    study = make_study()
    saved = save(
        api,
        study,
        clinical_information="Cough and fever for 3 days.",
        findings="Patchy opacity, right lower zone.",
        impression="Right lower lobe pneumonia.",
    )
    assert saved.status_code == 200, saved.content
    expected = {
        "clinical_information": "Cough and fever for 3 days.",
        "findings": "Patchy opacity, right lower zone.",
        "impression": "Right lower lobe pneumonia.",
    }
    assert {k: saved.json()[k] for k in expected} == expected
    # Left out, the findings and the clinical information stay as the draft had them.
    edited = save(api, study, impression="Right lower lobe pneumonia. Follow-up in 6 weeks.")
    versions = api.get(f"/api/studies/{study.pk}/reports/").json()
    assert edited.status_code == 200 and len(versions) == 1
    assert versions[0]["findings"] == "Patchy opacity, right lower zone."
    assert versions[0]["clinical_information"] == "Cough and fever for 3 days."
    assert versions[0]["impression"] == "Right lower lobe pneumonia. Follow-up in 6 weeks."
    too_long = save(api, study, findings="x" * 20_001)
    assert too_long.status_code == 400 and "findings" in too_long.json()["detail"]


def test_a_signed_version_refuses_a_change_of_any_field_and_a_later_one_is_an_addendum(api) -> None:
    study = make_study()
    draft = save(api, study, clinical_information="Fall.", findings="No fracture.", impression="Normal.")
    assert api.post(f"/api/reports/{draft.json()['id']}/sign/").status_code == 200

    for field in ("clinical_information", "findings", "impression", "template_name", "critical_told_to"):
        report = Report.objects.get(pk=draft.json()["id"])
        setattr(report, field, "Tampered.")
        with pytest.raises(SignedReportChanged, match=field):
            report.save()
    report = Report.objects.get(pk=draft.json()["id"])
    report.critical_acknowledged = True  # who was told, and whether they read it back, stay as signed
    with pytest.raises(SignedReportChanged, match="critical_acknowledged"):
        report.save()
    addendum = save(
        api, study, findings="Subtle fracture of the fifth metatarsal base.", impression="Fracture."
    )
    versions = api.get(f"/api/studies/{study.pk}/reports/").json()
    assert addendum.status_code == 200 and addendum.json()["is_addendum"] is True
    assert [(v["version"], v["state"], v["findings"]) for v in versions] == [
        (1, "signed", "No fracture."),
        (2, "draft", "Subtle fracture of the fifth metatarsal base."),
    ]


def test_a_report_with_findings_but_no_impression_is_not_signed(api) -> None:
    study = make_study()
    draft = save(api, study, findings="Lungs clear.")
    refused = api.post(f"/api/reports/{draft.json()['id']}/sign/")
    assert refused.status_code == 400 and "impression is empty" in refused.json()["error"]
    assert Report.objects.get(pk=draft.json()["id"]).state == Report.State.DRAFT


def test_only_admins_edit_report_templates_and_each_edit_is_audited(
    admin_client, client, api, django_user_model
) -> None:
    added = admin_client.post(
        "/admin/clinical/reporttemplate/add/",
        {
            "name": "Chest X-ray, post line insertion",
            "region": "chest",
            "clinical_information": "Central line placed.",
            "findings": "Right internal jugular line, tip at the cavoatrial junction. No pneumothorax.",
            "impression": "Line in a satisfactory position.",
            "active": "on",
        },
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    template = ReportTemplate.objects.get(name="Chest X-ray, post line insertion")
    assert template.updated_by is not None and template.updated_by.get_username() == "admin"
    event = AuditEvent.objects.get(action="report_template.add")
    assert event.actor_label == "admin" and event.detail["name"] == template.name

    changed = admin_client.post(
        f"/admin/clinical/reporttemplate/{template.pk}/change/",
        {
            "name": template.name,
            "region": "chest",
            "findings": "No pneumothorax.",
            "impression": "Satisfactory.",
        },
    )
    assert changed.status_code == 302
    template.refresh_from_db()
    assert template.findings == "No pneumothorax." and template.active is False  # unticked: not offered
    assert AuditEvent.objects.filter(action="report_template.change", object_id=str(template.pk)).exists()
    assert template.pk not in [t["id"] for t in api.get("/api/report-templates/").json()]

    # A radiologist and a technologist cannot reach the admin; the API only reads templates.
    tech = with_role(django_user_model.objects.create_user("tech.tia", password="pw-tech-1"), "technologist")
    client.force_login(tech)
    assert client.get("/admin/clinical/reporttemplate/").status_code == 302
    assert client.get("/api/report-templates/").status_code == 403
    radiologist_admin = api.get("/admin/clinical/reporttemplate/add/")
    assert radiologist_admin.status_code == 302 and "/admin/login/" in radiologist_admin["Location"]
    assert api.post("/api/report-templates/", {"name": "mine"}, format="json").status_code == 405
    deleted = admin_client.post(f"/admin/clinical/reporttemplate/{template.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302 and not ReportTemplate.objects.filter(pk=template.pk).exists()
    assert AuditEvent.objects.filter(action="report_template.delete", detail__name=template.name).exists()


@pytest.mark.parametrize(
    ("body_part", "region"), [("CHEST", "chest"), ("KNEE", "knee"), ("HAND", "limb"), ("SKULL", "")]
)
def test_the_templates_of_the_study_body_region_come_first(api, body_part: str, region: str) -> None:
    seeded = seed_templates()
    ReportTemplate.objects.create(name="Any study, technically limited", impression="Limited study.")
    ReportTemplate.objects.create(name="Chest, retired wording", region="chest", active=False)
    study = make_study(body_part)

    offered = api.get(f"/api/report-templates/?study={study.pk}").json()

    names = [t["name"] for t in offered]
    assert "Chest, retired wording" not in names  # inactive: not offered
    assert set(seeded[r].name for r in ("chest", "knee", "limb")) <= set(names)
    if region:
        assert names[0] == seeded[region].name and offered[0]["for_this_region"] is True
        assert names[1] == "Any study, technically limited"
    else:
        assert names[0] == "Any study, technically limited"
    assert [t["for_this_region"] for t in offered].count(True) == (1 if region else 0)


def test_a_template_fills_the_empty_fields_keeps_what_was_written_and_the_audit_row_says_which(api) -> None:
    chest = seed_templates()["chest"]
    study = make_study()

    applied = save(
        api, study, clinical_information="Shortness of breath.", findings="", impression="", template=chest.pk
    )

    assert applied.status_code == 200, applied.content
    report = applied.json()
    assert report["clinical_information"] == "Shortness of breath."  # the template has none
    assert (
        report["findings"].startswith(CHEST_FINDINGS)
        and "No pleural effusion or pneumothorax." in report["findings"]
    )
    assert report["impression"] == "No acute cardiopulmonary abnormality."
    assert report["template_name"] == "Chest X-ray, normal"
    audit = AuditEvent.objects.filter(action="report.draft", study=study).latest("at")
    assert audit.detail["template"] == "Chest X-ray, normal"
    assert audit.detail["template_filled"] == ["findings", "impression"]

    # Text already written stays unless the radiologist confirmed replacing it.
    kept = save(api, study, findings="Small left effusion.", impression="Effusion.", template=chest.pk).json()
    assert (kept["findings"], kept["impression"]) == ("Small left effusion.", "Effusion.")
    replaced = save(
        api, study, findings="Small left effusion.", impression="", template=chest.pk, template_replace=True
    ).json()
    assert replaced["findings"].startswith(CHEST_FINDINGS)
    assert AuditEvent.objects.filter(action="report.draft", study=study).latest("at").detail[
        "template_filled"
    ] == [
        "findings",
        "impression",
    ]
    # A template no longer offered is refused, and the draft stays as it was.
    chest.active = False
    chest.save()
    refused = save(api, study, findings="Changed.", template=chest.pk)
    assert refused.status_code == 400 and "no longer offered" in refused.json()["error"]
    assert Report.objects.get(pk=report["id"]).findings.startswith(CHEST_FINDINGS)
    # Saved without a template, the version keeps the name of the one last applied.
    assert save(api, study, impression="Normal.").json()["template_name"] == "Chest X-ray, normal"


def test_the_pdf_prints_each_field_under_its_heading_and_leaves_out_empty_ones(api, tmp_path) -> None:
    study = make_study()
    first = save(
        api,
        study,
        clinical_information="Fever, productive cough.",
        findings="Consolidation in the right lower lobe.",
        impression="Right lower lobe pneumonia.",
    )
    assert api.post(f"/api/reports/{first.json()['id']}/sign/").status_code == 200
    path = tmp_path / "signed.pdf"
    path.write_bytes(b"".join(api.get(f"/api/reports/{first.json()['id']}/pdf/").streaming_content))
    text = " ".join(pdf_text(path).split())
    clinical, findings, impression = (
        text.index("Clinical information Fever, productive cough."),
        text.index("Findings Consolidation in the right lower lobe."),
        text.index("Impression Right lower lobe pneumonia."),
    )
    assert clinical < findings < impression < text.index("Signed by dr.house on")

    # An addendum with an impression only: no empty headings; the signed version's fields above.
    addendum = save(api, study, clinical_information="", findings="", impression="Follow-up advised.")
    path = tmp_path / "addendum.pdf"
    path.write_bytes(b"".join(api.get(f"/api/reports/{addendum.json()['id']}/pdf/").streaming_content))
    text = " ".join(pdf_text(path).split())
    earlier = text[text.index("Report, version 1") :]
    assert earlier.index("Clinical information Fever, productive cough.") < earlier.index(
        "Findings Consolidation in the right lower lobe."
    )
    closing = text[text.index("Findings Consolidation in the right lower lobe.") :]
    assert "Impression Follow-up advised." in closing
    assert closing.count("Clinical information") == 0 and closing.count("Findings") == 1


def test_a_pdf_rendered_before_reports_had_fields_is_still_current(api) -> None:
    """A signed PDF is never rendered again: a version without clinical information or findings
    keeps the text hash it was rendered under."""
    from web.clinical.reporting.reports import report_text_hash

    study = make_study()
    report = Report.objects.get(pk=save(api, study, impression="Normal chest.").json()["id"])
    before = "|".join([report.impression, report.state, "", "", "", "", "", "", "False"])
    assert report_text_hash(report) == hashlib.sha256(before.encode()).hexdigest()
    report.findings = "Lungs clear."
    assert report_text_hash(report) != hashlib.sha256(before.encode()).hexdigest()


@pytest.mark.slow
def test_a_fresh_sqlite_database_gets_the_fields_the_templates_and_keeps_the_study_state_guard(
    tmp_path,
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'radtriage.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "web.settings",
        "DEBUG": "1",
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    check = """
import django
django.setup()
from django.db import IntegrityError, connection, transaction
from web.clinical.models import Patient, ReportTemplate, Study
names = sorted(ReportTemplate.objects.values_list("name", flat=True))
study = Study.objects.create(patient=Patient.objects.create(patient_id="P"), study_instance_uid="1.2")
try:
    with transaction.atomic():
        Study.objects.filter(pk=study.pk).update(status="reported")
    guard = "missing"
except IntegrityError:
    guard = "kept"
table = connection.introspection.get_table_description(connection.cursor(), "clinical_report")
columns = [c.name for c in table]
print(names, guard, "findings" in columns and "clinical_information" in columns)
"""
    out = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == (
        "['Chest X-ray, normal', 'Extremity X-ray, normal', 'Knee X-ray, normal'] kept True"
    )


def test_a_take_over_keeps_the_first_authors_findings_in_the_audit_row(api, django_user_model) -> None:
    from rest_framework.test import APIClient

    study = make_study()
    save(api, study, clinical_information="Trauma.", findings="Rib fracture, left 7th.", impression="")
    colleague = APIClient()
    colleague.force_login(
        with_role(django_user_model.objects.create_user("dr.chen", password="pw-chen-1"), "radiologist")
    )

    assert colleague.post(f"/api/studies/{study.pk}/take-over/", {}, format="json").status_code == 200

    detail = AuditEvent.objects.get(study=study, action="study.take_over").detail
    assert detail["draft_clinical_information"] == "Trauma."
    assert detail["draft_findings"] == "Rib fracture, left 7th."
