"""`manage.py export_feedback`: the radiologists' verdicts and "AI missed" records as a
de-identified training set. Real rows (DICOM and PNG uploads through the upload service,
verdicts and a drawn missed finding through the review services), the real command, and the
export read back with the training data loader."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from core.imaging import load_xray
from core.training.data import load_arrays, load_samples, samples_from_folder
from core.training.pointing_game import load_boxes
from tests.web.fixtures import dicom_bytes, png_bytes, with_role
from web.clinical.feedback.export import BURNED_IN, feedback_split
from web.clinical.feedback.labels import shape_box
from web.clinical.ingest.parts import UploadFields
from web.clinical.ingest.uploads import image_upload
from web.clinical.models import Analysis, Annotation, AuditEvent, Image
from web.clinical.review.annotations import annotation_create, verdict_set

# What identifies the test's patients: none of it may appear anywhere in the export.
PATIENTS = {
    "jane": {
        "id": "MRN-FB-7731",
        "name": "Doeverhaven^Janeliese",
        "accession": "ACC-FB-5521",
        "birth": "19610417",
    },
    "richard": {
        "id": "MRN-FB-8842",
        "name": "Roeberston^Richardus",
        "accession": "ACC-FB-6632",
        "birth": "19540203",
    },
    "ola": {
        "id": "MRN-FB-9953",
        "name": "Nordmannsen^Olavious",
        "accession": "ACC-FB-7743",
        "birth": "19800911",
    },
    "kim": {
        "id": "MRN-FB-1064",
        "name": "Parkinsley^Kimberlane",
        "accession": "ACC-FB-8854",
        "birth": "19920630",
    },
}
SECRETS: list[str] = []
for _p in PATIENTS.values():
    _b = _p["birth"]
    SECRETS += [_p["id"], _p["accession"], _b, f"{_b[:4]}-{_b[4:6]}-{_b[6:]}", *_p["name"].split("^")]


def _dicom(who: str, *, seed: int, burned_in: bool = False) -> bytes:
    p = PATIENTS[who]
    data = dicom_bytes(
        patient_id=p["id"], patient_name=p["name"], accession=p["accession"], birth_date=p["birth"], seed=seed
    )
    if not burned_in:
        return data
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.BurnedInAnnotation = "YES"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _upload(who: str, data: bytes, name: str) -> Image:
    p = PATIENTS[who]
    fields = UploadFields(
        patient_id=p["id"],
        patient_name=p["name"],
        accession_number=p["accession"],
        birth_date=dt.date(int(p["birth"][:4]), int(p["birth"][4:6]), int(p["birth"][6:])),
        body_part="CHEST",
    )
    return image_upload(data=data, filename=name, fields=fields, conditions=[]).image


def _result(image: Image, condition: str, kind: str) -> Analysis:
    fields: dict[str, Any] = {
        "finding": {"positive": True, "applicable": True},
        "negative": {"positive": False, "applicable": True},
        "experimental": {"positive": True, "applicable": True, "experimental": True},
        "placeholder": {"positive": True, "applicable": True, "is_placeholder": True},
    }[kind]
    return Analysis.objects.create(
        image=image,
        condition=condition,
        model_id=f"{condition}-mobilenetv2-v1",
        state=Analysis.State.SUCCEEDED,
        probability=0.9 if fields["positive"] else 0.1,
        threshold=0.5,
        finished_at=timezone.now(),
        **fields,
    )


@pytest.fixture()
def department(db: Any, django_user_model: Any) -> dict[str, Any]:
    """Every kind of feedback on real uploads; returns the images and the people."""
    admin = with_role(django_user_model.objects.create_user("ada.admin"), "admin")
    first = with_role(django_user_model.objects.create_user("dr.first"), "radiologist")
    second = with_role(django_user_model.objects.create_user("dr.second"), "radiologist")
    img = {
        "jane_dicom": _upload("jane", _dicom("jane", seed=1), "chest.dcm"),
        "jane_png": _upload("jane", png_bytes(seed=2), "chest2.png"),
        "richard_png": _upload("richard", png_bytes(seed=3, size=80), "r.png"),
        "ola_dicom": _upload("ola", _dicom("ola", seed=4), "o.dcm"),
        "kim_png": _upload("kim", png_bytes(seed=5), "k.png"),
        "kim_other": _upload("kim", png_bytes(seed=6), "k2.png"),
        "kim_old": _upload("kim", png_bytes(seed=7), "k3.png"),
        "ola_burned": _upload("ola", _dicom("ola", seed=8, burned_in=True), "b.dcm"),
    }

    def verdict(
        image: str, condition: str, kind: str, verdict: str, reason: str = "", by: Any = first
    ) -> None:
        analysis = Analysis.objects.filter(image=img[image], condition=condition).first() or _result(
            img[image], condition, kind
        )
        verdict_set(analysis=analysis, author=by, verdict=verdict, reason=reason)

    verdict("jane_dicom", "pneumonia", "finding", "agree")  # -> 1
    verdict("jane_dicom", "cardiomegaly", "negative", "agree")  # -> 0
    verdict("jane_png", "pneumonia", "finding", "disagree", "false_positive")  # -> 0
    verdict("richard_png", "pneumonia", "negative", "disagree", "false_positive")  # -> 1
    annotation_create(  # AI missed cardiomegaly, drawn: -> 1 with its region
        image=img["richard_png"],
        author=second,
        shapes=[{"type": "rect", "x": 10, "y": 20, "w": 30, "h": 40}, {"type": "text", "x": 1, "y": 1}],
        missed_condition="cardiomegaly",
    )
    verdict("ola_dicom", "pneumonia", "finding", "agree")  # two radiologists disagree: left out
    verdict("ola_dicom", "pneumonia", "finding", "disagree", "false_positive", by=second)
    verdict("ola_dicom", "cardiomegaly", "finding", "uncertain")  # set aside
    verdict("kim_png", "pneumonia", "finding", "disagree", "image_quality")  # set aside
    verdict("kim_png", "pneumonia", "finding", "disagree", "other_finding", by=second)  # set aside
    verdict("kim_png", "cardiomegaly", "finding", "disagree", "wrong_location")  # -> 1, no region
    verdict("kim_other", "cardiomegaly", "experimental", "agree")  # not a reading: set aside
    placeholder = _result(img["kim_other"], "pneumonia", "placeholder")  # a verdict stored before
    Annotation.objects.create(  # verdicts on placeholders were refused
        image=img["kim_other"], author=first, analysis=placeholder, verdict="agree"
    )
    verdict("kim_old", "pneumonia", "finding", "agree")  # before --since: not exported
    Annotation.objects.filter(image=img["kim_old"]).update(updated_at=timezone.now() - dt.timedelta(days=60))
    verdict("ola_burned", "pneumonia", "finding", "agree")  # burned-in text: left out
    return {"admin": admin, "first": first, "img": img}


@pytest.fixture()
def exports(tmp_path: Path) -> Path:
    """The folder the exports go in (tmp_path also holds the test's media)."""
    folder = tmp_path / "exports"
    folder.mkdir()
    return folder


def _since() -> str:
    return (timezone.localdate() - dt.timedelta(days=7)).isoformat()


def _export(out: Path, *extra: str) -> str:
    stdout = io.StringIO()
    call_command(
        "export_feedback", str(out), "--since", _since(), "--user", "ada.admin", *extra, stdout=stdout
    )
    return stdout.getvalue()


def _source_of(path: Path, department: dict[str, Any]) -> str:
    """Which uploaded image an exported file is, by its pixels (its name says nothing)."""
    pixels = load_xray(path).pixels
    for name, image in department["img"].items():
        if not image.file.storage.exists(image.file.name):
            continue
        with image.file.open("rb") as handle:
            if np.array_equal(load_xray(handle.read()).pixels, pixels):
                return name
    raise AssertionError(f"{path} matches no uploaded image")


def test_the_export_holds_the_labels_the_rule_gives_and_the_training_loader_reads_it(
    department: dict[str, Any], exports: Path
) -> None:
    out = exports / "feedback"

    printed = _export(out)

    labels = {}
    for condition in ("pneumonia", "cardiomegaly"):
        samples = load_samples(out / condition)  # the folder `manage.py train --data` reads
        listed = load_samples(out / "manifest.csv", condition=condition)
        assert {(s.path.resolve(), s.split, s.label, s.group) for s in samples} == {
            (s.path.resolve(), s.split, s.label, s.group) for s in listed
        }
        labels[condition] = {_source_of(s.path, department): s.label for s in samples}
        arrays = load_arrays(samples, input_size=(32, 32))
        assert arrays.x.shape == (len(samples), 32, 32) and arrays.x.dtype == np.uint8
    assert labels == {
        "pneumonia": {"jane_dicom": 1, "jane_png": 0, "richard_png": 1},
        "cardiomegaly": {"jane_dicom": 0, "richard_png": 1, "kim_png": 1},
    }
    assert "pneumonia: 1 image(s) left out, the radiologists' verdicts disagree" in printed
    assert f"left out: 1 x {BURNED_IN}" in printed


def test_a_patients_images_share_one_group_and_one_split(department: dict[str, Any], exports: Path) -> None:
    out = exports / "feedback"
    _export(out)

    samples = samples_from_folder(out / "pneumonia") + samples_from_folder(out / "cardiomegaly")
    by_source = {(_source_of(s.path, department), s.path.parts[-4]): s for s in samples}
    jane = [s for (name, _), s in by_source.items() if name.startswith("jane")]
    assert len({s.group for s in jane}) == 1 and len({s.split for s in jane}) == 1
    assert len({s.group for s in samples}) == 3  # jane, richard, kim
    for s in samples:
        assert s.split == feedback_split(s.group) and s.path.parts[-3] == s.split
    splits_of: dict[str, set[str]] = {}
    for s in samples:
        splits_of.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in splits_of.values())
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0] == "path,condition,split,label,group,source,extra"
    assert all(",radtriage-feedback," in row for row in rows[1:])
    assert any("disagree:false_positive model=pneumonia-mobilenetv2-v1" in row for row in rows)


def test_the_missed_finding_is_exported_with_its_drawn_region(
    department: dict[str, Any], exports: Path
) -> None:
    out = exports / "feedback"
    _export(out)

    boxes = load_boxes(out / "cardiomegaly_boxes.csv")  # as train_boxed reads it
    [(path, found)] = boxes.items()
    assert _source_of(out / path, department) == "richard_png"
    assert found == [(0.125, 0.25, 0.5, 0.75)]  # x 10..40, y 20..60 of 80 px
    assert load_boxes(out / "pneumonia_boxes.csv") == {}
    wrong_location = [r for r in (out / "manifest.csv").read_text().splitlines() if "wrong_location" in r]
    assert len(wrong_location) == 1 and ",cardiomegaly," in wrong_location[0] and ",1," in wrong_location[0]


def test_nothing_in_the_export_names_the_patient(department: dict[str, Any], exports: Path) -> None:
    out = exports / "feedback"
    _export(out)

    files = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".png"]) == 6
    for path in files:
        text = path.relative_to(out).as_posix().encode() + path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in text, f"{secret} in {path.relative_to(out)}"
        if path.suffix == ".png":
            assert _png_chunks(path.read_bytes()) == ["IHDR", "IDAT", "IEND"]  # no text, no EXIF
    for image in department["img"].values():
        assert image.sop_instance_uid.encode() not in b"".join(p.read_bytes() for p in files)


def test_the_export_is_audited_with_counts_and_no_patient(department: dict[str, Any], exports: Path) -> None:
    out = exports / "feedback"
    _export(out)

    event = AuditEvent.objects.get(action="export.feedback")
    assert event.actor == department["admin"] and event.patient is None and event.study is None
    assert event.detail["out"] == str(out)
    assert event.detail["images"] == {
        "cardiomegaly": {"negative": 1, "positive": 2},
        "pneumonia": {"negative": 1, "positive": 2},
    }
    assert event.detail["conflicts"] == {"pneumonia": 1}
    assert event.detail["boxes"] == {"cardiomegaly": 1, "pneumonia": 0}
    recorded = json.dumps(event.detail)
    assert not [s for s in SECRETS if s in recorded]
    described = json.loads((out / "feedback.json").read_text())
    assert described["images"] == event.detail["images"]
    assert {"ai_said": "finding", "verdict": "agree", "reason": "", "label": 1} in [
        {k: v for k, v in r.items() if k != "words"} for r in described["label_rule"]
    ]


def test_a_non_empty_out_is_refused_unless_forced(department: dict[str, Any], exports: Path) -> None:
    out = exports / "feedback"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    with pytest.raises(CommandError, match="is not empty.*--force"):
        _export(out)

    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in exports.iterdir()) == ["feedback"]  # no half-written folder
    assert not AuditEvent.objects.filter(action="export.feedback").exists()
    _export(out, "--force")
    assert not (out / "notes.txt").exists() and (out / "manifest.csv").is_file()
    assert sorted(p.name for p in exports.iterdir()) == ["feedback"]


@pytest.mark.parametrize("since", ["2026-13-01", "yesterday", "1/2/2026", "20260101"])
def test_a_bad_date_is_refused_with_nothing_written(
    department: dict[str, Any], exports: Path, since: str
) -> None:
    out = exports / "feedback"

    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        call_command("export_feedback", str(out), "--since", since, "--user", "ada.admin")

    assert list(exports.iterdir()) == []
    assert not AuditEvent.objects.filter(action="export.feedback").exists()


def test_only_an_admin_may_export(department: dict[str, Any], exports: Path) -> None:
    with pytest.raises(CommandError, match="for admins"):
        call_command("export_feedback", str(exports / "x"), "--since", _since(), "--user", "dr.first")
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("export_feedback", str(exports / "x"), "--since", _since(), "--user", "nobody")
    assert list(exports.iterdir()) == []


def test_with_no_feedback_since_the_date_nothing_is_written(
    department: dict[str, Any], exports: Path
) -> None:
    future = (timezone.localdate() + dt.timedelta(days=1)).isoformat()

    with pytest.raises(CommandError, match="No feedback since"):
        call_command("export_feedback", str(exports / "x"), "--since", future, "--user", "ada.admin")

    assert list(exports.iterdir()) == []


def test_a_drawn_region_becomes_fractions_of_the_image() -> None:
    assert shape_box({"type": "ellipse", "x": 50, "y": 40, "w": -25, "h": 20}, 100, 80) == (
        0.25,
        0.5,
        0.5,
        0.75,
    )
    freehand = {"type": "freehand", "points": [[10, 10], [90, 30], [120, -5]]}
    assert shape_box(freehand, 100, 50) == (0.1, 0.0, 1.0, 0.6)
    assert shape_box({"type": "arrow", "x1": 0, "y1": 0, "x2": 5, "y2": 5}, 100, 100) is None
    assert shape_box({"type": "rect", "x": 5, "y": 5, "w": 0, "h": 9}, 100, 100) is None


def _png_chunks(data: bytes) -> list[str]:
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append(data[at + 4 : at + 8].decode("ascii"))
        at += 12 + length
    return [c for i, c in enumerate(chunks) if i == 0 or c != chunks[i - 1]]


def test_a_failure_half_way_leaves_nothing_behind(
    department: dict[str, Any], exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image as PilImage

    real_save, written = PilImage.Image.save, []

    def disk_fills_up(self: Any, fp: Any, *args: Any, **kwargs: Any) -> None:
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(fp)
        real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PilImage.Image, "save", disk_fills_up)  # a full disk cannot be had here

    with pytest.raises(OSError, match="No space left"):
        _export(exports / "feedback")

    assert len(written) == 3 and list(exports.iterdir()) == []
    assert not AuditEvent.objects.filter(action="export.feedback").exists()


def test_an_image_whose_file_is_gone_is_left_out_and_counted(
    department: dict[str, Any], exports: Path
) -> None:
    image = department["img"]["kim_png"]
    image.file.storage.delete(image.file.name)

    printed = _export(exports / "feedback")

    assert "cardiomegaly: 0 positive" not in printed  # richard's missed finding is still there
    assert "left out: 1 x image file missing or unreadable" in printed
    samples = load_samples(exports / "feedback" / "cardiomegaly")
    assert sorted(_source_of(s.path, department) for s in samples) == ["jane_dicom", "richard_png"]
