"""Result files and their rows are one unit: the sweep removes a heat map or report PDF that no
committed row points at once it is older than the grace period, and nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from tests.web.fixtures import dicom_bytes, upload
from web.clinical.files import heatmaps_store, media_remove_orphan_files
from web.clinical.models import Analysis

pytestmark = [pytest.mark.django_db]

GRACE = 3600.0


def _write(name: str, *, age: float) -> Path:
    path = Path(settings.MEDIA_ROOT) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG leftover")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_the_sweep_removes_old_files_no_row_points_at_and_keeps_the_rest(api) -> None:
    response = upload(api, dicom_bytes(patient_id="MRN-FILES"), conditions="pneumonia")
    assert response.status_code == 201, response.content
    analysis = Analysis.objects.select_related("image").get(pk=response.json()["image"]["analyses"][0]["id"])
    stored = heatmaps_store([(analysis, np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))])
    Analysis.objects.filter(pk=analysis.pk).update(
        state="succeeded", probability=0.3, threshold=0.5, positive=False, heatmap_raw=stored[analysis.pk]
    )
    committed = Path(settings.MEDIA_ROOT) / stored[analysis.pk]
    os.utime(committed, (time.time() - 2 * GRACE,) * 2)  # old, but its row points at it
    study = analysis.image.study_id
    redone = _write(f"heatmaps/{study}/analysis-{analysis.pk}-raw_k1lled0.png", age=2 * GRACE)
    gone_row = _write("heatmaps/999999/analysis-999999-raw.png", age=2 * GRACE)
    unsigned_pdf = _write(f"reports/study-{study}/v1-0123456789ab.pdf", age=2 * GRACE)
    fresh = _write(f"heatmaps/{study}/analysis-{analysis.pk}-raw_b31ng0n.png", age=60)
    foreign = _write("heatmaps/README.txt", age=2 * GRACE)

    removed = media_remove_orphan_files(older_than=GRACE)

    assert sorted(removed) == sorted(
        str(p.relative_to(settings.MEDIA_ROOT)) for p in (redone, gone_row, unsigned_pdf)
    )
    assert not redone.exists() and not gone_row.exists() and not unsigned_pdf.exists()
    assert committed.exists() and fresh.exists() and foreign.exists()
    shown = api.get(f"/api/analyses/{analysis.pk}/heatmap/?kind=raw")
    assert shown.status_code == 200 and shown["Content-Type"] == "image/png"
    assert media_remove_orphan_files(older_than=GRACE) == []
