"""Reports belong to people: the holder drafts, only the draft's author edits and signs, a
colleague is refused with the holder's name, taking over is explicit and audited, technologists
never read drafts, and signing reaches another radiologist's open worklist live."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient

from tests.web.fixtures import WS_ORIGIN, session_cookie_header, with_role
from tests.web.test_study_states import analysis_on, make_study
from web.asgi import application
from web.clinical.models import AuditEvent, Report, Study

ROSSI_WORDS = "Right lower lobe consolidation. Dr Rossi."
CHEN_WORDS = "Normal chest. Dr Chen."


def person(django_user_model: Any, username: str, role: str = "radiologist") -> Any:
    return with_role(django_user_model.objects.create_user(username, password=f"pw-{username}"), role)


def as_api(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture()
def people(db: Any, django_user_model: Any) -> dict[str, Any]:
    return {
        "rossi": person(django_user_model, "dr.rossi"),
        "chen": person(django_user_model, "dr.chen"),
        "tech": person(django_user_model, "tech.tara", "technologist"),
    }


@pytest.fixture()
def drafted(people: dict[str, Any]) -> tuple[Study, int]:
    """dr.rossi claims a study whose AI finished and drafts its report."""
    study = make_study("ai_complete")
    analysis_on(study, probability=0.91, positive=True, applicable=True)
    rossi = as_api(people["rossi"])
    assert rossi.post(f"/api/studies/{study.pk}/claim/").status_code == 200
    draft = rossi.post(f"/api/studies/{study.pk}/reports/", {"impression": ROSSI_WORDS}, format="json")
    assert draft.status_code == 200, draft.content
    return study, draft.json()["id"]


def test_a_colleague_can_neither_overwrite_nor_sign_the_holders_draft(people, drafted) -> None:
    study, draft_id = drafted
    chen = as_api(people["chen"])

    overwrite = chen.post(f"/api/studies/{study.pk}/reports/", {"impression": CHEN_WORDS}, format="json")
    sign = chen.post(f"/api/reports/{draft_id}/sign/")

    assert overwrite.status_code == 409 and "dr.rossi holds this study" in overwrite.json()["error"]
    assert sign.status_code == 409 and "dr.rossi's draft" in sign.json()["error"]
    versions = as_api(people["rossi"]).get(f"/api/studies/{study.pk}/reports/").json()
    assert [(v["version"], v["state"], v["author"], v["impression"]) for v in versions] == [
        (1, "draft", "dr.rossi", ROSSI_WORDS)
    ]
    assert Report.objects.get(pk=draft_id).signed_by is None
    assert not AuditEvent.objects.filter(study=study, action="report.sign").exists()
    assert Study.objects.get(pk=study.pk).status == "in_review"  # rossi's, as rossi left it
    page = chen.get(f"/studies/{study.pk}/report/").content.decode()
    assert "dr.rossi holds this study" in page and 'id="take-over"' in page
    assert 'id="save-draft"' not in page and "readonly" in page


def test_a_technologist_reads_signed_versions_only(people, drafted) -> None:
    study, draft_id = drafted
    tech = as_api(people["tech"])

    assert tech.get(f"/api/studies/{study.pk}/reports/").json() == []
    page = tech.get(f"/studies/{study.pk}/report/")
    assert page.status_code == 200 and ROSSI_WORDS not in page.content.decode()
    assert tech.get(f"/api/reports/{draft_id}/pdf/").status_code == 404

    rossi = as_api(people["rossi"])
    assert rossi.post(f"/api/reports/{draft_id}/sign/").status_code == 200
    rossi.post(f"/api/studies/{study.pk}/reports/", {"impression": "Addendum draft."}, format="json")
    versions = tech.get(f"/api/studies/{study.pk}/reports/").json()
    assert [(v["version"], v["state"], v["impression"]) for v in versions] == [(1, "signed", ROSSI_WORDS)]
    assert "Addendum draft." not in tech.get(f"/studies/{study.pk}/report/").content.decode()


def test_taking_over_is_audited_and_then_the_new_holder_finishes_the_draft(people, drafted) -> None:
    study, draft_id = drafted
    chen, rossi = as_api(people["chen"]), as_api(people["rossi"])

    taken = chen.post(f"/api/studies/{study.pk}/take-over/", {"reason": "Rossi called away"}, format="json")

    assert taken.status_code == 200 and taken.json()["assigned_radiologist"] == "dr.chen"
    audit = AuditEvent.objects.get(study=study, action="study.take_over")
    assert audit.actor_label == "dr.chen"
    assert audit.detail == {
        "from": "dr.rossi",
        "to": "dr.chen",
        "reason": "Rossi called away",
        "draft_version": 1,
        "draft_author": "dr.rossi",
        "draft_impression": ROSSI_WORDS,
    }
    refused = rossi.post(f"/api/studies/{study.pk}/reports/", {"impression": "Mine."}, format="json")
    assert refused.status_code == 409 and "dr.chen holds this study" in refused.json()["error"]
    again = chen.post(f"/api/studies/{study.pk}/take-over/", {}, format="json")
    assert again.status_code == 409 and "already hold" in again.json()["error"]

    edited = chen.post(
        f"/api/studies/{study.pk}/reports/",
        {"impression": f"{ROSSI_WORDS} Agreed: {CHEN_WORDS}"},
        format="json",
    )
    assert edited.status_code == 200 and edited.json()["id"] == draft_id
    signed = chen.post(f"/api/reports/{draft_id}/sign/")
    assert signed.status_code == 200
    body = signed.json()
    assert (body["author"], body["taken_over_from"], body["signed_by"]) == ("dr.chen", "dr.rossi", "dr.chen")
    assert Study.objects.get(pk=study.pk).status == "reported"
    page = chen.get(f"/studies/{study.pk}/report/").content.decode()
    assert "taken over from dr.rossi" in page


def test_a_draft_left_behind_stays_its_authors_until_someone_takes_it_over(people, drafted) -> None:
    study, draft_id = drafted
    chen, rossi = as_api(people["chen"]), as_api(people["rossi"])
    assert rossi.post(f"/api/studies/{study.pk}/release/").status_code == 200
    assert Study.objects.get(pk=study.pk).status == "ai_complete"  # back to what the AI says

    assert chen.post(f"/api/studies/{study.pk}/claim/").status_code == 200
    refused = chen.post(f"/api/studies/{study.pk}/reports/", {"impression": CHEN_WORDS}, format="json")
    assert refused.status_code == 409 and "dr.rossi's draft" in refused.json()["error"]
    assert Report.objects.get(pk=draft_id).impression == ROSSI_WORDS

    assert chen.post(f"/api/studies/{study.pk}/take-over/", {}, format="json").status_code == 200
    assert AuditEvent.objects.get(study=study, action="study.take_over").detail["draft_author"] == "dr.rossi"
    assert Report.objects.get(pk=draft_id).author == people["chen"]


def test_a_first_draft_on_an_unclaimed_study_claims_it(people) -> None:
    study = make_study("ai_complete")

    draft = as_api(people["chen"]).post(
        f"/api/studies/{study.pk}/reports/", {"impression": "x"}, format="json"
    )

    assert draft.status_code == 200
    study.refresh_from_db()
    assert study.assigned_radiologist == people["chen"] and study.status == "in_review"
    claim = AuditEvent.objects.get(study=study, action="study.claim")
    assert claim.actor_label == "dr.chen" and claim.detail == {"why": "began its report"}
    taken = as_api(people["rossi"]).post(f"/api/studies/{study.pk}/claim/")
    assert taken.status_code == 409 and "dr.chen" in taken.json()["error"]


def test_nothing_to_take_over_is_refused(people) -> None:
    study = make_study("ai_complete")

    answer = as_api(people["chen"]).post(f"/api/studies/{study.pk}/take-over/", {}, format="json")
    tech = as_api(people["tech"]).post(f"/api/studies/{study.pk}/take-over/", {}, format="json")

    assert answer.status_code == 409 and "claim it instead" in answer.json()["error"]
    assert tech.status_code == 403
    assert not AuditEvent.objects.filter(study=study).exists()


@pytest.mark.django_db(transaction=True)
def test_signing_reaches_another_radiologists_open_worklist(django_user_model) -> None:
    rossi, chen = person(django_user_model, "dr.rossi"), person(django_user_model, "dr.chen")
    study = make_study("ai_complete")
    rossi_api, chen_api = as_api(rossi), as_api(chen)
    rossi_api.post(f"/api/studies/{study.pk}/claim/")
    draft = rossi_api.post(f"/api/studies/{study.pk}/reports/", {"impression": ROSSI_WORDS}, format="json")

    def sign() -> int:
        return rossi_api.post(f"/api/reports/{draft.json()['id']}/sign/").status_code

    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        page = WebsocketCommunicator(
            application, "/ws/worklist/", headers=[session_cookie_header(chen_api), WS_ORIGIN]
        )
        assert (await page.connect())[0]
        signed = await sync_to_async(sign)()
        frames = [await page.receive_json_from(timeout=10)]
        while frames[-1].get("event") != "signed":
            frames.append(await page.receive_json_from(timeout=10))
        await page.disconnect()
        return signed, frames

    signed, frames = async_to_sync(scenario)()

    assert signed == 200
    assert frames[-1] == {
        "type": "study",
        "event": "signed",
        "study": {"id": study.pk, "status": "reported", "assigned_radiologist": "dr.rossi"},
    }
