"""The worklist at scale: a page costs a fixed number of queries whatever the number of studies,
its order is read on indexes (no per-study subquery to sort), a page of `worklist_rows` is the
same slice of study_worklist's order, and the finding columns the order sorts on stay what
the results say after every change of a study's state. Figures at 1M studies: bench/scale.py."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from core.conditions import CONDITIONS as CONDITION_CODES
from tests.web.fixtures import dicom_bytes, upload, with_role
from web.clinical.analysis.findings import studies_top_finding, study_finding_stored_q, study_has_finding
from web.clinical.analysis.jobs import analysis_fail
from web.clinical.models import Analysis, Image, Patient, Report, Study
from web.clinical.reporting.reports import report_draft_save, report_sign
from web.clinical.worklist.claims import study_claim, study_mark_reviewed, study_release
from web.clinical.worklist.patients import PATIENT_COPIES, patient_save, study_patient_copies
from web.clinical.worklist.queries import (
    WORKLIST_SORTS,
    WorklistFilters,
    study_worklist,
    worklist_rows,
)
from web.clinical.worklist.states import studies_refresh

_seq = itertools.count(1)
CONDITIONS = ("pneumonia", "cardiomegaly", "fracture")


def many_studies(n: int, *, seed: int = 3) -> list[Study]:
    """n studies with one image and a result each, in every state, some waiting past the cap;
    their finding columns set by the finding rule (studies_refresh)."""
    rng = random.Random(seed)
    base = next(_seq) * 100_000
    patients = Patient.objects.bulk_create(
        Patient(
            patient_id=f"MRN-SC-{base + i}",
            name=f"{rng.choice(['DOE', 'ROE', 'POE'])}^JO{i % 7}",
            birth_date=None if i % 9 == 0 else dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(25000)),
            sex=rng.choice(["M", "F", "O", ""]),
        )
        for i in range(n // 3 + 1)
    )
    now = timezone.now()
    studies = Study.objects.bulk_create(
        Study(
            patient=(patient := rng.choice(patients)),
            **study_patient_copies(patient),
            study_instance_uid=f"1.2.826.0.77.{base + i}",
            accession_number=f"SC{base + i:08d}",
            body_part=rng.choice(["CHEST", "CHEST", "KNEE", "HAND", "PELVIS", ""]),
            modality=rng.choice(["CR", "DX"]),
            study_date=dt.date(2026, 1, 1) + dt.timedelta(days=rng.randrange(300)),
            priority=rng.choice([1, 2, 3, 3, 3]),
            status=rng.choice(["received", "ai_complete", "ai_complete", "in_review", "reviewed"]),
        )
        for i in range(n)
    )
    # Arrival times spread over ten hours: the cap (4 h) splits them. None within the hour
    # before the cap, so no study crosses it while tests read the same studies for minutes.
    for s in studies:
        s.created_at = now - dt.timedelta(minutes=rng.choice([*range(180), *range(240, 600)]))
    Study.objects.bulk_update(studies, ["created_at"])
    images = Image.objects.bulk_create(
        Image(
            study=s,
            sop_instance_uid=f"1.2.826.0.78.{s.pk}",
            file=f"images/sc{s.pk}.png",
            format="png",
            size_bytes=10,
            sha256=f"{s.pk:064x}",
            width=8,
            height=8,
        )
        for s in studies
    )
    Analysis.objects.bulk_create(
        Analysis(
            image=image,
            condition=rng.choice(CONDITIONS),
            state=Analysis.State.SUCCEEDED,
            probability=(p := round(rng.random(), 3)),
            threshold=0.5,
            positive=p >= 0.5,
            model_id="scale-test",
            finished_at=now,
        )
        for image in images
        if rng.random() < 0.8
    )
    for start in range(0, n, 500):
        studies_refresh(studies=studies[start : start + 500])
    return studies


@pytest.fixture()
def radiologist(db, django_user_model) -> Any:
    return with_role(django_user_model.objects.create_user("dr.scale"), "radiologist")


@pytest.fixture(scope="class")
def shared_studies(request: Any, django_db_setup: Any, django_db_blocker: Any) -> Iterator[list[Study]]:
    """The class's STUDIES studies, seeded once for its tests (which only read them), inside a
    transaction rolled back after the class: each test's own transaction is a savepoint in it,
    so what a test adds is gone after it, and nothing is ever committed."""
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
    try:
        with django_db_blocker.unblock():
            studies = many_studies(request.cls.STUDIES)
            # The planner sees them, as it would once autovacuum had (statistics of a few rows
            # left by earlier tests would have it choose plans no site would ever get).
            with connection.cursor() as cursor:
                for model in (Patient, Study, Image, Analysis):
                    cursor.execute(f"ANALYZE {model._meta.db_table}")
        yield studies
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


def _plan(sql: str) -> str:
    """PostgreSQL's plan for `sql`; a few thousand rows: ask what it would use were a whole-table
    read not cheaper."""
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    return plan


def _queries(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return len(captured.captured_queries)


def _page_ids(filters: WorklistFilters, user: Any, start: int, stop: int) -> list[int]:
    return [s.pk for s in worklist_rows(filters=filters, user=user)[start:stop]]


# The index each sort reads its rows from in order (the patient's fields: the study's copies).
SORT_INDEXES = {
    "modality": "study_sort_modality_idx",
    "region": "study_sort_region_idx",
    "-priority": "",  # its own index at scale; on a thousand rows, any priority index (sorted within)
    "-date": "study_sort_date_desc_idx",
    "waiting": "study_arrival_idx",
    "date": "study_date_idx",
    "accession": "",
    "patient": "study_sort_patient_idx",
    "-patient": "study_sort_patient_desc_idx",
    "age": "study_sort_age_idx",
    "-age": "study_sort_birth_date_idx",
    "sex": "study_sort_sex_idx",
}


class TestOnOneThousandStudies:
    """Queries and plans on one set of 1,000 studies; one test adds 500 of its own."""

    STUDIES = 1000

    def test_each_page_costs_the_same_few_queries_with_many_studies(
        self, shared_studies, radiologist
    ) -> None:
        browser, api = Client(), APIClient()
        browser.force_login(radiologist)
        api.force_login(radiologist)
        one = Study.objects.filter(status="in_review").first()
        assert one is not None
        name = one.patient.name.split("^")[0]
        pages = {
            "/": 20,
            "/?status=reviewed": 20,
            "/?region=CHEST&sort=-patient": 20,
            "/?condition=pneumonia&positive=1": 20,
            f"/?q={name}": 22,
            f"/?q={one.accession_number}": 22,
            f"/studies/{one.pk}/": 25,
            "/api/studies/": 20,
            f"/api/studies/?q={name}": 22,
        }
        counts = {url: _queries(browser if not url.startswith("/api") else api, url) for url in pages}
        assert {url: n for url, n in counts.items() if n > pages[url]} == {}
        # More studies, still within the same bounds (a row never costs a query of its own).
        many_studies(500, seed=4)
        again = {url: _queries(browser if not url.startswith("/api") else api, url) for url in pages}
        assert {url: n for url, n in again.items() if n > pages[url]} == {}
        assert Study.objects.count() == 1500

    def test_the_worklist_is_sorted_on_an_index_without_a_subquery_per_study(
        self, shared_studies, radiologist
    ) -> None:
        with CaptureQueriesContext(connection) as captured:
            list(worklist_rows(filters=WorklistFilters(), user=radiologist)[0:50])
        slice_sql = next(q["sql"] for q in captured.captured_queries if "LIMIT 50" in q["sql"])
        order_by = slice_sql.rsplit("ORDER BY", 1)[1]
        assert "SELECT" not in order_by.upper()  # plain columns: no correlated subquery to sort by
        assert '"finding_urgency" DESC' in order_by
        if connection.vendor != "postgresql":
            return
        plan = _plan(slice_sql)
        assert "study_triage_idx" in plan, plan
        assert "Sort" not in plan.replace("Incremental Sort", ""), plan
        assert "SubPlan" not in plan, plan

    def test_a_sort_by_a_column_or_the_patients_field_reads_an_index_in_order(
        self, shared_studies, radiologist
    ) -> None:
        if connection.vendor != "postgresql":
            pytest.skip("the plan is PostgreSQL's")
        unordered = {}
        for sort, index in SORT_INDEXES.items():
            with CaptureQueriesContext(connection) as captured:
                list(worklist_rows(filters=WorklistFilters(sort=sort), user=radiologist)[0:50])
            slice_sql = next(q["sql"] for q in captured.captured_queries if "LIMIT 50" in q["sql"])
            with connection.cursor() as cursor:
                # A thousand rows would rather be sorted whole: ask which index gives the order, if
                # any (a sort of the whole is still planned where none does).
                cursor.execute("SET enable_seqscan = off; SET enable_sort = off")
                cursor.execute(f"EXPLAIN {slice_sql}")
                plan = "\n".join(row[0] for row in cursor.fetchall())
                cursor.execute("RESET enable_seqscan; RESET enable_sort")
            # The rows come in the sort's order from an index; at most the few sharing a value are sorted.
            sorted_whole = [line for line in plan.splitlines() if re.match(r"\s*(->\s*)?Sort\s+\(", line)]
            if "Index" not in plan or index not in plan or sorted_whole:
                unordered[sort] = plan
        assert unordered == {}


DESCENDING_SORTS = ("priority", "patient", "age", "date", "status", "waiting")


class TestOnFourHundredStudies:
    """Pages of every filter and sort, on one set of 400 studies."""

    STUDIES = 400

    @pytest.mark.parametrize(
        "filters",
        [
            WorklistFilters(),
            WorklistFilters(status="ai_complete"),
            WorklistFilters(region="CHEST"),
            WorklistFilters(condition="pneumonia", positive_only=True),
            WorklistFilters(condition="fracture", positive_only=True),
            WorklistFilters(condition="fracture"),
            WorklistFilters(positive_only=True),
            WorklistFilters(q="DOE"),
            *[WorklistFilters(sort=s) for s in WORKLIST_SORTS],
            *[
                WorklistFilters(sort=f"-{s}")
                for s in ("priority", "patient", "age", "date", "status", "waiting")
            ],
        ],
        ids=lambda f: ",".join(f"{k}={v}" for k, v in vars(f).items() if v) or "default",
    )
    def test_every_page_of_worklist_rows_is_that_slice_of_the_triage_order(
        self, shared_studies, radiologist, filters
    ) -> None:
        expected = list(study_worklist(filters=filters, user=radiologist).values_list("pk", flat=True))
        rows = worklist_rows(filters=filters, user=radiologist)
        assert rows.count() == len(expected)
        assert any(
            Study.objects.filter(pk__in=expected, created_at__lte=timezone.now() - dt.timedelta(hours=4))
        )
        for start, stop in [(0, 50), (50, 100), (37, 83), (len(expected) - 10, len(expected) + 40)]:
            assert _page_ids(filters, radiologist, start, stop) == expected[start:stop], (start, stop)


FINDING = ("ai_flagged", "finding_urgency", "finding_probability")


def _finding_columns_agree(study: Study) -> None:
    stored = Study.objects.filter(pk=study.pk).values_list(*FINDING).get()
    urgency, probability = studies_top_finding([study.pk]).get(study.pk, (0, 0.0))
    assert stored == (study.pk in studies_top_finding([study.pk]), urgency, probability)
    # The condition filter's stored marker says what the rule's own query says, condition by condition.
    one = Study.objects.filter(pk=study.pk)
    for condition in CONDITION_CODES:
        by_rule = one.filter(study_has_finding(condition=condition)).exists()
        assert one.filter(study_finding_stored_q(condition)).exists() == by_rule, condition


def test_the_finding_columns_follow_every_change_of_state(radiologist) -> None:
    (study,) = many_studies(1, seed=9)
    image = study.images.get()
    Analysis.objects.filter(image=image).delete()
    studies_refresh(studies=[study])
    _finding_columns_agree(study)
    assert Study.objects.get(pk=study.pk).finding_urgency == 0

    # An analysis ends with a finding, another (more urgent) ends, one fails: each time.
    done = {"state": "succeeded", "threshold": 0.5, "positive": True}
    Analysis.objects.create(image=image, condition="cardiomegaly", probability=0.8, **done)
    studies_refresh(studies=[study])
    _finding_columns_agree(study)
    assert Study.objects.get(pk=study.pk).finding_urgency == 2
    Analysis.objects.create(image=image, condition="pneumonia", probability=0.7, **done)
    studies_refresh(studies=[study])
    _finding_columns_agree(study)
    assert Study.objects.values_list("finding_urgency", "finding_probability").get(pk=study.pk) == (3, 0.7)
    failing = Analysis.objects.create(image=image, condition="fracture", state="running", threshold=0.5)
    analysis_fail(analysis_id=failing.pk, message="A corrupt file.")
    _finding_columns_agree(study)

    # A later reading replaces the pneumonia finding: the study sorts by the cardiomegaly one.
    Analysis.objects.create(
        image=image,
        condition="pneumonia",
        state="succeeded",
        probability=0.1,
        threshold=0.5,
        positive=False,
        finished_at=timezone.now() + dt.timedelta(seconds=1),
    )
    studies_refresh(studies=[study])
    _finding_columns_agree(study)
    assert Study.objects.get(pk=study.pk).finding_urgency == 2

    # A radiologist claims, releases, claims, marks reviewed, writes and signs the report.
    Study.objects.filter(pk=study.pk).update(status="ai_complete", assigned_radiologist=None)
    study_claim(study_id=study.pk, user=radiologist)
    _finding_columns_agree(study)
    study_release(study_id=study.pk, user=radiologist)
    _finding_columns_agree(study)
    study_claim(study_id=study.pk, user=radiologist)
    study_mark_reviewed(study_id=study.pk, user=radiologist)
    _finding_columns_agree(study)
    draft = report_draft_save(study_id=study.pk, author=radiologist, impression="Cardiomegaly.")
    report_sign(report_id=draft.pk, signer=radiologist)
    assert Report.objects.get(pk=draft.pk).is_signed
    assert Study.objects.get(pk=study.pk).status == Study.Status.REPORTED
    _finding_columns_agree(study)


def test_the_count_stops_past_the_cap_and_says_so(radiologist, monkeypatch) -> None:
    from web.clinical.worklist import queries

    many_studies(60)
    total = Study.objects.count()
    monkeypatch.setattr(queries, "COUNT_CAP", 20)
    rows = worklist_rows(filters=WorklistFilters(), user=radiologist)
    assert (rows.count(), rows.count_capped) == (21, True)
    deep = worklist_rows(filters=WorklistFilters(), user=radiologist, count_from=50)
    assert (deep.count(), deep.count_capped) == (total, False)
    browser, api = Client(), APIClient()
    browser.force_login(radiologist)
    api.force_login(radiologist)
    page = browser.get("/?fragment=1").content.decode()
    assert "more than 20 studies · page 1<" in page  # (a next link: once the cap passes a page)
    body = api.get("/api/studies/?limit=10").json()
    assert (body["count"], body["count_capped"], len(body["results"])) == (20, True, 10)
    assert body["next"]
    assert api.get("/api/studies/?limit=10&offset=40").json()["count"] == total
    assert api.get("/api/studies/?limit=10&offset=40").json()["count_capped"] is False
    monkeypatch.setattr(queries, "COUNT_CAP", 10_000)
    assert f"{total} studies" in browser.get("/?fragment=1").content.decode()


def test_the_sorts_that_say_nulls_last_are_the_nullable_columns() -> None:
    from web.clinical.worklist.queries import SORTS_NULLABLE

    def nullable(path: str) -> bool:
        model: Any = Study
        *joins, name = path.split("__")
        for join in joins:
            model = model._meta.get_field(join).related_model
        return bool(model._meta.get_field(name).null)

    assert {key for key, path in WORKLIST_SORTS.items() if nullable(path)} == SORTS_NULLABLE


def _copies_agree() -> dict[int, tuple[Any, ...]]:
    """The studies whose copies of their patient's fields differ from the patient's."""
    columns = [*PATIENT_COPIES, *(f"patient__{field}" for field in PATIENT_COPIES.values())]
    half = len(PATIENT_COPIES)
    return {
        row[0]: row[1:]
        for row in Study.objects.values_list("pk", *columns)
        if row[1 : 1 + half] != row[1 + half :]
    }


def test_the_studies_copies_of_the_patients_fields_follow_every_change(api, django_user_model) -> None:
    # An upload makes the patient and the study; a second study of the patient fills a gap
    # (the birth date the first file lacked) on the patient and on both studies.
    first = upload(api, dicom_bytes(patient_id="MRN-COPY", birth_date="", accession="C-1")).json()
    assert Study.objects.get(pk=first["study"]["id"]).patient_birth_date is None
    assert _copies_agree() == {}
    upload(api, dicom_bytes(patient_id="MRN-COPY", birth_date="19800102", accession="C-2", seed=1))
    patient = Patient.objects.get(patient_id="MRN-COPY")
    assert patient.birth_date == dt.date(1980, 1, 2) and patient.studies.count() == 2
    assert _copies_agree() == {}
    assert set(patient.studies.values_list("patient_birth_date", flat=True)) == {dt.date(1980, 1, 2)}

    # An admin corrects the patient's name, birth date and sex; then moves a study to another patient.
    admin = Client()
    admin.force_login(with_role(django_user_model.objects.create_user("ada.admin"), "admin"))
    changed = admin.post(
        f"/admin/clinical/patient/{patient.pk}/change/",
        {"patient_id": "MRN-COPY", "name": "Doe^Janet", "birth_date": "1981-02-03", "sex": "O"},
    )
    assert changed.status_code == 302, changed.content[:500]
    assert _copies_agree() == {}
    assert set(patient.studies.values_list("patient_name", "patient_sex")) == {("Doe^Janet", "O")}
    other = Patient.objects.create(patient_id="MRN-OTHER", name="Roe^Rick", sex="M")
    study = patient.studies.order_by("pk").first()
    assert study is not None
    form = {
        f: getattr(study, f) or ""
        for f in ("study_instance_uid", "accession_number", "modality", "body_part", "description")
    }
    moved = admin.post(
        f"/admin/clinical/study/{study.pk}/change/",
        {**form, "patient": other.pk, "priority": study.priority, "body_part_source": study.body_part_source},
    )
    assert moved.status_code == 302, moved.content[:500]
    assert Study.objects.values_list("patient_name", "patient_sex").get(pk=study.pk) == ("Roe^Rick", "M")
    assert _copies_agree() == {}

    # The service itself, for any other caller.
    other.birth_date = None
    other.name = "Roe^Richard"
    assert patient_save(patient=other) == 1
    assert _copies_agree() == {}
    # A study built any other way (a script, the admin's "add study") takes them too.
    Study.objects.create(patient=other, study_instance_uid="1.2.826.0.79.1")
    assert other.studies.count() == 2 and _copies_agree() == {}
