"""What the listener refuses, and how: an instance whose attribute values are not valid DICOM
text gets a failure status with the reason (0xC000, never 0xA700 "out of resources", which a
PACS retries forever); an association addressed to another AE title is rejected at once."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.dicom.conftest import LISTENER_AE, MODALITY_AE, dcmtk
from tests.web.fixtures import dicom_bytes, media_files
from web.clinical.models import Image

NUL_NAME = "Doe\x00Jane"


def _association(port: int, *, called: str = LISTENER_AE) -> Any:
    from pynetdicom import AE, StoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=MODALITY_AE)
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_a_patient_name_holding_a_nul_gets_0xc000_with_the_reason(listener) -> None:
    _, port = listener
    assoc = _association(port)
    refused = assoc.send_c_store(pydicom.dcmread(io.BytesIO(dicom_bytes(patient_name=NUL_NAME, seed=31))))
    after = assoc.send_c_store(pydicom.dcmread(io.BytesIO(dicom_bytes(patient_id="MRN-AFTER", seed=32))))
    assoc.release()

    assert refused.Status == 0xC000, hex(refused.Status)
    assert "PatientName" in refused.ErrorComment and "NUL" in refused.ErrorComment
    assert after.Status == 0x0000  # the association goes on
    assert list(Image.objects.values_list("study__patient__patient_id", flat=True)) == ["MRN-AFTER"]


def test_storescu_is_told_the_nul_instance_cannot_be_understood(listener, tmp_path: Path) -> None:
    _, port = listener
    path = tmp_path / "nul.dcm"
    path.write_bytes(dicom_bytes(patient_name=NUL_NAME, seed=33))
    sent = dcmtk("storescu", "-v", "-aet", "STORESCU", "-aec", LISTENER_AE, "127.0.0.1", str(port), str(path))
    output = sent.stdout + sent.stderr

    assert "Received Store Response (Error: CannotUnderstand)" in output, output[-2000:]
    assert "OutOfResources" not in output
    assert not [p for p in media_files() if p.suffix == ".dcm"]


def test_the_upload_api_refuses_the_same_file_with_a_400(radiologist_api) -> None:
    from tests.web.fixtures import upload

    response = upload(radiologist_api, dicom_bytes(patient_name=NUL_NAME, seed=34))

    assert response.status_code == 400
    assert "PatientName holds a NUL character" in response.json()["error"]


def test_an_association_to_another_called_ae_title_is_rejected(listener) -> None:
    _, port = listener
    wrong = _association(port, called="SOMEPACS")
    echo = dcmtk("echoscu", "-aet", MODALITY_AE, "-aec", "SOMEPACS", "127.0.0.1", str(port))
    right = _association(port)

    assert wrong.is_rejected
    rejection = wrong.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x07)
    assert echo.returncode != 0 and "Called AE Title Not Recognized" in echo.stderr + echo.stdout
    assert right.is_established
    right.release()


@pytest.fixture()
def aliased_listener(transactional_db: Any) -> Iterator[int]:
    from web.clinical.dicom.listener import StorageSCP

    scp = StorageSCP(ae_title=LISTENER_AE, called_titles=["RT-ALIAS"])
    _, port = scp.start("127.0.0.1", 0)
    yield port
    scp.stop()


def test_it_answers_to_each_title_on_its_list_and_only_those(aliased_listener: int) -> None:
    own, alias, other = (_association(aliased_listener, called=t) for t in (LISTENER_AE, "RT-ALIAS", "OTHER"))

    assert own.is_established and alias.is_established and other.is_rejected
    assert alias.acceptor.ae_title == "RT-ALIAS"  # the accept names the title that was called
    assert alias.send_c_echo().Status == 0x0000
    own.release()
    alias.release()


def test_the_listeners_titles_default_to_its_own_ae_title(settings) -> None:
    assert settings.RADTRIAGE_DICOM_CALLED_AE_TITLES == [settings.RADTRIAGE_DICOM_AE_TITLE]
