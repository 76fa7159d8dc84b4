"""Study reports: drafted and signed through the API and the page, rendered by WeasyPrint;
the PDF read back as a person would (pdftotext, pdftoppm), on PostgreSQL, with the tiny real
Keras model's results."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.output import TEST_OUTPUT
from tests.web.fixtures import dicom_bytes, upload, with_role
from web.clinical.models import Analysis, Annotation, AuditEvent, Report, SignedReportChanged, Study

pytestmark = pytest.mark.slow

OUTPUT = TEST_OUTPUT


def pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", str(path), "-"], check=True, capture_output=True, text=True).stdout


def keep_pages(path: Path, name: str) -> list[Path]:
    """PNG pages of the PDF, kept in the test output for a look."""
    folder = OUTPUT / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(path), str(folder / name)], check=True)
    shutil.copy(path, folder / f"{name}.pdf")
    return sorted(folder.glob(f"{name}-*.png"))


@pytest.fixture()
def reviewed_study(api, radiologist, private_redis, broker_switch, tiny_registry, settings) -> Study:
    """A chest DICOM analysed for pneumonia (tiny real model) and cardiomegaly (placeholder),
    with the radiologist's verdict on pneumonia and a rectangle drawn on the image."""
    from web.clinical.analysis.jobs import analyses_run

    with_role(radiologist, "radiologist")
    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")  # jobs parked; run here instead
    settings.RADTRIAGE_REGISTRY = tiny_registry
    response = upload(
        api,
        dicom_bytes(patient_id="MRN-REPORT-1", patient_name="Report^Rita"),
        conditions="pneumonia,cardiomegaly",
    )
    assert response.status_code == 201, response.content
    image_id = response.json()["image"]["id"]
    analyses_run(analysis_ids=list(Analysis.objects.filter(image_id=image_id).values_list("pk", flat=True)))
    pneumonia = Analysis.objects.get(image_id=image_id, condition="pneumonia")
    assert pneumonia.state == "succeeded" and pneumonia.heatmap_raw
    Annotation.objects.create(
        image_id=image_id, author=radiologist, analysis=pneumonia, verdict="disagree", note="Normal lungs"
    )
    Annotation.objects.create(
        image_id=image_id, author=radiologist, shapes=[{"type": "rect", "x": 20, "y": 20, "w": 30, "h": 40}]
    )
    return pneumonia.image.study


def test_a_signed_report_pdf_holds_what_the_radiologist_signed(api, reviewed_study, tmp_path) -> None:
    study = reviewed_study
    pneumonia = Analysis.objects.get(image__study=study, condition="pneumonia")

    draft = api.post(
        f"/api/studies/{study.pk}/reports/",
        {"impression": "No consolidation. Heart size normal."},
        format="json",
    )
    assert draft.status_code == 200, draft.content
    signed = api.post(f"/api/reports/{draft.json()['id']}/sign/")
    assert signed.status_code == 200 and signed.json()["state"] == "signed"
    pdf = api.get(signed.json()["pdf_url"])

    assert pdf.status_code == 200 and pdf["content-type"] == "application/pdf"
    path = tmp_path / "report.pdf"
    path.write_bytes(b"".join(pdf.streaming_content))
    text = " ".join(pdf_text(path).split())
    # The name as a person writes it (family, given), never the raw DICOM 'Report^Rita'.
    assert "MRN-REPORT-1" in text and "Report, Rita" in text and "^" not in text
    # The whole StudyInstanceUID, however the cell wraps it.
    assert study.study_instance_uid in "".join(text.split())
    # The annotations, with their notes and marks.
    notes = text[text.index("Annotations") :]
    assert "Pneumonia: Disagree" in notes and "Normal lungs" in notes and "1 mark: rect" in notes, notes[:400]
    assert "No consolidation. Heart size normal." in text
    # Each cell is read back (pdftotext gives a table's cells in reading order, not by row).
    assert f"Pneumonia {pneumonia.probability:.2f}" in text and f"{pneumonia.threshold:.2f}" in text
    assert f"pneumonia-tiny-test (sha256 {pneumonia.model_sha256[:12]})" in text
    assert "Disagree (dr.house): Normal lungs" in text
    assert "Cardiomegaly - " in text and "No AI result" in text  # the placeholder: no probability
    assert "PLACEHOLDER MODEL: NO DIAGNOSTIC VALUE" in text
    assert "Signed by dr.house on" in text
    assert "AI output supports and does not replace the radiologist's reading" in text
    assert "DRAFT" not in text
    pages = keep_pages(path, f"signed-study-{study.pk}")
    assert pages and all(p.stat().st_size > 5_000 for p in pages)
    study.refresh_from_db()
    assert study.status == Study.Status.REPORTED
    assert AuditEvent.objects.filter(action="report.sign", study=study).count() == 1


def test_no_page_holds_the_ai_statement_without_the_impression_it_closes(
    api, reviewed_study, tmp_path
) -> None:
    """Impressions of every length from one line to more than a page: the page with the AI
    statement also shows the signature line and the impression (all of a short one, the last
    lines of a long one), so the statement never sits alone on the last page."""
    from web.clinical.reporting.pdf import report_pdf_bytes

    study = reviewed_study
    checked_pages = set()
    for lines in range(1, 80, 6):
        impression = "\n".join(f"Line {n}: no acute cardiopulmonary abnormality." for n in range(lines))
        draft = api.post(f"/api/studies/{study.pk}/reports/", {"impression": impression}, format="json")
        assert draft.status_code == 200, draft.content
        path = tmp_path / f"report-{lines}.pdf"
        path.write_bytes(report_pdf_bytes(Report.objects.get(pk=draft.json()["id"])))
        pages = pdf_text(path).split("\f")
        last = [p for p in pages if p.strip()][-1]
        checked_pages.add(len([p for p in pages if p.strip()]))
        assert "AI output supports and does not replace" in last, lines
        assert "Drafted by" in last and "Line " in last, (lines, last)  # the impression's end
    assert len(checked_pages) >= 2  # the impressions did push the closing block onto a new page


def test_a_signed_report_cannot_change_and_a_later_change_is_an_addendum(
    api, reviewed_study, tmp_path
) -> None:
    study = reviewed_study
    first = api.post(f"/api/studies/{study.pk}/reports/", {"impression": "Original reading."}, format="json")
    api.post(f"/api/reports/{first.json()['id']}/sign/")

    again = api.post(f"/api/reports/{first.json()['id']}/sign/")
    assert again.status_code == 409 and "already signed" in again.json()["error"]
    report = Report.objects.get(pk=first.json()["id"])
    report.impression = "Tampered."
    with pytest.raises(SignedReportChanged):
        report.save()
    with pytest.raises(SignedReportChanged):
        Report.objects.get(pk=report.pk).delete()

    addendum = api.post(
        f"/api/studies/{study.pk}/reports/", {"impression": "Addendum: see CT."}, format="json"
    )
    assert addendum.json()["version"] == 2 and addendum.json()["is_addendum"] is True
    api.post(f"/api/reports/{addendum.json()['id']}/sign/")

    versions = api.get(f"/api/studies/{study.pk}/reports/").json()
    assert [(v["version"], v["state"], v["impression"]) for v in versions] == [
        (1, "signed", "Original reading."),
        (2, "signed", "Addendum: see CT."),
    ]
    out = tmp_path / "addendum.pdf"
    call_command("report", str(study.pk), "--out", str(out))
    text = " ".join(pdf_text(out).split())
    assert "addendum (version 2)" in text and "Original reading." in text and "Addendum: see CT." in text
    keep_pages(out, f"addendum-study-{study.pk}")


def test_a_draft_pdf_says_draft_and_only_radiologists_write_reports(
    api, reviewed_study, django_user_model, tmp_path
) -> None:
    from rest_framework.test import APIClient

    study = reviewed_study
    draft = api.post(f"/api/studies/{study.pk}/reports/", {"impression": "Working notes."}, format="json")
    out = tmp_path / "draft.pdf"
    call_command("report", str(study.pk), "--out", str(out))
    assert "DRAFT, NOT SIGNED" in pdf_text(out)

    technologist = django_user_model.objects.create_user("tech.tina", password="pw")
    with_role(technologist, "technologist")
    client = APIClient()
    client.force_login(technologist)
    assert (
        client.post(f"/api/studies/{study.pk}/reports/", {"impression": "x"}, format="json").status_code
        == 403
    )
    assert client.post(f"/api/reports/{draft.json()['id']}/sign/").status_code == 403
    assert client.get(f"/api/reports/{draft.json()['id']}/pdf/").status_code == 404  # drafts stay private
    assert Report.objects.get(pk=draft.json()["id"]).impression == "Working notes."


def test_report_command_says_clearly_when_there_is_nothing_to_render(db, tmp_path) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no study 999"):
        call_command("report", "999", "--out", str(tmp_path / "x.pdf"))


def test_the_render_job_stores_the_pdf_once_and_a_new_draft_replaces_it(api, reviewed_study) -> None:
    from web.clinical.reporting.reports import report_render

    draft = api.post(f"/api/studies/{reviewed_study.pk}/reports/", {"impression": "v1 text"}, format="json")
    first = report_render(report_id=draft.json()["id"])
    again = report_render(report_id=draft.json()["id"])
    assert first.pdf.name == again.pdf.name and first.pdf_sha256 == again.pdf_sha256

    api.post(f"/api/studies/{reviewed_study.pk}/reports/", {"impression": "v1 text, edited"}, format="json")
    edited = report_render(report_id=draft.json()["id"])
    assert edited.pdf.name != first.pdf.name and not Path(first.pdf.path).exists()


@pytest.mark.parametrize(
    ("dicom_name", "printed"),
    [
        ("Novak^Petra", "Novak, Petra"),
        ("Novak^Petra^Jana", "Novak, Petra Jana"),
        ("Novak^Petra^^Dr.^MD", "Novak, Dr. Petra, MD"),
        ("Novak", "Novak"),
        ("^Petra", "Petra"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou"),
        ("", "(no name)"),
    ],
)
def test_a_dicom_person_name_is_printed_family_comma_given(dicom_name: str, printed: str) -> None:
    from web.clinical.models import Patient

    assert Patient(name=dicom_name).formal_name == printed


def test_a_critical_result_is_signed_only_once_its_communication_is_recorded(
    api, reviewed_study, tmp_path
) -> None:
    study = reviewed_study
    url = f"/api/studies/{study.pk}/reports/"
    draft = api.post(
        url,
        {"impression": "Large right pneumothorax.", "critical_finding": "Tension pneumothorax, right"},
        format="json",
    )
    assert draft.status_code == 200, draft.content
    refused = api.post(f"/api/reports/{draft.json()['id']}/sign/")
    assert refused.status_code == 400 and "record who was told, how and when" in refused.json()["error"]
    # Saving the text alone keeps the critical result as it was.
    again = api.post(url, {"impression": "Large right pneumothorax with shift."}, format="json").json()
    assert again["critical_finding"] == "Tension pneumothorax, right"
    future = api.post(
        url,
        {"impression": "x", "critical_finding": "y", "critical_told_at": "2099-01-01T10:00:00Z"},
        format="json",
    )
    assert future.status_code == 400 and "future" in future.json()["error"]

    told = api.post(
        url,
        {
            "impression": "Large right pneumothorax with shift.",
            "critical_finding": "Tension pneumothorax, right",
            "critical_told_to": "Dr Kim, emergency department",
            "critical_told_how": "phone",
            "critical_told_at": "2026-11-25T10:42:00Z",
            "critical_acknowledged": True,
        },
        format="json",
    )
    assert told.status_code == 200, told.content
    signed = api.post(f"/api/reports/{told.json()['id']}/sign/")
    assert signed.status_code == 200, signed.content

    path = tmp_path / "critical.pdf"
    path.write_bytes(b"".join(api.get(signed.json()["pdf_url"]).streaming_content))
    text = " ".join(pdf_text(path).split())
    assert "Critical result: Tension pneumothorax, right." in text
    assert "Communicated to Dr Kim, emergency department by phone on 2026-11-25" in text
    assert "acknowledged (read back)" in text
    page = api.get(f"/studies/{study.pk}/").content.decode()
    assert (
        "Critical result:" in page
        and "told Dr Kim, emergency department by phone" in page
        and "acknowledged" in page
    )
    audit = AuditEvent.objects.filter(action="report.draft", study=study).order_by("pk").last()
    assert audit.detail["critical"] is True and audit.detail["told_to"] == "Dr Kim, emergency department"


def test_the_report_page_offers_the_ai_findings_with_their_models(api, reviewed_study) -> None:
    page = api.get(f"/studies/{reviewed_study.pk}/report/").content.decode()
    button = page[page.index('id="insert-ai"') :].split(">")[0]
    assert "Pneumonia: Positive (AI flag)" in button or "Pneumonia: Negative" in button
    assert "model pneumonia-tiny-test (sha256" in button
    assert "Cardiomegaly: No AI result (placeholder model)" in button
