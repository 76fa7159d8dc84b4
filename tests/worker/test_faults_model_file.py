"""The active model's file is deleted, then corrupted, then put back while a real worker runs
with that model warm in memory. Results say what they are worth, /healthz/ says the same,
and the restored file is served again by the same worker process, without a restart."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.web.fixtures import dicom_bytes, upload, wait_for
from web.clinical.models import Analysis

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _analyse(api: Any, patient_id: str) -> dict[str, Any]:
    """Upload one chest film for pneumonia and return the finished analysis as the API shows it."""
    response = upload(api, dicom_bytes(patient_id=patient_id), conditions="pneumonia")
    assert response.status_code == 201, response.content
    analysis_id = response.json()["image"]["analyses"][0]["id"]
    wait_for(
        lambda: Analysis.objects.filter(pk=analysis_id, state__in=["succeeded", "failed"]).exists(),
        timeout=120,
        what=f"the analysis of {patient_id}",
    )
    body = api.get(f"/api/analyses/{analysis_id}/").json()
    body["study_flagged"] = Analysis.objects.get(pk=analysis_id).image.study.ai_flagged
    body["worker"] = Analysis.objects.get(pk=analysis_id).worker
    return body


def test_the_model_file_deleted_or_corrupted_under_a_running_worker_is_said_and_then_healed(
    live_worker, api, client, settings, tiny_registry: Path
) -> None:
    """What the radiologist sees: while the file is gone or damaged, each result is marked a
    placeholder with the reason (no diagnostic value) and never flags the study; /healthz/
    says "degraded" for that model. Once the file is back, the next result is the real
    model's again, from the same worker process."""
    settings.RADTRIAGE_REGISTRY = str(tiny_registry)
    artifact = tiny_registry.parent / "models" / "tiny.keras"
    backup = tiny_registry.parent / "tiny.keras.bak"
    shutil.copy2(artifact, backup)
    try:
        warm = _analyse(api, "MRN-MODEL-WARM")
        assert warm["model_id"] == "pneumonia-tiny-test" and not warm["is_placeholder"]

        artifact.unlink()
        health_missing = client.get("/healthz/").json()
        missing = _analyse(api, "MRN-MODEL-GONE")

        artifact.write_bytes(b"not a model any more" * 50)
        health_corrupt = client.get("/healthz/").json()
        corrupt = _analyse(api, "MRN-MODEL-BAD")

        shutil.copy(backup, artifact)
        health_back = client.get("/healthz/").json()
        back = _analyse(api, "MRN-MODEL-BACK")
    finally:
        shutil.copy(backup, artifact)
        backup.unlink()

    for result, why in ((missing, "missing"), (corrupt, "checksum")):
        assert result["state"] == "succeeded", result
        assert result["is_placeholder"] is True and why in result["placeholder_reason"], result
        assert result["model_id"] == "placeholder:pneumonia"
        assert result["study_flagged"] is False
    assert health_missing["status"] == "degraded" and "missing" in health_missing["models"]["pneumonia"]
    assert "fails its checksum" in health_corrupt["models"]["pneumonia"]
    assert health_back["models"]["pneumonia"] == "ok"
    assert back["model_id"] == "pneumonia-tiny-test" and not back["is_placeholder"]
    assert back["model_sha256"] == warm["model_sha256"]
    # The same pool process throughout: no restart was needed.
    assert back["worker"] == warm["worker"] == missing["worker"]
