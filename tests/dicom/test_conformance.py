"""What RadTriage sends to a PACS is valid DICOM: the SR and the secondary capture made from
real radiographs pass dciodvfy (dicom3tools), the validator vendors use, with no error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.dicom.conftest import SHARED_DICOM, analysed_image

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy is missing: apt-get install dicom3tools (scripts/test-prereqs.sh)"
)


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for one file (warnings are advice, not invalidity)."""
    assert DCIODVFY
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@needs_dciodvfy
@pytest.mark.parametrize("source", ["nih_dx_test1.dcm", "RG1_J2KI.dcm"])
def test_the_sr_and_secondary_captures_from_real_files_pass_dciodvfy(
    source: str, radiologist_api, live_worker, tmp_path: Path
) -> None:
    image = analysed_image(radiologist_api, (SHARED_DICOM / source).read_bytes())
    done = image.analyses.filter(state="succeeded")
    assert done.exists(), "no analysis succeeded: nothing to validate"

    sr = tmp_path / "sr.dcm"
    response = radiologist_api.get(f"/api/images/{image.pk}/dicom-sr/")
    assert response.status_code == 200, response.content
    sr.write_bytes(response.content)
    assert dciodvfy_errors(sr) == []
    if source == "nih_dx_test1.dcm":  # its header says Patient's Age "81", invalid DICOM
        comments = [item.TextValue for item in pydicom.dcmread(sr).ContentSequence if "TextValue" in item]
        assert "PatientAge in the source was not a valid DICOM age; sent as 081Y." in comments
        assert pydicom.dcmread(sr).PatientAge == "081Y"

    for analysis in done:
        response = radiologist_api.get(f"/api/analyses/{analysis.pk}/dicom-sc/")
        assert response.status_code == 200, response.content
        sc = tmp_path / f"sc-{analysis.pk}.dcm"
        sc.write_bytes(response.content)
        assert dciodvfy_errors(sc) == [], analysis.condition
