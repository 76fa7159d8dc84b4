"""The audit log has one entry per thing a person does, not one per request a page makes."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from tests.web.fixtures import dicom_bytes, png_bytes, upload, with_role
from web.clinical.audit.records import audit_record
from web.clinical.models import Analysis, AuditEvent, AuditLogIsAppendOnly, Patient, Study

pytestmark = pytest.mark.django_db


@pytest.fixture()
def study(api) -> dict:
    body = upload(api, dicom_bytes(patient_id="MRN-AUDIT")).json()
    analysis = Analysis.objects.filter(image_id=body["image"]["id"]).first()
    analysis.heatmap_raw.save("heat.png", ContentFile(png_bytes(size=32)), save=False)
    analysis.state = Analysis.State.SUCCEEDED
    analysis.save()
    return {"id": body["study"]["id"], "analysis": analysis.pk}


def views(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


def test_opening_a_study_page_writes_one_entry(api, study) -> None:
    # What the browser does: the page, then the page's script refreshing the study from the API.
    assert api.get(f"/studies/{study['id']}/").status_code == 200
    assert api.get(f"/api/studies/{study['id']}/").status_code == 200

    [event] = views("study.view")
    assert event.actor_label == "dr.house" and event.patient.patient_id == "MRN-AUDIT"


def test_showing_a_heat_map_writes_one_entry_and_a_download_another(api, study) -> None:
    url = f"/api/analyses/{study['analysis']}/heatmap/"
    # The page's heat-map layer, then the same layer redrawn by the page's script.
    assert api.get(url, {"kind": "raw"}).status_code == 200
    assert api.get(url, {"kind": "raw", "v": "2026-12-01T09:00:00Z"}).status_code == 200
    assert [e.detail for e in views("heatmap.download")] == [{"kind": "raw"}]

    # Opening the full-resolution overlay is another action: another entry.
    api.get(url, {"kind": "color"})
    assert sorted(e.detail["kind"] for e in views("heatmap.download")) == ["color", "raw"]


def test_another_person_viewing_the_same_study_gets_their_own_entry(api, study, django_user_model) -> None:
    api.get(f"/api/studies/{study['id']}/")
    colleague = with_role(
        django_user_model.objects.create_user("dr.cuddy", password="pw-cuddy-1"), "radiologist"
    )
    other = APIClient()
    other.force_login(colleague)
    other.get(f"/api/studies/{study['id']}/")

    assert sorted(e.actor_label for e in views("study.view")) == ["dr.cuddy", "dr.house"]


def test_viewing_again_later_is_a_new_entry(api, study, settings) -> None:
    settings.RADTRIAGE_AUDIT_REPEAT_SECONDS = 0  # every read is its own action
    api.get(f"/studies/{study['id']}/")
    api.get(f"/studies/{study['id']}/")

    assert len(views("study.view")) == 2


# --------------------------------------------------------------------------- append-only, filters, CSV


@pytest.fixture()
def admins(django_user_model) -> dict[str, Client]:
    """An admin-group member and a superuser: neither may change the log."""
    clients = {}
    group_admin = with_role(django_user_model.objects.create_user("ada.admin", password="pw-ada-1"), "admin")
    superuser = django_user_model.objects.create_superuser("root", password="pw-root-1")
    for name, user in (("admin", group_admin), ("superuser", superuser)):
        client = Client()
        client.force_login(user)
        clients[name] = client
    return clients


@pytest.fixture()
def log(django_user_model) -> dict[str, AuditEvent]:
    """Rows from two people about two patients, on three days."""
    house = django_user_model.objects.create_user("dr.wilson", password="pw-wilson-1")
    cuddy = django_user_model.objects.create_user("dr.foreman", password="pw-foreman-1")
    ann = Patient.objects.create(patient_id="MRN-ANN")
    bob = Patient.objects.create(patient_id="MRN-BOB")
    ann_study = Study.objects.create(patient=ann, study_instance_uid="1.2.840.1", accession_number="ACC-ANN")
    bob_study = Study.objects.create(patient=bob, study_instance_uid="1.2.840.2", accession_number="ACC-BOB")
    rows = {
        "house_ann_old": audit_record(actor=house, action="study.view", patient=ann, study=ann_study),
        "cuddy_bob_mid": audit_record(actor=cuddy, action="study.view", patient=bob, study=bob_study),
        "house_bob_new": audit_record(
            actor=house, action="report.sign", patient=bob, study=bob_study, detail={"note": "signed"}
        ),
    }
    # Backdate two rows (raw SQL: the application itself can never change a row).
    with connection.cursor() as cursor:
        for key, day in (("house_ann_old", "2026-03-01 10:00+00"), ("cuddy_bob_mid", "2026-06-15 10:00+00")):
            cursor.execute("UPDATE clinical_auditevent SET at = %s WHERE id = %s", [day, rows[key].pk])
    return rows


def exported(client: Client, query: str = "") -> list[dict[str, str]]:
    response = client.get(f"/admin/audit/export.csv{query}")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize("who", ["admin", "superuser"])
def test_no_one_can_change_or_delete_an_audit_entry_in_the_admin(admins, log, who) -> None:
    client = admins[who]
    event = log["house_ann_old"]
    page = client.get(f"/admin/clinical/auditevent/{event.pk}/change/")
    assert page.status_code == 200  # readable...
    body = page.content.decode()
    assert 'name="_save"' not in body and "/delete/" not in body  # ...but no Save, no Delete
    assert client.post(f"/admin/clinical/auditevent/{event.pk}/change/", {"action": "x"}).status_code == 403
    assert client.get(f"/admin/clinical/auditevent/{event.pk}/delete/").status_code == 403
    assert client.post(f"/admin/clinical/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    listing = client.get("/admin/clinical/auditevent/")
    assert "delete_selected" not in listing.content.decode()
    bulk = client.post(
        "/admin/clinical/auditevent/",
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    assert client.get("/admin/clinical/auditevent/add/").status_code == 403

    event.refresh_from_db()
    assert event.action == "study.view" and AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_application_cannot_change_or_delete_an_audit_entry(log) -> None:
    event = log["house_ann_old"]
    event.action = "nothing.happened"
    with pytest.raises(AuditLogIsAppendOnly):
        event.save()
    with pytest.raises(AuditLogIsAppendOnly):
        event.delete()
    with pytest.raises(AuditLogIsAppendOnly):
        AuditEvent.objects.filter(pk=event.pk).update(action="nothing.happened")
    with pytest.raises(AuditLogIsAppendOnly):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "study.view"


def test_no_api_endpoint_exposes_the_audit_log(api, log) -> None:
    for method in ("get", "delete", "patch"):
        assert getattr(api, method)("/api/audit/").status_code == 404
        assert getattr(api, method)(f"/api/audit-events/{log['house_ann_old'].pk}/").status_code == 404


def listed(client: Client, query: str) -> set[int]:
    response = client.get(f"/admin/clinical/auditevent/{query}")
    assert response.status_code == 200
    return {event.pk for event in response.context["cl"].result_list}


def test_admins_filter_the_log_by_user_action_patient_study_and_dates(admins, log) -> None:
    client = admins["admin"]
    ids = {key: event.pk for key, event in log.items()}
    assert listed(client, "?user=dr.wilson") == {ids["house_ann_old"], ids["house_bob_new"]}
    assert listed(client, "?action=report.sign") == {ids["house_bob_new"]}
    assert listed(client, "?patient=MRN-BOB") == {ids["cuddy_bob_mid"], ids["house_bob_new"]}
    assert listed(client, "?study=ACC-ANN") == {ids["house_ann_old"]}
    assert listed(client, "?since=2026-03-02&until=2026-06-30") == {ids["cuddy_bob_mid"]}
    assert listed(client, "?user=dr.wilson&patient=MRN-BOB") == {ids["house_bob_new"]}
    page = client.get("/admin/clinical/auditevent/?patient=MRN-BOB").content.decode()
    # The filter boxes and an export link that carries the filters.
    assert 'name="user"' in page and 'type="date"' in page and 'name="since"' in page
    assert "/admin/audit/export.csv?patient=MRN-BOB" in page


def test_admins_export_the_filtered_log_as_csv(admins, log) -> None:
    client = admins["admin"]
    rows = exported(client, "?patient=MRN-BOB")
    assert [(r["user"], r["action"], r["patient_id"]) for r in rows] == [
        ("dr.wilson", "report.sign", "MRN-BOB"),
        ("dr.foreman", "study.view", "MRN-BOB"),
    ]
    assert rows[1]["at"].startswith("2026-06-15") and rows[1]["accession_number"] == "ACC-BOB"
    assert rows[0]["detail"] == '{"note": "signed"}'
    assert len(exported(client, "?since=2026-01-01&until=2026-12-31&user=dr.wilson")) == 2
    # The export is itself in the log, with what was asked for.
    exports = AuditEvent.objects.filter(action="audit.export").order_by("id")
    assert [(e.actor_label, e.detail["filters"], e.detail["rows"]) for e in exports][0] == (
        "ada.admin",
        {"patient": "MRN-BOB"},
        2,
    )


def test_a_cell_a_spreadsheet_would_run_as_a_formula_is_defused(admins, django_user_model) -> None:
    # Django usernames may start with + - @: "-2+3" would be computed by a spreadsheet.
    sly = django_user_model.objects.create_user("-2+3", password="pw-sly-1")
    audit_record(actor=sly, action="study.view")
    [row] = exported(admins["admin"], "?action=study.view")
    assert row["user"] == "'-2+3"


def test_a_bad_date_in_the_export_is_refused_with_the_reason(admins, log) -> None:
    response = admins["admin"].get("/admin/audit/export.csv?since=01/03/2026")
    assert response.status_code == 400 and "2026-12-01" in response.content.decode()


def test_a_radiologist_cannot_export_the_log(api, log) -> None:
    response = api.get("/admin/audit/export.csv")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert not AuditEvent.objects.filter(action="audit.export").exists()


def test_dates_are_whole_days_in_the_site_time_zone(admins, log) -> None:
    today = dt.date.today().isoformat()
    assert listed(admins["admin"], f"?since={today}&until={today}") == {log["house_bob_new"].pk}
