"""MEDIA_STORAGE=s3: every stored file lives in an S3-compatible bucket (moto's server mode on
loopback, started here), and neither this process nor the worker has a media folder, as on a
worker host that shares no volume with the web server. Upload, analysis by a real worker, heat
map, report PDF, de-identified export, backup and restore all work; the sweeps and the upload
journals work on the bucket; the registry is shared through it, so a model activated on the
web host is the one the worker host runs; an unreachable store refuses an upload and keeps
nothing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from tests.web.fixtures import (
    Service,
    celery_worker,
    dicom_bytes,
    free_port,
    service_env,
    stored_state,
    upload,
    wait_for,
    with_role,
)
from tests.web.test_backup_restore import Site, empty_database
from web.clinical.media_storage import StorageUnavailable
from web.storage_config import media_storage_setting


@pytest.fixture(scope="module")
def s3_endpoint(service_logs: Path) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = Service("moto-s3", argv, dict(os.environ), service_logs)
    server.start(ready_text="Running on", timeout=60)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class Bucket:
    env: dict[str, str]  # what a process needs to use it: MEDIA_STORAGE=s3 and the bucket
    no_media: Path  # MEDIA_ROOT everywhere: a folder that must never come to exist

    @property
    def name(self) -> str:
        return self.env["S3_BUCKET"]

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.env["S3_ENDPOINT_URL"],
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def objects(self) -> dict[str, bytes]:
        client = self.client()
        listing = client.list_objects_v2(Bucket=self.name).get("Contents", [])
        return {o["Key"]: client.get_object(Bucket=self.name, Key=o["Key"])["Body"].read() for o in listing}


def new_bucket(endpoint: str, root: Path, *, create: bool = True) -> Bucket:
    bucket = Bucket(
        env={
            "MEDIA_STORAGE": "s3",
            "S3_BUCKET": f"radtriage-{uuid.uuid4().hex[:10]}",
            "S3_ENDPOINT_URL": endpoint,
            "S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "MEDIA_ROOT": str(root / "no-media-folder"),
        },
        no_media=root / "no-media-folder",
    )
    if create:
        bucket.client().create_bucket(Bucket=bucket.name)
    return bucket


def store_in(bucket: Bucket, settings: Any) -> None:
    """This process's media storage pointed at `bucket`, with no media folder."""
    storages = dict(settings.STORAGES)
    storages["default"] = media_storage_setting(bucket.env)
    settings.STORAGES = storages
    settings.MEDIA_STORAGE = "s3"
    settings.MEDIA_ROOT = bucket.no_media


@pytest.fixture()
def bucket(s3_endpoint: str, settings: Any, tmp_path: Path) -> Bucket:
    """A new bucket, and this process's media storage pointed at it."""
    made = new_bucket(s3_endpoint, tmp_path)
    store_in(made, settings)
    return made


def host_registry(tiny_registry: Path, host: Path) -> Path:
    """A host's own copy of the registry and the model files (which ship in the image)."""
    shutil.copytree(tiny_registry.parent, host)
    return host / tiny_registry.name


def admin_client(django_user_model: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(with_role(django_user_model.objects.create_user("it.admin"), "admin"))
    return client


def test_a_study_goes_from_upload_to_signed_report_export_and_backup_with_no_shared_folder(
    transactional_db: Any,
    api: Any,
    django_user_model: Any,
    bucket: Bucket,
    private_redis: Any,
    broker_switch: Any,
    tiny_registry: Path,
    service_logs: Path,
    tmp_path: Path,
    settings: Any,
) -> None:
    from web.clinical.models import Analysis, Image, Report
    from web.clinical.registry.activation import registry_activate
    from web.clinical.registry.shared import REGISTRY_OBJECT

    # The web host (this process) and the worker host each have their own registry file.
    settings.RADTRIAGE_REGISTRY = host_registry(tiny_registry, tmp_path / "web-host")
    worker_registry = host_registry(tiny_registry, tmp_path / "worker-host")
    call_command("registry_sync", "--from", str(tiny_registry), "--to", str(settings.RADTRIAGE_REGISTRY))
    assert REGISTRY_OBJECT in bucket.objects()
    redis_url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(redis_url)  # this test's own worker, on a Redis no other worker reads
    env = service_env(
        RADTRIAGE_REGISTRY=str(worker_registry),
        RADTRIAGE_REGISTRY_PULL_SECONDS="0",
        REDIS_URL=redis_url,
        **bucket.env,
    )
    worker = celery_worker("s3-worker", env, service_logs).start(ready_text="ready.", timeout=120)
    try:
        response = upload(
            api,
            dicom_bytes(patient_id="MRN-S3-1", patient_name="Bucket^Bea", accession="ACC-S3"),
            conditions="pneumonia",
        )
        assert response.status_code == 201, response.content
        image = Image.objects.get(pk=response.json()["image"]["id"])
        stored = bucket.objects()
        assert image.file.name in stored and image.thumbnail.name in stored
        assert hashlib.sha256(stored[image.file.name]).hexdigest() == image.sha256

        # The worker reads the image from the bucket and writes the heat map there.
        analysis = wait_for(
            lambda: Analysis.objects.filter(image=image, condition="pneumonia", state="succeeded").first(),
            timeout=120,
            what="the worker's result",
        )
        assert analysis.heatmap_raw.name.startswith("heatmaps/")
        assert analysis.model_id == "pneumonia-tiny-test"
        raw = api.get(f"/api/analyses/{analysis.pk}/heatmap/?kind=raw")
        assert raw.status_code == 200
        assert b"".join(raw.streaming_content) == bucket.objects()[analysis.heatmap_raw.name]
        overlay = api.get(f"/api/analyses/{analysis.pk}/heatmap/")
        assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")

        # A signed report's PDF is rendered by the worker into the bucket and served from it.
        draft = api.post(
            f"/api/studies/{image.study_id}/reports/", {"impression": "Lungs clear."}, format="json"
        )
        assert draft.status_code == 200, draft.content
        assert api.post(f"/api/reports/{draft.json()['id']}/sign/").status_code == 200
        report = wait_for(
            lambda: Report.objects.filter(pk=draft.json()["id"]).exclude(pdf="").first(),
            timeout=120,
            what="the report PDF",
        )
        pdf = api.get(f"/api/reports/{report.pk}/pdf/")
        assert pdf.status_code == 200
        assert b"".join(pdf.streaming_content) == bucket.objects()[report.pdf.name]
        assert bucket.objects()[report.pdf.name].startswith(b"%PDF")

        # The de-identified export reads the original from the bucket.
        export = admin_client(django_user_model).get(f"/api/studies/{image.study_id}/deidentified/")
        assert export.status_code == 200, export.content
        archive = zipfile.ZipFile(io.BytesIO(b"".join(export.streaming_content)))
        dicoms = [n for n in archive.namelist() if n.endswith(".dcm")]
        assert len(dicoms) == 1 and b"Bucket^Bea" not in archive.read(dicoms[0])

        # An admin activates another model on the web host: the worker host runs it next.
        admin = django_user_model.objects.get(username="it.admin")
        registry_activate(
            model_id="pneumonia-always-yes-experimental", actor=admin, reason="Trying the other head"
        )
        second = upload(api, dicom_bytes(patient_id="MRN-S3-2", seed=7), conditions="pneumonia")
        assert second.status_code == 201, second.content
        rerun = wait_for(
            lambda: Analysis.objects.filter(image_id=second.json()["image"]["id"], state="succeeded").first(),
            timeout=120,
            what="the second result",
        )
        assert rerun.model_id == "pneumonia-always-yes-experimental"
        active = json.loads(worker_registry.read_text())["active_models"]
        assert active["pneumonia"] == "pneumonia-always-yes-experimental"
    finally:
        worker.stop()
    assert not bucket.no_media.exists(), "a media folder was written"

    # Backup and restore, as an operator runs them: every object of the bucket comes back,
    # byte for byte, into a new bucket beside a new database.
    folder = tmp_path / "backup"
    source = Site(env["DATABASE_URL"], tmp_path / "source", storage=bucket.env)
    made = source.manage("backup", str(folder), "--models", "checksums")
    assert made.returncode == 0, made.stderr[-3000:]
    assert "the bucket" in made.stdout
    manifest = json.loads((folder / "manifest.json").read_text())
    in_bucket = bucket.objects()
    assert {f"media/{key}" for key in in_bucket} <= set(manifest["files"])
    before = source.snapshot()
    target_bucket = new_bucket(bucket.env["S3_ENDPOINT_URL"], tmp_path / "target")
    with empty_database() as url:
        target = Site(url, tmp_path / "source", storage=target_bucket.env)
        restored = target.manage("restore", str(folder))
        assert restored.returncode == 0, restored.stderr[-3000:]
        assert target.snapshot() == before
    assert target_bucket.objects() == in_bucket
    assert not bucket.no_media.exists() and not target_bucket.no_media.exists()


def test_the_sweeps_and_upload_journals_work_on_the_bucket(db: Any, bucket: Bucket) -> None:
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from web.clinical.files import (
        UPLOAD_JOURNALS,
        StoredFiles,
        media_remove_abandoned_uploads,
        media_remove_orphan_files,
    )

    # A web process that died half-way through an upload: its journal and file stay behind.
    stored = StoredFiles()
    stored.expect("images/abandoned.dcm")
    default_storage.save("images/abandoned.dcm", ContentFile(b"half an upload"))
    journals = [k for k in bucket.objects() if k.startswith(f"{UPLOAD_JOURNALS}/")]
    assert len(journals) == 1 and bucket.objects()[journals[0]] == b"images/abandoned.dcm\n"
    # A heat map whose job died before its row committed.
    default_storage.save("heatmaps/1/analysis-999999-raw.png", ContentFile(b"orphan"))

    assert media_remove_abandoned_uploads(older_than=3600) == []  # still in progress
    assert media_remove_abandoned_uploads(older_than=-60) == ["images/abandoned.dcm"]
    assert media_remove_orphan_files(older_than=-60) == ["heatmaps/1/analysis-999999-raw.png"]
    assert bucket.objects() == {}
    assert not bucket.no_media.exists()


def test_an_unreachable_store_refuses_the_upload_with_a_reason_and_keeps_nothing(
    db: Any, api: Any, settings: Any, tmp_path: Path
) -> None:
    closed = new_bucket(f"http://127.0.0.1:{free_port()}", tmp_path, create=False)  # nothing listens
    store_in(closed, settings)
    before = stored_state()

    response = upload(api, dicom_bytes(patient_id="MRN-S3-DOWN"), conditions="pneumonia")

    assert response.status_code == 503, response.content
    assert "image storage cannot be reached" in response.json()["error"]
    assert "nothing of it was kept" in response.json()["error"]
    assert stored_state() == before
    assert not closed.no_media.exists()


def test_a_bucket_made_meanwhile_counts_as_there_and_a_missing_one_stops_the_check(
    bucket: Bucket, s3_endpoint: str, settings: Any, tmp_path: Path
) -> None:
    # Two web containers starting together: the one whose create comes second finds the
    # bucket made (MinIO and SeaweedFS answer BucketAlreadyOwnedByYou) and goes on.
    from botocore.stub import Stubber
    from django.core.files.storage import default_storage

    from web.clinical.media_storage import media_check

    client = default_storage.connection.meta.client
    with Stubber(client) as stub:
        stub.add_client_error("head_bucket", service_error_code="404", http_status_code=404)
        stub.add_client_error(
            "create_bucket", service_error_code="BucketAlreadyOwnedByYou", http_status_code=409
        )
        assert default_storage.bucket_ensure() is False
        stub.assert_no_pending_responses()
    # A worker's check (no creating) on a bucket that does not exist: stopped, with the reason.
    missing = new_bucket(s3_endpoint, tmp_path / "missing", create=False)
    store_in(missing, settings)
    with pytest.raises(StorageUnavailable, match=f"The bucket {missing.name} does not exist"):
        media_check()
    assert missing.name not in {b["Name"] for b in missing.client().list_buckets()["Buckets"]}


def test_a_journal_that_cannot_be_removed_after_the_commit_keeps_the_upload(
    transactional_db: Any, api: Any, bucket: Bucket, monkeypatch: Any
) -> None:
    from web.clinical.files import UPLOAD_JOURNALS
    from web.clinical.models import Image
    from web.clinical.object_storage import ObjectMediaStorage

    real_delete = ObjectMediaStorage.delete

    def delete(self: ObjectMediaStorage, name: str) -> None:  # fails the journal's removal
        if name.startswith(f"{UPLOAD_JOURNALS}/"):
            raise StorageUnavailable("The object store refused the request: SlowDown", "SlowDown")
        real_delete(self, name)

    monkeypatch.setattr(ObjectMediaStorage, "delete", delete)
    response = upload(api, dicom_bytes(patient_id="MRN-S3-JOURNAL"), conditions="pneumonia")

    assert response.status_code == 201, response.content
    image = Image.objects.get(pk=response.json()["image"]["id"])
    kept = bucket.objects()
    assert image.file.name in kept and image.thumbnail.name in kept
    assert [k for k in kept if k.startswith(f"{UPLOAD_JOURNALS}/")]  # left for the sweep


def test_a_store_outage_asks_a_dicom_sender_to_send_again(db: Any, settings: Any, tmp_path: Path) -> None:
    from web.clinical.dicom.ingest import OUT_OF_RESOURCES, dicom_instance_store
    from web.clinical.models import Image

    closed = new_bucket(f"http://127.0.0.1:{free_port()}", tmp_path, create=False)  # nothing listens
    store_in(closed, settings)

    stored = dicom_instance_store(
        data=dicom_bytes(patient_id="MRN-S3-CSTORE"), filename="a.dcm", ip_address=None
    )

    assert stored.status == OUT_OF_RESOURCES  # 0xA700: try again later, not "cannot understand"
    assert "cannot be reached" in stored.comment and not Image.objects.exists()


def test_a_change_that_cannot_be_published_is_undone_and_not_on_record(
    db: Any, bucket: Bucket, settings: Any, tiny_registry: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    from web.clinical.models import AuditEvent
    from web.clinical.registry import shared
    from web.clinical.registry.activation import registry_activate

    settings.RADTRIAGE_REGISTRY = host_registry(tiny_registry, tmp_path / "web-host")
    before = settings.RADTRIAGE_REGISTRY.read_bytes()

    def publish(path: Any = None) -> None:
        raise StorageUnavailable("The object store cannot be reached: timed out")

    monkeypatch.setattr(shared, "registry_publish", publish)
    with pytest.raises(StorageUnavailable):
        registry_activate(
            model_id="pneumonia-always-yes-experimental", actor=None, reason="trial", command="t"
        )

    assert settings.RADTRIAGE_REGISTRY.read_bytes() == before  # this host runs what it ran
    assert not AuditEvent.objects.filter(action="model.activate").exists()


def test_training_refuses_a_registry_shared_through_the_bucket(db: Any, bucket: Bucket) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="shares one registry across hosts"):
        call_command("fit_population", "--model", "pneumonia-tiny-test")
