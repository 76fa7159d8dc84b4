"""Colour contrast as a reader's eyes meet it: every visible text on each page, in Chromium at
1440x900, against its background, at WCAG 2.1 AA (4.5:1; 3:1 for large text). Pages: the
login page, the worklist, a study with a flagged result, its report page, the batches page and
the 403 page of an account without a role."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from tests.output import TEST_OUTPUT
from tests.web.fixtures import log_in, web_login_user
from tests.web.test_browser import _in_thread, isolated_media  # noqa: F401
from web.clinical.models import Analysis, Image, Patient, Study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CONTRAST_JS = (Path(__file__).parent / "contrast.js").read_text()


@pytest.fixture()
def people(django_user_model):
    # Created before the browser starts: Playwright's loop makes the ORM refuse to run after.
    reader = web_login_user(django_user_model, "dr.yang", "pw-yang-12345")
    reader.groups.add(Group.objects.get_or_create(name="radiologist")[0])
    web_login_user(django_user_model, "new.hire", "pw-newhire-123")  # no role yet
    return reader


def _flagged_study() -> Study:
    patient = Patient.objects.create(patient_id="MRN-CONTRAST", name="Contrast^Carla")
    study = Study.objects.create(
        patient=patient,
        study_instance_uid="1.2.826.0.9.4242",
        accession_number="ACC-CONTRAST",
        body_part="CHEST",
        modality="DX",
        status=Study.Status.AI_COMPLETE,
    )
    image = Image.objects.create(
        study=study,
        sop_instance_uid="1.2.826.0.9.4242.1",
        file="images/contrast.png",
        format="png",
        size_bytes=10,
        sha256="c" * 64,
        width=8,
        height=8,
    )
    for condition, probability, positive in (("pneumonia", 0.91, True), ("cardiomegaly", 0.2, False)):
        Analysis.objects.create(
            image=image,
            condition=condition,
            state=Analysis.State.SUCCEEDED,
            probability=probability,
            threshold=0.5,
            positive=positive,
            applicable=True,
            model_id=f"{condition}-test",
            model_sha256="ab" * 32,
            finished_at=timezone.now(),
        )
    return study


def _log_in(page, base_url: str, username: str, password: str) -> None:
    log_in(page, base_url, username, password)
    page.wait_for_load_state("networkidle")


def _low_contrast(page, name: str) -> list[dict]:
    page.wait_for_load_state("networkidle")
    folder = TEST_OUTPUT / "contrast"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}-1440x900.png"), full_page=True)
    return [{"page": name, **found} for found in page.evaluate(CONTRAST_JS)]


def test_every_text_on_every_page_meets_wcag_aa_contrast(
    live_server_url,
    people,
    browser_page,
) -> None:
    study = _in_thread(_flagged_study)
    page = browser_page
    page.set_viewport_size({"width": 1440, "height": 900})
    low = []

    page.goto(live_server_url + "/login/")
    low += _low_contrast(page, "login")
    _log_in(page, live_server_url, "dr.yang", "pw-yang-12345")
    low += _low_contrast(page, "worklist")
    page.goto(f"{live_server_url}/studies/{study.pk}/")
    low += _low_contrast(page, "study")
    page.goto(f"{live_server_url}/studies/{study.pk}/report/")
    low += _low_contrast(page, "report")
    page.goto(f"{live_server_url}/batches/")
    low += _low_contrast(page, "batches")
    page.context.clear_cookies()
    _log_in(page, live_server_url, "new.hire", "pw-newhire-123")
    low += _low_contrast(page, "forbidden")

    assert low == [], "\n".join(str(item) for item in low)
