"""Backup and restore: the database, the stored files (MEDIA_ROOT or the S3 bucket, through the
media storage), the model registry and the model files it names, with a manifest of every
file's sha256.

A backup folder holds:
  database.dump      PostgreSQL (pg_dump, custom format)   or  database.sqlite3 (SQLite)
  media/...          every stored file (images, thumbnails, heat maps, quarantined uploads)
  registry/registry.json and registry/models/<model id>/<file>  (unless --models checksums)
  manifest.json      written last: what is in the folder, each file's sha256, row counts
A folder without manifest.json is an unfinished backup; restore refuses it, and any folder
whose files are missing, extra or altered.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connection, connections

from core.registry import Registry, sha256_file
from web.clinical.media_storage import media_describe, media_is_empty, media_walk, media_write
from web.clinical.models import Analysis, AuditEvent, Image, Patient, Report, Study
from web.clinical.registry.shared import registry_publish, registry_pull

FORMAT = "radtriage-backup/1"
MANIFEST = "manifest.json"
# Tables whose rows make a database "not empty" (restoring over it needs --force).
DATA_TABLES = ("auth_user", "clinical_patient", "clinical_study", "clinical_image", "clinical_auditevent")


class BackupRefused(Exception):
    """Said to the operator as it is: what is wrong and what to do."""


@dataclass
class Outcome:
    folder: Path
    counts: dict[str, int]
    files: int
    bytes: int
    notes: list[str]


Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def _sha256(path: Path) -> str:
    return sha256_file(path)


def _files_under(root: Path) -> Iterator[Path]:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _engine() -> str:
    vendor = connection.vendor
    if vendor not in ("postgresql", "sqlite"):
        raise BackupRefused(f"Backup supports PostgreSQL and SQLite, not {vendor}.")
    return vendor


def _pg_env_and_name() -> tuple[dict[str, str], str]:
    s = connection.settings_dict
    env = {**os.environ}
    for key, var in (("HOST", "PGHOST"), ("PORT", "PGPORT"), ("USER", "PGUSER"), ("PASSWORD", "PGPASSWORD")):
        if s.get(key):
            env[var] = str(s[key])
    return env, str(s["NAME"])


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    try:
        result = subprocess.run(argv, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise BackupRefused(
            f"{argv[0]} is not installed: {what} needs the PostgreSQL client tools "
            "(Debian/Ubuntu: apt-get install postgresql-client, the server's major version or newer)."
        ) from None
    if result.returncode != 0:
        raise BackupRefused(f"{what} failed ({argv[0]} exit {result.returncode}):\n{result.stderr.strip()}")


def row_counts() -> dict[str, int]:
    return {
        "users": get_user_model().objects.count(),
        "patients": Patient.objects.count(),
        "studies": Study.objects.count(),
        "images": Image.objects.count(),
        "analyses": Analysis.objects.count(),
        "reports": Report.objects.count(),
        "audit_events": AuditEvent.objects.count(),
    }


def database_is_empty() -> bool:
    tables = set(connection.introspection.table_names())
    with connection.cursor() as cursor:
        for table in DATA_TABLES:
            if table in tables:
                cursor.execute(f"SELECT 1 FROM {connection.ops.quote_name(table)} LIMIT 1")  # noqa: S608
                if cursor.fetchone():
                    return False
    return True


# --------------------------------------------------------------------------- backup


def backup_create(*, folder: Path, models: str = "copy", say: Say = _quiet) -> Outcome:
    """Write a backup into `folder` (new or empty). `models`: "copy" the model files the
    registry names, or record only their "checksums" (the files must then be in place on restore)."""
    if models not in ("copy", "checksums"):
        raise BackupRefused("--models is `copy` or `checksums`.")
    folder = folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        raise BackupRefused(f"{folder} is not empty: back up into a new or empty folder.")
    folder.mkdir(parents=True, exist_ok=True)
    engine = _engine()
    counts = row_counts()

    # 1. The database: a consistent snapshot.
    if engine == "postgresql":
        env, name = _pg_env_and_name()
        database_file = "database.dump"
        say(f"Dumping PostgreSQL database {name} ...")
        _run(
            [
                "pg_dump",
                "--format=custom",
                "--no-owner",
                "--no-acl",
                "--file",
                str(folder / database_file),
                name,
            ],
            env,
            "The database dump",
        )
    else:
        database_file = "database.sqlite3"
        say(f"Copying SQLite database {connection.settings_dict['NAME']} ...")
        source = sqlite3.connect(str(connection.settings_dict["NAME"]))
        target = sqlite3.connect(str(folder / database_file))
        try:
            source.backup(target)  # consistent even while the app writes (WAL)
        finally:
            target.close()
            source.close()

    # 2. Stored files, after the dump: every file a dumped row names is already there.
    say(f"Copying stored files from {media_describe()} ...")
    _media_copy_out(folder / "media")

    # 3. The model registry and the model files it names.
    registry_path = Path(settings.RADTRIAGE_REGISTRY)
    registry_pull(registry_path, every=0)  # the deployment's, if shared through the store
    model_rows: list[dict[str, Any]] = []
    if registry_path.is_file():
        (folder / "registry").mkdir()
        shutil.copy2(registry_path, folder / "registry" / "registry.json")
        registry = Registry.load(registry_path)
        for entry in sorted(registry.models.values(), key=lambda e: e.id):
            artifact = registry.artifact_path(entry)
            row: dict[str, Any] = {"id": entry.id, "artifact": entry.artifact, "present": artifact.is_file()}
            if artifact.is_file():
                row["sha256"] = _sha256(artifact)
                if models == "copy":
                    copy = Path("registry") / "models" / entry.id / artifact.name
                    (folder / copy).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(artifact, folder / copy)
                    row["file"] = copy.as_posix()
            model_rows.append(row)
    else:
        say(f"No model registry at {registry_path}: none backed up.")

    # 4. The manifest, last: its presence says the backup is complete.
    files: dict[str, str] = {}
    total = 0
    for path in _files_under(folder):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            files[rel] = _sha256(path)
            total += path.stat().st_size
    manifest = {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "database": {"engine": engine, "file": database_file},
        "media": "media",
        "registry": "registry/registry.json" if registry_path.is_file() else None,
        "models": model_rows,
        "model_files": models,
        "counts": counts,
        "files": files,
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return Outcome(folder=folder, counts=counts, files=len(files), bytes=total, notes=[])


# --------------------------------------------------------------------------- restore


def backup_verify(folder: Path) -> dict[str, Any]:
    """The manifest of a complete, unaltered backup; BackupRefused naming what is wrong."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise BackupRefused(f"{folder} is not a folder.")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BackupRefused(
            f"{folder} is an incomplete backup: it has no {MANIFEST} (the backup did not finish). "
            "Use another backup."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BackupRefused(f"{manifest_path} is damaged ({exc.msg}).") from None
    if manifest.get("format") != FORMAT:
        raise BackupRefused(f"{folder} is not a RadTriage backup of format {FORMAT}.")
    expected: dict[str, str] = manifest["files"]
    present = {p.relative_to(folder).as_posix() for p in _files_under(folder)} - {MANIFEST}
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    altered = sorted(rel for rel in set(expected) & present if _sha256(folder / rel) != expected[rel])
    problems = []
    if missing:
        problems.append(f"{len(missing)} file(s) missing: {', '.join(missing[:5])}")
    if altered:
        problems.append(
            f"{len(altered)} file(s) whose sha256 does not match the manifest: {', '.join(altered[:5])}"
        )
    if extra:
        problems.append(f"{len(extra)} file(s) not in the manifest: {', '.join(extra[:5])}")
    database_file = manifest["database"]["file"]
    if database_file not in expected:
        problems.append(f"the database file {database_file} is not in the manifest")
    if problems:
        raise BackupRefused(
            f"{folder} is incomplete or altered; nothing was restored:\n- " + "\n- ".join(problems)
        )
    return dict(manifest)


def _media_copy_out(target: Path) -> None:
    target.mkdir()
    for name, _modified in media_walk():
        path = (target / name).resolve()
        if not path.is_relative_to(target):
            raise BackupRefused(f"The stored file {name!r} names a place outside the backup folder.")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with default_storage.open(name, "rb") as source, open(path, "wb") as copy:
                shutil.copyfileobj(source, copy, 1 << 20)
        except FileNotFoundError:
            # Removed since the listing (a sweep of a file no row names): not in the dump either.
            path.unlink(missing_ok=True)


def _media_copy_in(source: Path) -> int:
    for name, _modified in list(media_walk()):
        default_storage.delete(name)
    copied = 0
    for path in _files_under(source):
        with open(path, "rb") as handle:
            media_write(path.relative_to(source).as_posix(), File(handle))
        copied += 1
    return copied


def backup_restore(*, folder: Path, force: bool = False, say: Say = _quiet) -> Outcome:
    """Restore a backup into this deployment's database, media storage and registry. Refuses an
    incomplete or altered backup, and a non-empty database or media storage unless `force`
    (which replaces them)."""
    manifest = backup_verify(folder)
    folder = folder.resolve()
    engine = _engine()
    if manifest["database"]["engine"] != engine:
        raise BackupRefused(
            f"This backup is of a {manifest['database']['engine']} database; DATABASE_URL points at "
            f"{engine}. Restore into the same kind of database."
        )
    if not force:
        if not database_is_empty():
            raise BackupRefused(
                f"The database {connection.settings_dict['NAME']} is not empty (it has users, patients, "
                "studies or audit events). Restore into an empty database, or add --force to replace "
                "everything in it with the backup."
            )
        if not media_is_empty():
            raise BackupRefused(
                f"The media storage ({media_describe()}) is not empty. Point MEDIA_ROOT (or S3_BUCKET) at "
                "an empty folder (bucket), or add --force to replace its files with the backup's."
            )
    registry_path = Path(settings.RADTRIAGE_REGISTRY)
    notes: list[str] = []

    # The registry first (no change yet if its model files are not in place).
    if manifest.get("registry"):
        staged = folder / manifest["registry"]
        Registry.load(staged)  # a damaged registry stops the restore before anything changes
        pending = []
        for row in manifest["models"]:
            if not row.get("present"):
                notes.append(f"model {row['id']} had no file when backed up ({row['artifact']})")
                continue
            artifact = Path(row["artifact"])
            target = artifact if artifact.is_absolute() else registry_path.parent / artifact
            if row.get("file"):
                if not (target.is_file() and _sha256(target) == row["sha256"]):
                    pending.append((folder / row["file"], target))
            elif not (target.is_file() and _sha256(target) == row["sha256"]):
                state = "not the backed-up file" if target.is_file() else "missing"
                problem = f"model {row['id']}: {target} is {state}"
                if not force:
                    raise BackupRefused(
                        f"This backup holds only the model files' checksums, and {problem}. Put the "
                        "model files in place (or add --force to restore without them)."
                    )
                notes.append(problem)
    # The database.
    database_file = folder / manifest["database"]["file"]
    if engine == "postgresql":
        env, name = _pg_env_and_name()
        say(f"Restoring PostgreSQL database {name} ...")
        connections.close_all()
        _run(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-acl",
                "--exit-on-error",
                "--single-transaction",
                "--dbname",
                name,
                str(database_file),
            ],
            env,
            "The database restore",
        )
    else:
        target_path = Path(str(connection.settings_dict["NAME"]))
        say(f"Restoring SQLite database {target_path} ...")
        connections.close_all()
        target_path.parent.mkdir(parents=True, exist_ok=True)
        backup_db = sqlite3.connect(str(database_file))
        live_db = sqlite3.connect(str(target_path))
        try:
            backup_db.backup(live_db)
        finally:
            live_db.close()
            backup_db.close()

    # Stored files.
    say(f"Restoring stored files into {media_describe()} ...")
    copied = _media_copy_in(folder / manifest["media"])

    # The registry and its model files.
    if manifest.get("registry"):
        say(f"Restoring the model registry into {registry_path} ...")
        for source_file, target_file in pending:
            target_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_file, target_file)
        registry_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / manifest["registry"], registry_path)
        registry_publish(registry_path)

    counts = row_counts()
    if counts != manifest["counts"]:
        raise BackupRefused(
            f"The restored database's row counts {counts} differ from the backup's {manifest['counts']}."
        )
    return Outcome(folder=folder, counts=counts, files=copied, bytes=0, notes=notes)
