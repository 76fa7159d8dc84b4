"""A stored result and its files are one unit through the faults production brings: the task
terminated after its results committed, Redis restarted empty while a batch is committed, the
pool process SIGKILLed mid-job. Every succeeded analysis keeps its heat map (the viewer and the
DICOM Secondary Capture answer), every PACS send goes out, and no orphan file stays."""

from __future__ import annotations

import datetime as dt
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis
from django.utils import timezone

from tests.dicom.conftest import FakePACS
from tests.web.fixtures import celery_beat, celery_worker, dicom_bytes, redis_server, service_env, wait_for
from tests.web.test_bulk_upload_api import bulk_upload
from web.clinical.analysis import jobs
from web.clinical.analysis.recovery import broker_job_ids, pacs_sends_requeue_orphans
from web.clinical.dicom import pacs_send
from web.clinical.dicom.pacs_send import pacs_send_run
from web.clinical.dispatch import TASK_PACS_SEND
from web.clinical.files import media_remove_orphan_files
from web.clinical.models import Analysis, DicomSend

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture()
def pacs() -> Any:
    server = FakePACS()
    yield server
    server.stop()


def _batch(api: Any, n: int, tag: str) -> list[int]:
    files = [(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-{tag}-{i}", seed=300 + i)) for i in range(n)]
    response = bulk_upload(api, files, conditions="pneumonia")
    assert response.status_code in (200, 201), response.content
    return [a["id"] for r in response.json()["results"] for a in r["analyses"]]


def _assert_every_result_has_its_files(api: Any, ids: list[int]) -> None:
    """What a radiologist opens: the heat map in the viewer and the result's DICOM SC."""
    for analysis in Analysis.objects.filter(pk__in=ids):
        assert analysis.state == "succeeded" and analysis.heatmap_raw, analysis
        assert Path(analysis.heatmap_raw.path).is_file(), analysis.heatmap_raw.name
        assert api.get(f"/api/analyses/{analysis.pk}/heatmap/?kind=raw").status_code == 200
        assert api.get(f"/api/analyses/{analysis.pk}/dicom-sc/").status_code == 200


def _sc_received(pacs: FakePACS, send: DicomSend) -> int:
    mine = {str(ds.SOPInstanceUID) for ds in pacs.received} & set(send.instances)
    return len(mine) - 1  # the image's SR aside


def test_results_committed_before_their_task_is_terminated_keep_their_heat_maps_and_reach_the_pacs(
    api, private_redis, broker_switch, tiny_registry, settings, monkeypatch, pacs
) -> None:
    """The batch's results commit with their PACS send rows; then, sending the jobs after the
    commit, Celery terminates the task (it does so when the broker connection is lost under a
    late-acked job) and Redis comes back empty. The heat maps of the committed results must
    stay, and the recovery sweep must send the PACS sends that no job carries."""
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)  # the batch job is parked; this process runs it
    settings.CELERY_BROKER_URL = url  # what the recovery sweep reads
    settings.RADTRIAGE_REGISTRY = tiny_registry
    settings.RADTRIAGE_PACS_HOST, settings.RADTRIAGE_PACS_PORT = "127.0.0.1", pacs.port
    settings.RADTRIAGE_PACS_AE_TITLE = "TESTPACS"
    ids = _batch(api, 3, "TERM")

    def terminated(*, send_ids: list[int]) -> None:
        raise SystemExit("terminated: cannot be acknowledged after a connection loss")

    # Sending the PACS jobs after the commit, the task is terminated.
    monkeypatch.setattr(pacs_send, "pacs_sends_dispatch", terminated)
    with pytest.raises(SystemExit):
        jobs.analyses_run(analysis_ids=ids, worker="test")
    redis.Redis.from_url(url).flushall()  # Redis restarted without persistence

    _assert_every_result_has_its_files(api, ids)
    sends = list(DicomSend.objects.filter(image__analyses__in=ids).distinct())
    assert len(sends) == 3 and {s.state for s in sends} == {"queued"} and {s.attempts for s in sends} == {0}

    assert pacs_sends_requeue_orphans(orphan_after=30) == []  # a job may still be on its way
    DicomSend.objects.update(updated_at=timezone.now() - dt.timedelta(minutes=1))
    resent = pacs_sends_requeue_orphans(orphan_after=30)
    assert sorted(resent) == sorted(s.pk for s in sends)
    assert pacs_sends_requeue_orphans(orphan_after=30) == []  # just sent: not again
    waiting = broker_job_ids(queues=settings.WORKER_QUEUES, tasks=[TASK_PACS_SEND])
    assert waiting == set(resent)
    for send_id in waiting:  # what the worker does with each job
        pacs_send_run(send_id=send_id)

    for send in DicomSend.objects.filter(pk__in=resent):
        assert send.state == "sent" and send.attempts == 1, send.last_error
        assert _sc_received(pacs, send) == 1  # the heat map's Secondary Capture reached the PACS


@pytest.mark.slow
def test_a_batch_through_a_redis_restart_and_a_killed_pool_keeps_its_files_and_sends_every_result(
    api, private_redis, broker_switch, tiny_registry, service_logs, settings, tmp_path, pacs
) -> None:
    """Two batch jobs on a real worker and beat. Redis is killed and restarted empty the moment
    the first job's results are committed (its post-commit steps and the second job's message
    go with it), then the pool process running the second job is SIGKILLed. Every analysis ends
    succeeded with its heat map, every image's results reach the PACS, and once the orphan
    files are swept the heat-map folder holds exactly the files the rows point at."""
    server, port = private_redis
    url = f"redis://127.0.0.1:{port}/0"
    broker_switch(url)
    settings.ANALYSIS_BATCH_SIZE = 3
    settings.MEDIA_ROOT = tmp_path / "media"  # this test's files only, shared with its worker
    env = service_env(
        CELERY_BROKER_URL=url,
        CHANNEL_REDIS_URL=url,
        RADTRIAGE_REGISTRY=str(tiny_registry),
        RADTRIAGE_ORPHAN_AFTER="6",
        RADTRIAGE_ORPHAN_SWEEP_INTERVAL="2",
        RADTRIAGE_PACS_HOST="127.0.0.1",
        RADTRIAGE_PACS_PORT=str(pacs.port),
        RADTRIAGE_PACS_AE_TITLE="TESTPACS",
        RADTRIAGE_PACS_RETRY_DELAY="1",
    )
    worker = celery_worker("unit", env, service_logs).start(ready_text="ready.", timeout=90)
    beat = celery_beat(env, service_logs).start()
    restarted = None
    try:
        ids = _batch(api, 6, "UNIT")
        wait_for(
            lambda: Analysis.objects.filter(pk__in=ids, state="succeeded").exists(),
            timeout=120,
            interval=0.005,
            what="the first batch job to commit",
        )
        server.kill()
        restarted = redis_server(port, service_logs).start(
            ready_text="Ready to accept connections", timeout=20
        )

        def pool_process_running_a_job() -> int | None:
            # A row may still name the process the connection loss terminated: not that one.
            workers = Analysis.objects.filter(pk__in=ids, state="running").values_list("worker", flat=True)
            alive = set(worker.children())
            return next((pid for w in workers if (pid := int(w.rsplit(":", 1)[1])) in alive), None)

        pid = wait_for(
            pool_process_running_a_job, timeout=120, interval=0.05, what="the second job to run again"
        )
        os.kill(pid, signal.SIGKILL)

        wait_for(
            lambda: Analysis.objects.filter(pk__in=ids, state="succeeded").count() == len(ids),
            timeout=150,
            interval=0.2,
            what="every analysis to succeed",
        )
        images = set(Analysis.objects.filter(pk__in=ids).values_list("image_id", flat=True))
        wait_for(
            lambda: DicomSend.objects.filter(image_id__in=images, state="sent").count() == len(images),
            timeout=90,
            interval=0.2,
            what="every image's results to reach the PACS",
        )
    except AssertionError as exc:
        sends = list(DicomSend.objects.values_list("image_id", "state", "attempts", "last_error"))
        rows = list(Analysis.objects.filter(pk__in=ids).values_list("pk", "state", "attempts", "requeues"))
        lines = [
            line
            for line in worker.log().splitlines()
            if "WARNING" in line or "ERROR" in line or "pacs" in line
        ]
        raise AssertionError(f"{exc}\nsends {sends}\nanalyses {rows}\n" + "\n".join(lines[-60:])) from None
    finally:
        beat.stop()
        worker.stop()
        if restarted is not None:
            restarted.kill()

    assert Analysis.objects.filter(image_id__in=images).count() == len(ids)  # none doubled
    _assert_every_result_has_its_files(api, ids)
    for send in DicomSend.objects.filter(image_id__in=images):
        assert _sc_received(pacs, send) == 1, send

    media_remove_orphan_files(older_than=0)  # every job has ended: any file without a row is an orphan
    on_disk = {
        p.relative_to(settings.MEDIA_ROOT).as_posix()
        for p in (settings.MEDIA_ROOT / "heatmaps").rglob("*.png")
    }
    assert on_disk == set(Analysis.objects.filter(pk__in=ids).values_list("heatmap_raw", flat=True))
    _assert_every_result_has_its_files(api, ids)
