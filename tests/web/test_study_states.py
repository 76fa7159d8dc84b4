"""The study's state machine (web.clinical.worklist.states): every allowed and every refused
move of its table, audited and announced on the real Redis channel layer; "reported" only by
signing a report (the service and the database refuse it otherwise); "mark reviewed" is
reviewed; release goes back to the AI's state; an overnight batch's studies are scheduled until
the night window starts them."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from tests.web.fixtures import dicom_bytes, with_role
from web.clinical.events import WORKLIST_GROUP, events_flush
from web.clinical.models import Analysis, AuditEvent, Batch, Image, Patient, Report, Study
from web.clinical.worklist.states import StudyTransitionRefused, studies_refresh, study_transition

STATES = [s.value for s in Study.Status]
AI = ["received", "analysing", "scheduled", "ai_complete"]

# The table, written out: every move the product allows (anything else is refused).
ALLOWED = {
    # the AI's states follow the analyses (never back to received on their own)
    ("received", "analysing"),
    ("received", "scheduled"),
    ("received", "ai_complete"),
    ("analysing", "scheduled"),
    ("analysing", "ai_complete"),
    ("scheduled", "analysing"),
    ("scheduled", "ai_complete"),
    ("ai_complete", "analysing"),
    ("ai_complete", "scheduled"),
    # its holder opens it (or begins a report) / releases it
    *((a, "in_review") for a in AI),
    *(("in_review", a) for a in AI),
    # its holder has read it: no report here
    *((a, "reviewed") for a in [*AI, "in_review"]),
    # only by signing a report
    *((a, "reported") for a in [*AI, "in_review", "reviewed"]),
}
# What the refusal says, by the move refused.
REFUSAL_SAYS = {
    "reported": "a signed report is final",
    "reviewed": "only signing a report moves it on",
    "to received": "only releasing a study in review with no analyses makes it received again",
}
MOVES = [(a, b) for a, b in itertools.permutations(STATES, 2)]
_seq = itertools.count(1)


def make_study(status: str = "received", *, signed_by: Any = None, mrn: str = "") -> Study:
    """A study with one image, stored in `status`; with a signed report when `signed_by` is
    given (the database refuses a reported study without one)."""
    n = next(_seq)
    patient, _ = Patient.objects.get_or_create(patient_id=mrn or f"MRN-ST-{n}", defaults={"name": "Doe^Jo"})
    study = Study.objects.create(
        patient=patient,
        study_instance_uid=f"1.2.826.0.9.{n}",
        body_part="CHEST",
        status="reviewed" if status == "reported" else status,
    )
    Image.objects.create(
        study=study,
        sop_instance_uid=f"1.2.826.0.8.{n}",
        file=f"images/s{n}.png",
        format="png",
        size_bytes=10,
        sha256=f"{n:064x}",
        width=8,
        height=8,
    )
    if signed_by is not None:
        Report.objects.create(
            study=study,
            version=1,
            author=signed_by,
            impression="Signed words.",
            state=Report.State.SIGNED,
            signed_by=signed_by,
            signed_at=timezone.now(),
        )
    if status == "reported":
        Study.objects.filter(pk=study.pk).update(status="reported")
        study.status = "reported"
    return study


def analysis_on(study: Study, state: str = "succeeded", **fields: Any) -> Analysis:
    return Analysis.objects.create(
        image=study.images.get(), condition="pneumonia", state=state, threshold=0.5, **fields
    )


class WorklistSpy:
    """A channel of our own in the worklist group of the real channel layer: what every open
    worklist receives."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel = async_to_sync(self.layer.new_channel)()
        async_to_sync(self.layer.group_add)(WORKLIST_GROUP, self.channel)

    def study_events(self, count: int, timeout: float = 5) -> list[dict[str, Any]]:
        async def take() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            while len(found) < count:
                message = await asyncio.wait_for(self.layer.receive(self.channel), timeout)
                found += [m for m in message.get("events", [message]) if m["type"] == "study.event"]
            return found

        return async_to_sync(take)()

    def close(self) -> None:
        async_to_sync(self.layer.group_discard)(WORKLIST_GROUP, self.channel)


@pytest.fixture()
def spy() -> Any:
    listener = WorklistSpy()
    yield listener
    listener.close()


@pytest.fixture()
def rossi(db: Any, django_user_model: Any) -> Any:
    return with_role(django_user_model.objects.create_user("dr.rossi", password="pw-rossi"), "radiologist")


def as_api(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


# --------------------------------------------------------------------------- the table


def test_the_table_has_every_pair_of_states_once() -> None:
    assert len(MOVES) == 42 and len(ALLOWED) == 28 and set(MOVES) >= ALLOWED


@pytest.mark.parametrize("current,wanted", sorted(ALLOWED), ids=lambda s: s)
def test_an_allowed_move_is_made_audited_and_announced(
    current: str, wanted: str, rossi, spy, django_capture_on_commit_callbacks
) -> None:
    study = make_study(current, signed_by=rossi if "reported" in (current, wanted) else None)

    with django_capture_on_commit_callbacks(execute=True):
        moved = study_transition(study=study, to=wanted, actor=rossi, reason="a test", ip_address="10.0.0.9")

    assert moved and Study.objects.get(pk=study.pk).status == wanted
    audit = AuditEvent.objects.get(study=study, action="study.status")
    assert audit.actor_label == "dr.rossi" and audit.ip_address == "10.0.0.9"
    assert audit.detail == {"from": current, "to": wanted, "why": "a test"}
    [event] = spy.study_events(1)
    assert event["study"] == {"id": study.pk, "status": wanted, "assigned_radiologist": None}


@pytest.mark.parametrize("current,wanted", sorted(set(MOVES) - ALLOWED), ids=lambda s: s)
def test_a_refused_move_says_why_and_changes_nothing(current: str, wanted: str, rossi) -> None:
    study = make_study(current, signed_by=rossi)  # a signed report: only the table can refuse

    with pytest.raises(StudyTransitionRefused) as refused:
        study_transition(study=study, to=wanted, actor=rossi)

    said = str(refused.value)
    assert said.startswith("This study is ") and "cannot become" in said
    key = current if current in ("reported", "reviewed") else f"to {wanted}"
    assert REFUSAL_SAYS[key] in said
    assert Study.objects.get(pk=study.pk).status == current
    assert not AuditEvent.objects.filter(study=study, action="study.status").exists()


def test_the_same_state_again_is_no_move(rossi) -> None:
    study = make_study("in_review")

    assert study_transition(study=study, to="in_review", actor=rossi) is False
    assert not AuditEvent.objects.filter(study=study).exists()


# --------------------------------------------------------------------------- reported


def test_reported_without_a_signed_report_is_refused_by_the_service_and_the_database(rossi) -> None:
    study = make_study("in_review")
    Report.objects.create(study=study, version=1, author=rossi, impression="Only a draft.")

    with pytest.raises(StudyTransitionRefused, match="no signed report"):
        study_transition(study=study, to="reported", actor=rossi)
    with pytest.raises(IntegrityError, match="reported only by signing"), transaction.atomic():
        Study.objects.filter(pk=study.pk).update(status="reported")
    with pytest.raises(IntegrityError, match="reported only by signing"), transaction.atomic():
        study.status = "reported"
        study.save()
    with pytest.raises(IntegrityError, match="reported only by signing"), transaction.atomic():
        Study.objects.create(patient=study.patient, study_instance_uid="1.2.826.0.7.1", status="reported")
    assert Study.objects.get(pk=study.pk).status == "in_review"


def test_mark_reviewed_is_reviewed_and_only_signing_reports_it(rossi) -> None:
    study = make_study("ai_complete")
    analysis_on(study, probability=0.9, positive=True)
    api = as_api(rossi)
    api.post(f"/api/studies/{study.pk}/claim/")
    api.get(f"/studies/{study.pk}/")  # the holder opens it: in review
    assert Study.objects.get(pk=study.pk).status == "in_review"

    reviewed = api.post(f"/api/studies/{study.pk}/reviewed/")
    assert reviewed.status_code == 200 and reviewed.json()["status"] == "reviewed"
    assert Study.objects.get(pk=study.pk).status == "reviewed"
    assert not Report.objects.filter(study=study).exists()

    draft = api.post(
        f"/api/studies/{study.pk}/reports/", {"impression": "No focal consolidation."}, format="json"
    )
    assert Study.objects.get(pk=study.pk).status == "reviewed"  # a draft is not a report
    signed = api.post(f"/api/reports/{draft.json()['id']}/sign/")
    assert signed.status_code == 200
    assert Study.objects.get(pk=study.pk).status == "reported"
    moves = list(
        AuditEvent.objects.filter(study=study, action="study.status")
        .order_by("at", "id")
        .values_list("detail__from", "detail__to")
    )
    assert moves == [("ai_complete", "in_review"), ("in_review", "reviewed"), ("reviewed", "reported")]


def test_the_holder_of_a_reported_study_is_offered_no_release(rossi) -> None:
    """Release gives a study back to the worklist to be read; a reported study has been read."""
    study = make_study("ai_complete", mrn="MRN-NO-RELEASE")
    analysis_on(study, probability=0.2, positive=False)
    api = as_api(rossi)
    api.post(f"/api/studies/{study.pk}/claim/")

    def buttons() -> tuple[bool, bool]:
        page = api.get(f"/studies/{study.pk}/").content.decode()
        row = api.get("/").content.decode()
        row = row[row.index(f'data-study-id="{study.pk}"') :].split("</tr>")[0]
        return 'data-action="release"' in page, 'data-action="release"' in row

    assert buttons() == (True, True)
    draft = api.post(f"/api/studies/{study.pk}/reports/", {"impression": "Normal."}, format="json")
    assert api.post(f"/api/reports/{draft.json()['id']}/sign/").status_code == 200
    assert buttons() == (False, False)


def test_a_reported_study_cannot_be_marked_reviewed_the_api_says_why(rossi) -> None:
    study = make_study("reported", signed_by=rossi)
    Study.objects.filter(pk=study.pk).update(assigned_radiologist=rossi)

    answer = as_api(rossi).post(f"/api/studies/{study.pk}/reviewed/")

    assert answer.status_code == 409
    assert "reported" in answer.json()["error"] and "a signed report is final" in answer.json()["error"]
    assert Study.objects.get(pk=study.pk).status == "reported"


# --------------------------------------------------------------------------- the AI's states


def test_release_from_review_goes_back_to_what_the_analyses_say(rossi) -> None:
    study = make_study("ai_complete")
    analysis_on(study, probability=0.2, positive=False)
    api = as_api(rossi)
    api.post(f"/api/studies/{study.pk}/claim/")
    api.get(f"/studies/{study.pk}/")
    analysis_on(study, state="queued")  # a re-run asked for while it was in review

    released = api.post(f"/api/studies/{study.pk}/release/")

    assert released.status_code == 200 and released.json()["status"] == "analysing"
    last = AuditEvent.objects.filter(study=study, action="study.status").latest("id")
    assert last.detail["from"] == "in_review" and last.detail["to"] == "analysing"


def test_analyses_ending_move_only_studies_nobody_has_taken_up(
    rossi, spy, django_capture_on_commit_callbacks
) -> None:
    waiting = make_study("analysing")
    in_review = make_study("in_review")
    for study in (waiting, in_review):
        analysis_on(study, probability=0.9, positive=True, applicable=True)

    with django_capture_on_commit_callbacks(execute=True):
        studies_refresh(studies=[waiting, in_review])
    assert events_flush(5)

    assert Study.objects.get(pk=waiting.pk).status == "ai_complete"
    assert Study.objects.get(pk=in_review.pk).status == "in_review"  # a radiologist's, kept
    audit = AuditEvent.objects.get(study=waiting, action="study.status")
    assert audit.actor_label == "system" and audit.detail["to"] == "ai_complete"
    assert not AuditEvent.objects.filter(study=in_review).exists()
    [event] = spy.study_events(1)
    assert event["study"]["id"] == waiting.pk and event["event"] == "ai_complete"


def test_an_overnight_batch_is_scheduled_until_the_night_window_starts_it(
    db, rossi, private_redis, broker_switch, settings, tmp_path
) -> None:
    from web.clinical.batches.batches import batch_import, batches_start_due
    from web.clinical.ingest.archive_safety import FolderFiles

    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")  # jobs parked, no worker reads them
    settings.TIME_ZONE = "Europe/Paris"
    settings.RADTRIAGE_NIGHT_WINDOW = "01:00-06:00"
    for i in range(2):
        (tmp_path / f"{i}.dcm").write_bytes(dicom_bytes(patient_id=f"MRN-NIGHT{i}", seed=80 + i))
    with FolderFiles(tmp_path) as files:
        batch = batch_import(
            files=files, source=Batch.Source.FOLDER, conditions=["pneumonia"], overnight=True
        )
    studies = Study.objects.filter(images__analyses__batch=batch).distinct()

    assert sorted(studies.values_list("status", flat=True)) == ["scheduled", "scheduled"]
    rows = as_api(rossi).get("/api/studies/", {"batch": batch.pk}).json()["results"]
    assert [r["status"] for r in rows] == ["scheduled", "scheduled"]
    page = as_api(rossi).get("/", {"batch": batch.pk}).content.decode()
    rows = page.split("<tr data-study-id=")[1:]
    assert len(rows) == 2
    for row in rows:
        row = row.split("</tr>")[0]
        assert "AI scheduled (night window)" in row and "AI waits for the night window" in row
        assert "AI analysing" not in row and "AI working" not in row

    paris = ZoneInfo("Europe/Paris")
    assert batches_start_due(now=dt.datetime(2026, 12, 1, 20, 0, tzinfo=paris)) == []  # the evening
    assert sorted(studies.values_list("status", flat=True)) == ["scheduled", "scheduled"]
    assert batches_start_due(now=dt.datetime(2026, 12, 2, 1, 5, tzinfo=paris)) == [batch.pk]
    assert sorted(studies.values_list("status", flat=True)) == ["analysing", "analysing"]
    moves = AuditEvent.objects.filter(action="study.status", study__in=studies, actor_label="system")
    assert sorted(moves.values_list("detail__from", "detail__to")) == [
        ("analysing", "scheduled"),
        ("analysing", "scheduled"),
        ("scheduled", "analysing"),
        ("scheduled", "analysing"),
    ]


# --------------------------------------------------------------------------- the migration


@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_a_reported_study_without_a_signed_report_reviewed(django_user_model) -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    before = [("clinical", "0011_reports")]
    after = executor.loader.graph.leaf_nodes("clinical")  # back to where the suite runs
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        patient = old.get_model("clinical", "Patient").objects.create(patient_id="MRN-MIG")
        studies = old.get_model("clinical", "Study").objects
        marked = studies.create(patient=patient, study_instance_uid="1.2.9.1", status="reported")
        author = old.get_model("auth", "User").objects.create(username="dr.old")
        signed = studies.create(patient=patient, study_instance_uid="1.2.9.2", status="reported")
        old.get_model("clinical", "Report").objects.create(
            study=signed, version=1, author=author, impression="x", state="signed"
        )
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(after)

    assert Study.objects.get(pk=marked.pk).status == "reviewed"  # what happened: read, no report
    assert Study.objects.get(pk=signed.pk).status == "reported"
    audit = AuditEvent.objects.get(study_id=marked.pk, action="study.status")
    assert audit.actor_label == "system" and (audit.detail["from"], audit.detail["to"]) == (
        "reported",
        "reviewed",
    )


def test_the_admin_cannot_edit_a_studys_state_or_holder(db, django_user_model) -> None:
    admin = with_role(django_user_model.objects.create_user("ada.admin", password="pw-admin"), "admin")
    study = make_study("ai_complete")

    page = as_api(admin).get(f"/admin/clinical/study/{study.pk}/change/").content.decode()

    assert page.count('name="status"') == 0 and 'name="assigned_radiologist"' not in page
    assert "AI complete" in page  # shown, read only
