"""The Storage SCP against real peers on loopback: dcmtk's storescu/echoscu and pynetdicom's SCU."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom.conftest import LISTENER_AE, MODALITY_AE, SHARED_DICOM, dcmtk
from tests.web.fixtures import dicom_bytes, media_files, wait_for
from web.clinical.models import Analysis, Image, Study


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def eight_bit(data: bytes) -> bytes:
    """The same radiograph stored 8 bits deep (JPEG baseline takes only 8-bit samples)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = (ds.pixel_array >> 4).astype("uint8")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


GEN_STUDY = generate_uid()


def generated(*, seed: int) -> bytes:
    return dicom_bytes(patient_id="GEN-1", accession="GEN-A", study_uid=GEN_STUDY, seed=seed)


def storescu(port: int, *files: Path, aet: str = "STORESCU", propose: str = "--required") -> Any:
    """storescu proposes uncompressed syntaxes unless told: -xy JPEG baseline, -xs JPEG lossless,
    -xr RLE, -xw JPEG 2000, -xv JPEG 2000 lossless."""
    args = [propose, "-aet", aet, "-aec", LISTENER_AE, "127.0.0.1", str(port), *map(str, files)]
    return dcmtk("storescu", *args)


def scu_association(port: int, aet: str = MODALITY_AE) -> Any:
    from pynetdicom import AE, StoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=aet)
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=LISTENER_AE)


def test_echoscu_and_a_pynetdicom_c_echo_are_answered(listener) -> None:
    _, port = listener
    echo = dcmtk("echoscu", "-aet", MODALITY_AE, "-aec", LISTENER_AE, "127.0.0.1", str(port))
    assert echo.returncode == 0, echo.stderr

    assoc = scu_association(port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_a_calling_ae_title_not_on_the_list_is_rejected_at_association(listener, tmp_path) -> None:
    _, port = listener
    echo = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", LISTENER_AE, "127.0.0.1", str(port))
    assert echo.returncode != 0
    assert "Association Rejected" in echo.stderr + echo.stdout

    sent = storescu(port, write(tmp_path / "a.dcm", dicom_bytes()), aet="INTRUDER")
    assert sent.returncode != 0
    assoc = scu_association(port, aet="INTRUDER")
    assert assoc.is_rejected
    assert Image.objects.count() == 0


def test_storescu_files_real_studies_from_their_headers_with_every_transfer_syntax(
    listener, tmp_path
) -> None:
    _, port = listener
    # Shared real files: implicit VR little endian (DX) and JPEG 2000 lossy and lossless (CR).
    real = [SHARED_DICOM / n for n in ("nih_dx_test1.dcm", "RG1_J2KI.dcm", "RG3_J2KR.dcm")]
    # Generated ones, compressed by dcmtk: explicit VR, JPEG baseline, JPEG lossless, RLE.
    explicit = write(tmp_path / "explicit.dcm", generated(seed=1))
    made = {"explicit": explicit}
    for name, tool, option, source in (
        (
            "baseline",
            "dcmcjpeg",
            "+eb",
            eight_bit(generated(seed=2)),
        ),
        ("lossless", "dcmcjpeg", "+e1", generated(seed=3)),
        ("rle", "dcmcrle", "+ff", generated(seed=4)),
    ):
        raw = write(tmp_path / f"{name}-raw.dcm", source)
        converted = dcmtk(tool, option, str(raw), str(tmp_path / f"{name}.dcm"))
        assert converted.returncode == 0, converted.stderr
        made[name] = tmp_path / f"{name}.dcm"

    for path, propose in (
        (real[0], "--required"),
        (made["explicit"], "--required"),
        (made["baseline"], "-xy"),
        (made["lossless"], "-xs"),
        (made["rle"], "-xr"),
        (real[1], "-xw"),
        (real[2], "-xv"),
    ):
        sent = storescu(port, path, propose=propose)
        assert sent.returncode == 0, sent.stderr

    syntaxes = {
        Path(image.original_filename).name: pydicom.dcmread(image.file.open("rb")).file_meta.TransferSyntaxUID
        for image in Image.objects.all()
    }
    assert len(syntaxes) == 7, sent.stderr
    assert {s.name for s in syntaxes.values()} >= {
        "Implicit VR Little Endian",
        "Explicit VR Little Endian",
        "JPEG 2000 Image Compression",
        "JPEG 2000 Image Compression (Lossless Only)",
        "JPEG Baseline (Process 1)",
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
        "RLE Lossless",
    }
    # Filed under the patients and studies their headers name, with the conditions that apply.
    nih = Image.objects.get(sop_instance_uid=pydicom.dcmread(real[0]).SOPInstanceUID)
    assert nih.study.patient.patient_id == "2" and nih.study.body_part == "CHEST"
    gen_study = Study.objects.get(accession_number="GEN-A")
    assert gen_study.patient.patient_id == "GEN-1" and gen_study.images.count() == 4
    knee = Image.objects.get(sop_instance_uid=pydicom.dcmread(real[2]).SOPInstanceUID)
    assert {a.condition for a in nih.analyses.all()} == {"pneumonia", "cardiomegaly"}
    assert not {a.condition for a in knee.analyses.all()} & {"pneumonia", "cardiomegaly"}
    assert set(Analysis.objects.values_list("queue", flat=True)) == {"batch"}


def test_an_association_is_analysed_by_the_worker(listener, live_worker) -> None:
    _, port = listener
    study_uid = generate_uid()
    assoc = scu_association(port)
    statuses = [
        assoc.send_c_store(pydicom.dcmread(io.BytesIO(dicom_bytes(study_uid=study_uid, seed=i)))).Status
        for i in range(6)
    ]
    assoc.release()
    assert statuses == [0] * 6

    study = Study.objects.get(study_instance_uid=study_uid)
    assert study.images.count() == 6
    try:
        wait_for(
            lambda: not Analysis.objects.filter(image__study=study).exclude(state="succeeded").exists(),
            timeout=120,
            what="the received study to be analysed",
        )
    except AssertionError:
        states = list(Analysis.objects.values_list("state", "error_message"))
        raise AssertionError(f"{states}\n{live_worker.log()[-3000:]}") from None
    pneumonia = Analysis.objects.filter(image__study=study, condition="pneumonia")
    assert pneumonia.count() == 6 and all(a.model_id == "pneumonia-tiny-test" for a in pneumonia)
    # Analysed in mini-batches (the listener's is 4 here): four sent during the association,
    # the other two at its release; each batch is claimed, and so started, at one instant.
    started = Counter(a.started_at for a in pneumonia)
    assert sorted(started.values()) == [2, 4]
    study.refresh_from_db()
    assert study.status == Study.Status.AI_COMPLETE


def test_a_corrupt_data_set_gets_a_failure_status_and_nothing_is_stored(listener) -> None:
    _, port = listener
    truncated = pydicom.dcmread(io.BytesIO(dicom_bytes(patient_id="MRN-BAD")))
    truncated.PixelData = truncated.PixelData[:1000]  # the header promises 96 x 96 x 2 bytes
    ct = pydicom.dcmread(io.BytesIO(dicom_bytes(patient_id="MRN-CT", modality="CT")))

    assoc = scu_association(port)
    corrupt_status = assoc.send_c_store(truncated)
    ct_status = assoc.send_c_store(ct)
    good_status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(dicom_bytes(patient_id="MRN-OK"))))
    assoc.release()

    assert 0xC000 <= corrupt_status.Status <= 0xCFFF
    assert "corrupt" in corrupt_status.ErrorComment.lower()
    assert 0xC000 <= ct_status.Status <= 0xCFFF and "CT" in ct_status.ErrorComment
    assert good_status.Status == 0x0000  # the association goes on after a refusal
    assert list(Image.objects.values_list("study__patient__patient_id", flat=True)) == ["MRN-OK"]
    assert len([p for p in media_files() if p.suffix == ".dcm"]) == 1


def test_an_instance_sent_twice_is_stored_once(listener, tmp_path) -> None:
    _, port = listener
    path = write(tmp_path / "same.dcm", dicom_bytes(patient_id="MRN-TWICE"))
    first, again = storescu(port, path), storescu(port, path)
    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert Image.objects.count() == 1 and Analysis.objects.count() == 2


@pytest.mark.parametrize("bad", ["", "WAY-TOO-LONG-AE-TITLE"])
def test_the_command_refuses_a_bad_ae_title(bad: str) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="AE title"):
        call_command("dicom_listener", "--port", "0", "--ae-title", bad)
