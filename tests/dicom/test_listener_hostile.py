"""The hostile corpus (tests/hostile_corpus.py) through the DICOM listener, sent by a pynetdicom
SCU as a modality sends a file: its bytes as they are (the data set is not decoded or
re-encoded first, so a truncated file arrives truncated). Each bad instance gets a failure
status with a reason, leaves nothing stored, and the next good instance is stored."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.dicom.conftest import LISTENER_AE, MODALITY_AE
from tests.hostile_corpus import Case, hostile_files
from tests.web.fixtures import dicom_bytes, media_files, stored_state
from web.clinical.models import Image

# What a C-STORE SCU can send: a DICOM file whose file meta names its SOP Class, SOP Instance
# and transfer syntax. The others (empty, noise, PDF, PNG, JPEG, a zip, a header cut inside its
# file meta) never leave the sender: it cannot say what it would be sending.
SENDABLE = {
    "truncated-dicom",
    "dicom-no-pixels",
    "dicom-multiframe",
    "dicom-huge-text",
    "dicom-huge-uid",
    "dicom-path-uid",
    "dicom-huge-patient-id",
    "over-size-limit",
}
LIMIT = 2 * 2**20  # the configured upload size limit in these tests
CASES = [c for c in hostile_files(max_upload_bytes=LIMIT) if c.id in SENDABLE]
MPEG2 = next(c for c in hostile_files() if c.id == "dicom-mpeg2")


@pytest.fixture(autouse=True)
def upload_limit(settings: Any) -> None:
    settings.RADTRIAGE_MAX_UPLOAD_BYTES = LIMIT


def as_sent(case: Case) -> bytes:
    """The file a sender sends. A SOP Instance UID too long for its command set (pynetdicom
    and dcmtk refuse to build the request) gets there only if the file meta, from which the
    request is made, names another one: a sender whose header and data set disagree."""
    ds = pydicom.dcmread(io.BytesIO(case.data), stop_before_pixels=True)
    if len(ds.file_meta.MediaStorageSOPInstanceUID) <= 64:
        return case.data
    ds = pydicom.dcmread(io.BytesIO(case.data))
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)  # True would copy the data set's UID back
    return out.getvalue()


def assert_readable_comment(comment: str, fragment: str) -> None:
    """What the sender's log shows: the reason, in one LO value (64 characters of ASCII, no
    backslash), ending with a whole word."""
    assert fragment.lower() in comment.lower(), comment
    assert len(comment) <= 64 and comment.isascii() and "\\" not in comment, comment
    assert comment.endswith("."), f"cut in the middle: {comment!r}"


@pytest.fixture()
def send_files_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file path's bytes without decoding them, as storescu does."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


@contextmanager
def associate(port: int, *extra_syntaxes: str) -> Iterator[Any]:
    """An association as a modality opens it (SC, explicit VR little endian), released even
    when the test fails (else the listener's thread keeps its database connection)."""
    from pynetdicom import AE

    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])
    for syntax in extra_syntaxes:
        ae.add_requested_context(SecondaryCaptureImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=LISTENER_AE)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def good_instance_is_stored(assoc: Any, tmp_path: Path, seed: int) -> None:
    path = tmp_path / f"next-{seed}.dcm"
    path.write_bytes(dicom_bytes(patient_id=f"MRN-NEXT-{seed}", seed=7000 + seed))
    images = Image.objects.count()
    status = assoc.send_c_store(path)
    assert status.Status == 0x0000, status
    assert Image.objects.count() == images + 1
    assert Image.objects.filter(study__patient__patient_id=f"MRN-NEXT-{seed}").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_listener_answers_each_hostile_instance_and_stores_all_or_nothing(
    listener, send_files_as_they_are, tmp_path, case: Case
) -> None:
    _, port = listener
    path = tmp_path / "sent.dcm"
    path.write_bytes(as_sent(case))
    before = stored_state()

    with associate(port) as assoc:
        status = assoc.send_c_store(path)

        if case.accepted:
            assert status.Status == 0x0000, status
            assert Image.objects.count() == before["images"] + 1
            assert len(media_files()) == len(before["files"]) + 2  # the file and its thumbnail
        else:
            assert 0xA000 <= status.Status <= 0xCFFF, status  # a failure, not a warning or success
            assert_readable_comment(status.ErrorComment, case.message)
            assert stored_state() == before
        good_instance_is_stored(assoc, tmp_path, seed=CASES.index(case))  # same association


def test_an_unsupported_transfer_syntax_is_refused_at_negotiation(
    listener, send_files_as_they_are, tmp_path
) -> None:
    """MPEG2 video is not a radiograph: the context is rejected, so the sender cannot send."""
    _, port = listener
    path = tmp_path / "video.dcm"
    path.write_bytes(MPEG2.data)
    syntax = pydicom.dcmread(io.BytesIO(MPEG2.data)).file_meta.TransferSyntaxUID
    before = stored_state()

    with associate(port, syntax) as assoc:
        accepted = {c.transfer_syntax[0] for c in assoc.accepted_contexts}
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(path)

        assert syntax not in accepted and ExplicitVRLittleEndian in accepted
        assert stored_state() == before
        good_instance_is_stored(assoc, tmp_path, seed=100)


def test_encapsulated_pixels_sent_as_uncompressed_are_refused(
    listener, send_files_as_they_are, tmp_path
) -> None:
    """A sender that labels MPEG2-encapsulated pixel data as explicit VR little endian (the
    only way past negotiation): the pixels cannot be read, so it is refused."""
    _, port = listener
    ds = pydicom.dcmread(io.BytesIO(MPEG2.data))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "mislabelled.dcm"
    ds.save_as(path, enforce_file_format=True)
    before = stored_state()

    with associate(port) as assoc:
        status = assoc.send_c_store(path)

        assert 0xA000 <= status.Status <= 0xCFFF, status
        assert_readable_comment(status.ErrorComment, "DICOM")
        assert stored_state() == before
        good_instance_is_stored(assoc, tmp_path, seed=101)
