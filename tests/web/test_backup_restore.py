"""manage.py backup / restore: a round trip into a fresh database gives back every study, every
stored file (same sha256) and every result; a non-empty database, an incomplete or altered
backup are refused with the reason, and nothing is changed.

The commands run as an operator runs them (subprocesses with their own DATABASE_URL,
MEDIA_ROOT and RADTRIAGE_REGISTRY) against the committed test database and fresh databases
named h_backup_*."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.files.base import ContentFile

from core.registry import sha256_file
from tests.web.fixtures import db_url_for_services, dicom_bytes, png_bytes, upload
from web.clinical.models import Analysis, Image

REPO = Path(__file__).resolve().parents[2]

SNAPSHOT = """
import hashlib, json
from pathlib import Path
from django.conf import settings
from django.contrib.auth import get_user_model
from core.registry import Registry, sha256_file
from web.clinical.models import Analysis, AuditEvent, Image, Study

def digest(field):
    if not field:
        return ""
    with field.open("rb") as handle:  # through the media storage: a folder or a bucket
        return hashlib.sha256(handle.read()).hexdigest()

registry = Registry.load(settings.RADTRIAGE_REGISTRY)
print(json.dumps({
    "users": sorted(get_user_model().objects.values_list("username", flat=True)),
    "studies": [
        [s.study_instance_uid, s.accession_number, s.status, s.patient.patient_id, s.patient.name,
         str(s.patient.birth_date)]
        for s in Study.objects.select_related("patient").order_by("study_instance_uid")
    ],
    "images": [
        [i.sop_instance_uid, i.study.study_instance_uid, i.sha256, digest(i.file), digest(i.thumbnail)]
        for i in Image.objects.select_related("study").order_by("sop_instance_uid")
    ],
    "results": [
        [a.image.sop_instance_uid, a.condition, a.state, a.probability, a.positive, a.model_id,
         digest(a.heatmap_raw)]
        for a in Analysis.objects.select_related("image").order_by("image__sop_instance_uid", "condition")
    ],
    "audit": sorted([e.actor_label, e.action, e.object_id] for e in AuditEvent.objects.all()),
    "registry": {"active": registry.active_models, "models": {
        m.id: sha256_file(registry.artifact_path(m)) if registry.artifact_path(m).is_file() else None
        for m in registry.models.values()}},
}, sort_keys=True))
"""


class Site:
    """One deployment's places: its database, stored files and model registry."""

    def __init__(self, database_url: str, root: Path, storage: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.media = root / "media"
        self.registry = root / "models" / "registry.json"
        self.storage = storage or {}  # MEDIA_STORAGE=s3 and its bucket, or the folder

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "MEDIA_ROOT": str(self.media),
            "RADTRIAGE_REGISTRY": str(self.registry),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "LOG_LEVEL": "WARNING",
            **self.storage,
        }

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    def snapshot(self) -> dict[str, Any]:
        result = self.manage("shell", "-c", SNAPSHOT)
        assert result.returncode == 0, result.stderr[-3000:]
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def write_registry(path: Path) -> None:
    """A registry naming one model file (its bytes are what matters here) and one missing."""
    path.parent.mkdir(parents=True)
    artifact = path.parent / "weights" / "pneumonia.keras"
    artifact.parent.mkdir()
    artifact.write_bytes(os.urandom(4096))
    base = {
        "architecture": "mobilenetv2",
        "input_size": [32, 32],
        "class_labels": ["normal", "abnormal"],
        "threshold": 0.5,
        "status": "validated",
    }
    doc = {
        "schema_version": 1,
        "active_models": {"pneumonia": "pneumonia-backup-test"},
        "models": [
            {
                **base,
                "id": "pneumonia-backup-test",
                "condition": "pneumonia",
                "artifact": "weights/pneumonia.keras",
                "sha256": sha256_file(artifact),
            },
            {**base, "id": "cardiomegaly-missing", "condition": "cardiomegaly", "artifact": "gone.keras"},
        ],
    }
    path.write_text(json.dumps(doc, indent=2))


@pytest.fixture()
def source(transactional_db: Any, api: Any, settings: Any, tmp_path: Path) -> Site:
    """A deployment with data committed (the commands are other processes): two DICOM studies
    and a PNG, each with results and a heat map, and a model registry."""
    site = Site(db_url_for_services(), tmp_path / "source")
    settings.MEDIA_ROOT = str(site.media)
    write_registry(site.registry)
    for n, data, name in (
        (1, dicom_bytes(patient_id="MRN-B1", patient_name="Backup^Betty", seed=1), "a.dcm"),
        (2, dicom_bytes(patient_id="MRN-B2", patient_name="Restore^Rob", seed=2), "b.dcm"),
        (3, png_bytes(seed=3), "c.png"),
    ):
        extra = {"patient_id": "MRN-B3", "conditions": ["pneumonia"]} if name.endswith(".png") else {}
        assert upload(api, data, name=name, **extra).status_code == 201
        for analysis in Analysis.objects.filter(image__original_filename=name):
            analysis.heatmap_raw.save(f"heat{n}.png", ContentFile(png_bytes(size=32, seed=n)), save=False)
            analysis.state = Analysis.State.SUCCEEDED
            analysis.probability = 0.1 * n
            analysis.positive = n > 2
            analysis.model_id = "pneumonia-backup-test"
            analysis.save()
    assert Image.objects.count() == 3
    return site


@contextlib.contextmanager
def empty_database() -> Iterator[str]:
    """The URL of a new database with no tables, dropped afterwards."""
    name = f"h_backup_{uuid.uuid4().hex[:8]}"
    admin_url = db_url_for_services().rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield db_url_for_services().rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def fresh(tmp_path: Path) -> Iterator[Site]:
    """An empty database (no tables) and empty folders: where a backup is restored."""
    with empty_database() as url:
        yield Site(url, tmp_path / "fresh")


def backed_up(site: Site, folder: Path, *args: str) -> Path:
    result = site.manage("backup", str(folder), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Backed up into" in result.stdout
    return folder


def test_a_round_trip_gives_back_every_study_file_and_result(source, fresh, tmp_path) -> None:
    before = source.snapshot()
    folder = backed_up(source, tmp_path / "backup")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 3 and manifest["database"]["engine"] == "postgresql"
    assert all(len(sha) == 64 for sha in manifest["files"].values())
    assert "registry/models/pneumonia-backup-test/pneumonia.keras" in manifest["files"]

    result = fresh.manage("restore", str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 images" in result.stdout and "cardiomegaly-missing had no file" in result.stdout

    after = fresh.snapshot()
    assert after == before
    assert len(after["images"]) == 3 and all(img[3] == img[2] for img in after["images"])  # file = its hash
    assert {r[6] for r in after["results"]} - {""}  # heat maps came back, byte for byte
    assert after["registry"]["models"]["pneumonia-backup-test"] is not None
    assert sorted(s[4] for s in after["studies"] if s[4]) == ["Backup^Betty", "Restore^Rob"]

    # Again, over the restored (now non-empty) database: refused, unless --force.
    again = fresh.manage("restore", str(folder))
    assert again.returncode != 0 and "is not empty" in again.stderr and "--force" in again.stderr
    forced = fresh.manage("restore", str(folder), "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert fresh.snapshot() == before


def test_restore_refuses_a_database_with_data_and_changes_nothing(source, tmp_path) -> None:
    folder = backed_up(source, tmp_path / "backup")
    code = "from web.clinical.models import Patient; Patient.objects.create(patient_id='MRN-NEW')"
    assert source.manage("shell", "-c", code).returncode == 0
    before = source.snapshot()

    result = source.manage("restore", str(folder))

    assert result.returncode != 0
    assert "is not empty" in result.stderr
    assert source.snapshot() == before


@pytest.mark.parametrize("damage", ["altered", "missing", "extra", "no_manifest"])
def test_restore_refuses_an_incomplete_or_altered_backup(source, fresh, tmp_path, damage) -> None:
    folder = backed_up(source, tmp_path / "backup")
    stored = sorted((folder / "media").rglob("*.png"))[0]
    if damage == "altered":
        stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")
    elif damage == "missing":
        stored.unlink()
    elif damage == "extra":
        (folder / "media" / "stray.dcm").write_bytes(b"not from this backup")
    else:
        (folder / "manifest.json").unlink()

    result = fresh.manage("restore", str(folder))

    assert result.returncode != 0
    expected = {
        "altered": "sha256 does not match",
        "missing": "missing",
        "extra": "not in the manifest",
        "no_manifest": "incomplete backup",
    }[damage]
    assert expected in result.stderr
    if damage in ("altered", "missing"):
        assert "nothing was restored" in result.stderr
        assert stored.relative_to(folder).as_posix() in result.stderr
    # Nothing was touched: no tables, no files.
    with psycopg.connect(fresh.database_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)
    assert not fresh.media.exists() and not fresh.registry.exists()


def test_a_backup_refuses_a_folder_that_is_not_empty(source, tmp_path) -> None:
    folder = tmp_path / "occupied"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")

    result = source.manage("backup", str(folder))

    assert result.returncode != 0 and "is not empty" in result.stderr
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_checksum_only_backup_needs_the_model_files_in_place(source, fresh, tmp_path) -> None:
    folder = backed_up(source, tmp_path / "backup", "--models", "checksums")
    assert not (folder / "registry" / "models").exists()

    refused = fresh.manage("restore", str(folder))
    assert refused.returncode != 0 and "only the model files' checksums" in refused.stderr
    assert "pneumonia-backup-test" in refused.stderr

    # The operator puts the model file back where the registry says; then it restores.
    model = source.registry.parent / "weights" / "pneumonia.keras"
    (fresh.registry.parent / "weights").mkdir(parents=True)
    (fresh.registry.parent / "weights" / "pneumonia.keras").write_bytes(model.read_bytes())
    restored = fresh.manage("restore", str(folder))
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert fresh.snapshot() == source.snapshot()


def test_sqlite_round_trip(tmp_path) -> None:
    source = Site(f"sqlite:///{tmp_path / 'source.sqlite3'}", tmp_path / "source")
    write_registry(source.registry)
    assert source.manage("migrate", "--noinput").returncode == 0
    made = source.manage(
        "shell",
        "-c",
        "from django.core.files.base import ContentFile\n"
        "from django.contrib.auth import get_user_model\n"
        "from web.clinical.models import Image, Patient, Study\n"
        "get_user_model().objects.create_user('dr.lite', password='pw-lite-123456')\n"
        "p = Patient.objects.create(patient_id='MRN-LITE', name='Lite^Lou')\n"
        "s = Study.objects.create(patient=p, study_instance_uid='1.2.3.99')\n"
        "i = Image(study=s, sop_instance_uid='1.2.3.99.1', sha256='ab' * 32, format='png',\n"
        "          size_bytes=6, width=1, height=1)\n"
        "i.file.save('x.png', ContentFile(b'pixels'), save=False)\n"
        "i.save()\n",
    )
    assert made.returncode == 0, made.stderr[-2000:]
    before = source.snapshot()
    folder = backed_up(source, tmp_path / "backup")
    assert json.loads((folder / "manifest.json").read_text())["database"]["engine"] == "sqlite"

    target = Site(f"sqlite:///{tmp_path / 'restored.sqlite3'}", tmp_path / "restored")
    result = target.manage("restore", str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert target.snapshot() == before and before["studies"][0][3] == "MRN-LITE"
