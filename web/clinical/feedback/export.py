"""The feedback export: labelled, de-identified images in the layout `manage.py train` and
`manage.py train_boxed` read, written whole or not at all, and audited.

OUT/
  <condition>/<train|val|test>/<negative|positive>/<group>-<token>.png   8-bit grayscale
  manifest.csv             path, condition, split, label, group, source, extra
  <condition>_boxes.csv    path, x0, y0, x1, y1 (fractions): the regions of missed findings
  feedback.json            the label rule, the counts, what was left out and why

De-identification follows web.clinical.dicom.deidentify: pixels only (decoded as at serve time,
re-encoded without any metadata), file names from a keyed hash, the patient replaced by a
pseudonymous group that is the same in every export (keyed by the installation's SECRET_KEY),
and DICOM images with burned-in annotation left out. The split is chosen by the group, so one
patient's images never fall in two splits.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import secrets
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from PIL import Image as PilImage
from pydicom.errors import InvalidDicomError

from core.errors import XRayDecodeError
from core.imaging import load_xray
from web.access import Capability, can
from web.clinical.audit.records import audit_record
from web.clinical.dicom.deidentify import Export, burned_in_annotation
from web.clinical.feedback.labels import Labelled, Labels, feedback_labels, rule_table
from web.clinical.models import Image

SOURCE = "radtriage-feedback"
MANIFEST_COLUMNS = ["path", "condition", "split", "label", "group", "source", "extra"]
BOX_COLUMNS = ["path", "x0", "y0", "x1", "y1"]
# Cumulative shares of the groups' hash: 70% train, 15% val, 15% test.
SPLIT_SHARES = (("train", 70), ("val", 85), ("test", 100))
LABEL_FOLDERS = ("negative", "positive")
BURNED_IN = "DICOM with burned-in annotation (pixels may carry identifiers)"
UNREADABLE = "image file missing or unreadable"


class FeedbackExportRefused(Exception):
    """The export cannot start as asked; the message says why. Nothing was written."""


def feedback_since(text: str) -> dt.date:
    """--since as a date (YYYY-MM-DD)."""
    try:
        return dt.date.fromisoformat(text) if len(text) == 10 else _bad_date(text)
    except ValueError:
        return _bad_date(text)


def _bad_date(text: str) -> dt.date:
    raise FeedbackExportRefused(f"--since must be a date written YYYY-MM-DD (e.g. 2026-01-31), not {text!r}.")


def feedback_group(patient_id: str) -> str:
    """The patient's pseudonymous group: the same in every export of this installation, and
    meaningless without its SECRET_KEY."""
    return _groups().pseudonym(patient_id)


def feedback_split(group: str) -> str:
    """train, val or test, by the group alone (deterministic): 70/15/15."""
    share = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % 100
    return next(split for split, upto in SPLIT_SHARES if share < upto)


def _groups() -> Export:
    return Export(salt=hashlib.sha256(f"radtriage-feedback|{settings.SECRET_KEY}".encode()).hexdigest())


def feedback_export(*, since: dt.date, out: Path, actor: Any, force: bool = False) -> dict[str, Any]:
    """Write the export to `out` (a new or empty folder; with `force`, one that is replaced)
    and audit it; returns the summary (counts only, never an identifier). Raises
    FeedbackExportRefused before writing anything when it cannot be done as asked."""
    if not can(actor, Capability.MANAGE):
        raise FeedbackExportRefused(
            "The feedback export is for admins: --user must be an active admin account."
        )
    out = Path(out).absolute()
    _check_out(out, force=force)
    start = timezone.make_aware(dt.datetime.combine(since, dt.time.min))
    labels = feedback_labels(since=start)
    if not labels.labelled:
        raise FeedbackExportRefused(
            f"No feedback since {since.isoformat()} gives a label: nothing written. {_left_out_words(labels)}"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        summary = _write(labels, staging, since=since)
        summary["out"] = str(out)
        with transaction.atomic():
            audit_record(actor=actor, action="export.feedback", detail={**summary, "force": force})
            _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _check_out(out: Path, *, force: bool) -> None:
    if not out.parent.is_dir():
        raise FeedbackExportRefused(f"{out.parent} does not exist: create it, or choose another OUT.")
    if out.exists() and not out.is_dir():
        raise FeedbackExportRefused(f"{out} is a file, not a folder: choose another OUT.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FeedbackExportRefused(
            f"{out} is not empty: choose a new folder, or add --force to replace what is there."
        )


def _left_out_words(labels: Labels) -> str:
    parts = [f"{n} image(s) with conflicting verdicts ({c})" for c, n in sorted(labels.conflicts.items())]
    parts += [f"{n} verdict(s) set aside: {words}" for words, n in sorted(labels.set_aside.items())]
    return ("Left out: " + "; ".join(parts) + ".") if parts else ""


def _write(labels: Labels, root: Path, *, since: dt.date) -> dict[str, Any]:
    groups = _groups()
    by_image: dict[int, list[Labelled]] = defaultdict(list)
    for item in labels.labelled:
        by_image[item.image.pk].append(item)
    manifest: list[list[str]] = []
    boxes: dict[str, list[list[str]]] = defaultdict(list)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    splits: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    left_out: Counter[str] = Counter()
    for items in by_image.values():
        image = items[0].image
        pixels = _pixels(image, left_out, len(items))
        if pixels is None:
            continue
        group = groups.pseudonym(image.study.patient.patient_id)
        split = feedback_split(group)
        name = f"{group}-{groups.token('image', image.sop_instance_uid)}.png"
        for item in items:
            folder = LABEL_FOLDERS[item.label]
            rel = f"{item.condition}/{split}/{folder}/{name}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels.save(root / rel, format="PNG")
            manifest.append([rel, item.condition, split, str(item.label), group, SOURCE, item.extra])
            boxes[item.condition] += [[rel, *(f"{v:.4f}" for v in box)] for box in item.boxes]
            counts[item.condition][folder] += 1
            splits[item.condition][split][folder] += 1
    if not manifest:
        raise FeedbackExportRefused(f"No labelled image could be written: {dict(left_out)}. Nothing written.")
    _csv(root / "manifest.csv", MANIFEST_COLUMNS, sorted(manifest))
    for condition in counts:
        _csv(root / f"{condition}_boxes.csv", BOX_COLUMNS, sorted(boxes[condition]))
    summary: dict[str, Any] = {
        "since": since.isoformat(),
        "images": {c: dict(sorted(n.items())) for c, n in sorted(counts.items())},
        "splits": {c: {s: dict(n) for s, n in sorted(v.items())} for c, v in sorted(splits.items())},
        "boxes": {c: len(boxes[c]) for c in sorted(counts)},
        "conflicts": dict(sorted(labels.conflicts.items())),
        "left_out": dict(sorted(left_out.items())),
        "set_aside": dict(sorted(labels.set_aside.items())),
    }
    described = {
        "source": SOURCE,
        "label_rule": rule_table(),
        "groups": "pseudonymous patient ids, the same in every export of this installation",
        "split": "by group: 70% train, 15% val, 15% test (a hash of the group)",
        **summary,
    }
    (root / "feedback.json").write_text(json.dumps(described, indent=2) + "\n", encoding="utf-8")
    return summary


def _pixels(image: Image, left_out: Counter[str], labels: int) -> PilImage.Image | None:
    """The image as the radiologist saw it: 8-bit grayscale, no metadata; None (counted in
    `left_out`, once per label lost) when it may not or cannot be exported."""
    try:
        with image.file.open("rb") as handle:
            data = handle.read()
        if image.format == Image.Format.DICOM:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            if burned_in_annotation(header):
                left_out[BURNED_IN] += labels
                return None
        xray = load_xray(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS, read_metadata=False)
    except (OSError, XRayDecodeError, InvalidDicomError):
        left_out[UNREADABLE] += labels
        return None
    return PilImage.fromarray(np.ascontiguousarray(xray.pixels, dtype=np.uint8))


def _csv(path: Path, columns: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def _move_into_place(staging: Path, out: Path) -> None:
    """Put the finished export at `out`: a rename, so a reader sees all of it or nothing. What
    --force replaces is moved aside first and removed only once the new export is in place."""
    if not out.exists():
        os.replace(staging, out)
        return
    aside = out.with_name(f".{out.name}.replaced-{secrets.token_hex(4)}")
    os.replace(out, aside)
    try:
        os.replace(staging, out)
    except OSError:
        with contextlib.suppress(OSError):
            os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
