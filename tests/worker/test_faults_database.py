"""PostgreSQL drops the worker's connection in the middle of a job (a database restart or
failover, pg_terminate_backend): the job retries on a fresh connection and ends with one
result. A real worker, a real PostgreSQL backend terminated by the server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.db import connection, transaction

from tests.web.fixtures import celery_worker, dicom_bytes, media_files, service_env, upload, wait_for
from web.clinical.models import Analysis, Patient, Study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _backends_waiting_on_a_lock() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction sees one snapshot
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        return [pid for (pid,) in cursor.fetchall()]


@pytest.fixture()
def own_worker(private_redis, broker_switch, tiny_registry, service_logs):  # type: ignore[no-untyped-def]
    """A worker of this test's own, on a broker of its own: the session's worker may be busy
    with earlier tests' jobs, and this test times the moment the worker stores a result."""
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    worker = celery_worker(
        "pgdrop", service_env(CELERY_BROKER_URL=url, RADTRIAGE_REGISTRY=str(tiny_registry)), service_logs
    ).start(ready_text="ready.", timeout=90)
    yield worker
    worker.stop()


def test_a_job_whose_database_connection_is_killed_retries_and_gives_one_result(own_worker, api) -> None:
    """The worker's connection is terminated by PostgreSQL while it stores a result. The user
    sees the analysis go back to queued ("Retrying after a temporary problem") and then the
    result, one row with one heat map, without anyone restarting anything."""
    response = upload(api, dicom_bytes(patient_id="MRN-PGDROP"), conditions="pneumonia")
    assert response.status_code == 201, response.content
    analysis_id = response.json()["image"]["analyses"][0]["id"]
    study = Analysis.objects.select_related("image__study").get(pk=analysis_id).image.study

    # Hold the patient row: the worker claims the job and runs the model (neither touches the
    # patient), then waits on this lock when it stores the result (it locks the patient with
    # the analysis). That is the moment its connection is cut.
    with transaction.atomic():
        Patient.objects.select_for_update().get(pk=study.patient_id)
        victims = wait_for(_backends_waiting_on_a_lock, timeout=120, what="the worker to store its result")
        assert Analysis.objects.get(pk=analysis_id).state == "running"
        with connection.cursor() as cursor:
            for pid in victims:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        cut = time.monotonic()

    retrying = wait_for(
        lambda: (
            Analysis.objects.filter(pk=analysis_id, error_message__startswith="Retrying").first()
            or Analysis.objects.filter(pk=analysis_id, state="succeeded").first()
        ),
        timeout=30,
        interval=0.02,
        what="the job to be retried",
    )
    done = wait_for(
        lambda: Analysis.objects.filter(pk=analysis_id, state__in=["succeeded", "failed"]).first(),
        timeout=60,
        what="the retried job to finish",
    )
    recovered = time.monotonic() - cut
    print(f"database connection killed: result {recovered:.1f} s later")

    assert "Retrying after a temporary problem" in retrying.error_message, retrying.state
    assert "OperationalError" in retrying.error_message or "InterfaceError" in retrying.error_message
    assert done.state == "succeeded", done.error_message
    assert done.attempts == 2 and done.error_message == ""
    assert Analysis.objects.filter(image_id=done.image_id, condition="pneumonia").count() == 1
    assert done.heatmap_raw and done.probability is not None
    assert Study.objects.get(pk=study.pk).status == "ai_complete"
    # The first attempt's heat map went with its rolled-back transaction: one file, not two.
    heatmaps = [p.name for p in media_files() if p.parent.parts[-2:] == ("heatmaps", str(study.pk))]
    assert heatmaps == [Path(done.heatmap_raw.name).name]
