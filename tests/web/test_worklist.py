"""The worklist: triage order, filters, search, pagination, claim/release and study status."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from web.clinical.models import Analysis, AuditEvent, Image, Patient, Study
from web.clinical.worklist.states import studies_refresh

_seq = itertools.count(1)


def person(django_user_model: Any, username: str, role: str = "radiologist") -> Any:
    user = django_user_model.objects.create_user(username, password=f"pw-{username}")
    user.groups.add(Group.objects.get(name=role))
    return user


def as_api(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def as_browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def study(
    mrn: str,
    *,
    name: str = "Doe^Jane",
    priority: int = Study.Priority.ROUTINE,
    hours_waiting: float = 0.5,
    body_part: str = "CHEST",
    accession: str = "",
    study_date: dt.date | None = None,
    result: tuple[str, float, bool] | None = None,
    **result_fields: Any,
) -> Study:
    """A study with one image and, optionally, one finished analysis (condition, p, positive)."""
    n = next(_seq)
    patient, _ = Patient.objects.get_or_create(patient_id=mrn, defaults={"name": name})
    s = Study.objects.create(
        patient=patient,
        study_instance_uid=f"1.2.826.0.1.{n}",
        accession_number=accession or f"ACC-{n}",
        body_part=body_part,
        priority=priority,
        study_date=study_date or dt.date(2026, 11, 25),
        status=Study.Status.AI_COMPLETE if result else Study.Status.RECEIVED,
    )
    Study.objects.filter(pk=s.pk).update(created_at=timezone.now() - dt.timedelta(hours=hours_waiting))
    image = Image.objects.create(
        study=s,
        sop_instance_uid=f"1.2.826.0.2.{n}",
        file=f"images/x{n}.png",
        format="png",
        size_bytes=10,
        sha256=f"{n:064d}",
        width=8,
        height=8,
    )
    if result:
        condition, probability, positive = result
        Analysis.objects.create(
            image=image,
            condition=condition,
            state=Analysis.State.SUCCEEDED,
            probability=probability,
            threshold=0.5,
            positive=positive,
            model_id=f"{condition}-test",
            **result_fields,
        )
        studies_refresh(studies=[s])  # the flag and the finding's urgency, by the finding rule
    return s


def order(client: APIClient, **params: Any) -> list[str]:
    body = client.get("/api/studies/", params).json()
    return [s["patient"]["patient_id"] for s in body["results"]]


@pytest.fixture()
def grey(db, django_user_model) -> Any:
    return person(django_user_model, "dr.grey")


@pytest.fixture()
def yang(db, django_user_model) -> Any:
    return person(django_user_model, "dr.yang")


# --------------------------------------------------------------------------- triage order


def test_a_human_stat_comes_before_any_ai_positive_routine_study(grey) -> None:
    study("MRN-ROUTINE-POS", result=("pneumonia", 0.99, True))
    study("MRN-STAT-NEG", priority=Study.Priority.STAT, result=("pneumonia", 0.01, False))
    study("MRN-URGENT-NONE", priority=Study.Priority.URGENT)

    assert order(as_api(grey)) == ["MRN-STAT-NEG", "MRN-URGENT-NONE", "MRN-ROUTINE-POS"]


def test_the_ai_never_lowers_a_human_priority(grey) -> None:
    stat = study("MRN-STAT", priority=Study.Priority.STAT, result=("pneumonia", 0.01, False))
    study("MRN-URGENT-POS", priority=Study.Priority.URGENT, result=("fracture", 0.99, True), body_part="HAND")

    rows = as_api(grey).get("/api/studies/").json()["results"]

    assert [r["patient"]["patient_id"] for r in rows] == ["MRN-STAT", "MRN-URGENT-POS"]
    assert rows[0]["priority"] == "STAT"
    stat.refresh_from_db()
    assert stat.priority == Study.Priority.STAT


def test_positives_go_by_urgency_of_the_condition_then_probability(grey) -> None:
    study("MRN-NEG", result=("pneumonia", 0.2, False), hours_waiting=3)
    study("MRN-KNEE-99", body_part="KNEE", result=("knee_osteoarthritis", 0.99, True), hours_waiting=2)
    study("MRN-CARDIO-90", result=("cardiomegaly", 0.90, True), hours_waiting=2)
    study("MRN-PNEU-70", result=("pneumonia", 0.70, True), hours_waiting=1)
    study("MRN-PNEU-95", result=("pneumonia", 0.95, True), hours_waiting=0.1)

    assert order(as_api(grey)) == ["MRN-PNEU-95", "MRN-PNEU-70", "MRN-CARDIO-90", "MRN-KNEE-99", "MRN-NEG"]


def test_placeholder_and_experimental_positives_do_not_jump_the_queue(grey) -> None:
    study("MRN-PLACEHOLDER", result=("cardiomegaly", 0.99, True), is_placeholder=True, hours_waiting=0.1)
    study("MRN-EXPERIMENTAL", result=("pneumonia", 0.99, True), experimental=True, hours_waiting=0.2)
    study("MRN-OLDER-NEG", result=("pneumonia", 0.1, False), hours_waiting=1)
    study("MRN-REAL", result=("pneumonia", 0.6, True), hours_waiting=0.05)

    assert order(as_api(grey)) == ["MRN-REAL", "MRN-OLDER-NEG", "MRN-EXPERIMENTAL", "MRN-PLACEHOLDER"]


def test_among_equals_the_longest_waiting_comes_first(grey) -> None:
    study("MRN-NEW", hours_waiting=0.1)
    study("MRN-OLD", hours_waiting=2)
    study("MRN-MID", hours_waiting=1)

    assert order(as_api(grey)) == ["MRN-OLD", "MRN-MID", "MRN-NEW"]


def test_the_waiting_cap_lifts_an_old_negative_above_a_fresh_positive(grey, settings) -> None:
    settings.RADTRIAGE_WAITING_CAP_HOURS = 4
    study("MRN-FRESH-POS", result=("pneumonia", 0.99, True), hours_waiting=0.1)
    study("MRN-3H-NEG", result=("pneumonia", 0.1, False), hours_waiting=3)
    study("MRN-5H-NEG", result=("pneumonia", 0.1, False), hours_waiting=5)
    study("MRN-STAT-FRESH", priority=Study.Priority.STAT, hours_waiting=0.1)

    assert order(as_api(grey)) == ["MRN-STAT-FRESH", "MRN-5H-NEG", "MRN-FRESH-POS", "MRN-3H-NEG"]
    page = as_browser(grey).get("/").content.decode()
    assert "waited over cap" in page and "waiting over 4 h first" in page


def test_the_row_shows_the_strongest_finding_and_its_state(grey) -> None:
    s = study("MRN-ROW", name="Doe^Jane", accession="ACC-ROW", result=("pneumonia", 0.873, True))
    image = s.images.get()
    Analysis.objects.create(
        image=image,
        condition="cardiomegaly",
        state="succeeded",
        probability=0.99,
        threshold=0.5,
        positive=True,
        is_placeholder=True,
    )
    study("MRN-PH", result=("cardiomegaly", 0.97, True), is_placeholder=True)
    study("MRN-NA", result=("pneumonia", 0.97, None), applicable=False)

    page = as_browser(grey).get("/").content.decode()
    row = page[page.index(f'data-study-id="{s.pk}"') :].split("</tr>")[0]
    placeholder_row = page[page.index("MRN-PH") :].split("</tr>")[0]
    na_row = page[page.index("MRN-NA") :].split("</tr>")[0]

    assert "Jane Doe" in row and "ACC-ROW" in row and "CHEST" in row and "2026-11-25" in row
    assert "pneumonia" in row and "0.87" in row and "AI flag" in row and "threshold 0.50" in row
    assert "Ready for review" in row and "30 min" in row
    assert "placeholder, no diagnostic value" in placeholder_row and "0.97" not in placeholder_row
    assert "not applicable" in na_row and "0.97" not in na_row


# --------------------------------------------------------------------------- filters


def test_filters_search_and_pagination(grey, yang) -> None:
    study("MRN-CHEST", name="House^Gregory", result=("pneumonia", 0.9, True), accession="A-777")
    study("MRN-HAND", body_part="HAND", result=("fracture", 0.2, False), study_date=dt.date(2026, 1, 5))
    mine = study("MRN-MINE")
    Study.objects.filter(pk=mine.pk).update(assigned_radiologist=grey)
    api = as_api(grey)

    assert order(api, positive=1) == ["MRN-CHEST"]
    assert order(api, condition="fracture") == ["MRN-HAND"]
    assert order(api, region="limb") == ["MRN-HAND"]
    assert order(api, date_to="2026-02-01") == ["MRN-HAND"]
    assert order(api, date_from="2026-02-01", status="ai_complete") == ["MRN-CHEST"]
    assert order(api, assigned="mine") == ["MRN-MINE"]
    assert sorted(order(api, assigned="unassigned")) == ["MRN-CHEST", "MRN-HAND"]
    assert order(as_api(yang), assigned="mine") == []
    assert order(api, q="gregory house") == ["MRN-CHEST"]
    assert order(api, q="a-777") == ["MRN-CHEST"]
    assert order(api, q="mrn-ha") == ["MRN-HAND"]
    assert api.get("/api/studies/", {"region": "brain"}).status_code == 400

    page = as_browser(grey).get("/", {"q": "House"}).content.decode()
    assert "MRN-CHEST" in page and "MRN-HAND" not in page and 'value="House"' in page


def test_the_worklist_pages_beyond_200_studies(grey) -> None:
    for i in range(205):
        study(f"MRN-{i:03d}", hours_waiting=300 - i)
    browser = as_browser(grey)

    first = browser.get("/").content.decode()
    last = browser.get("/", {"page": 5, "q": "MRN-"}).content.decode()

    assert first.count("<tr data-study-id=") == 50 and "page 1 of 5" in first
    assert "MRN-000" in first and "MRN-050" not in first
    assert last.count("<tr data-study-id=") == 5 and "MRN-204" in last
    assert 'href="?q=MRN-&amp;page=4"' in last
    fragment = browser.get("/", {"page": 5, "q": "MRN-", "fragment": 1}).content.decode()
    assert "<h1>" not in fragment and "MRN-204" in fragment and "MRN-000" not in fragment


# --------------------------------------------------------------------------- claim and status


def test_two_radiologists_one_claim(grey, yang) -> None:
    s = study("MRN-CLAIM", result=("pneumonia", 0.9, True))

    first = as_api(grey).post(f"/api/studies/{s.pk}/claim/")
    second = as_api(yang).post(f"/api/studies/{s.pk}/claim/")
    yang_release = as_api(yang).post(f"/api/studies/{s.pk}/release/")

    assert first.status_code == 200 and first.json()["assigned_radiologist"] == "dr.grey"
    assert second.status_code == 409 and "dr.grey" in second.json()["error"]
    assert yang_release.status_code == 409
    s.refresh_from_db()
    assert s.assigned_radiologist == grey and s.claimed_at is not None

    released = as_api(grey).post(f"/api/studies/{s.pk}/release/")
    assert released.status_code == 200 and released.json()["assigned_radiologist"] is None
    assert as_api(yang).post(f"/api/studies/{s.pk}/claim/").status_code == 200
    actions = list(
        AuditEvent.objects.filter(study=s).order_by("at", "id").values_list("action", "actor_label")
    )
    assert actions == [
        ("study.claim", "dr.grey"),
        ("study.release", "dr.grey"),
        ("study.claim", "dr.yang"),
    ]


def test_only_a_reviewer_may_claim(db, django_user_model) -> None:
    s = study("MRN-TECH")
    tech = person(django_user_model, "tech.tom", role="technologist")

    assert as_api(tech).post(f"/api/studies/{s.pk}/claim/").status_code == 403
    assert APIClient().post(f"/api/studies/{s.pk}/claim/").status_code in (401, 403)
    assert Study.objects.get(pk=s.pk).assigned_radiologist is None


def test_a_claimed_study_goes_in_review_when_its_assignee_opens_it_then_reviewed(grey, yang) -> None:
    s = study("MRN-FLOW", result=("pneumonia", 0.9, True))

    as_browser(yang).get(f"/studies/{s.pk}/")  # someone else looking changes nothing
    assert Study.objects.get(pk=s.pk).status == "ai_complete"
    as_api(grey).post(f"/api/studies/{s.pk}/claim/")
    page = as_browser(grey).get(f"/studies/{s.pk}/").content.decode()
    assert Study.objects.get(pk=s.pk).status == "in_review"
    assert "Mark reviewed" in page and "Release" in page

    assert as_api(yang).post(f"/api/studies/{s.pk}/reviewed/").status_code == 409
    done = as_api(grey).post(f"/api/studies/{s.pk}/reviewed/")
    # Read, with no report here: reviewed, never reported (only signing a report does that).
    assert done.status_code == 200 and done.json()["status"] == "reviewed"
    s.refresh_from_db()
    assert s.reviewed_by == grey and s.reviewed_at is not None
    worklist = as_browser(grey).get("/", {"status": "reviewed"}).content.decode()
    assert "MRN-FLOW" in worklist and "Reviewed, no report here" in worklist
    assert "MRN-FLOW" not in as_browser(grey).get("/", {"status": "reported"}).content.decode()


def test_releasing_a_study_in_review_gives_it_back_ready_for_review(grey) -> None:
    s = study("MRN-BACK", result=("pneumonia", 0.9, True))
    as_api(grey).post(f"/api/studies/{s.pk}/claim/")
    as_browser(grey).get(f"/studies/{s.pk}/")

    as_api(grey).post(f"/api/studies/{s.pk}/release/")

    s.refresh_from_db()
    assert s.status == "ai_complete" and s.assigned_radiologist is None


def test_a_study_without_analyses_offers_analyse_with_its_region_conditions_first(grey) -> None:
    s = study("MRN-NOAI", body_part="HAND")
    image_id = s.images.get().pk
    page = as_browser(grey).get("/").content.decode()
    row = page[page.index(f'data-study-id="{s.pk}"') :].split("</tr>")[0]
    options = re.findall(r'<option value="(\w+)">', row)

    assert "No AI analysis" in row and "Analyse" in row and f'data-image-ids="{image_id}"' in row
    assert options[0] == "fracture" and set(options) == {
        "fracture",
        "pneumonia",
        "cardiomegaly",
        "knee_osteoarthritis",
        "knee_osteoporosis",
    }
    assert "Pneumonia (not for HAND)" in row
