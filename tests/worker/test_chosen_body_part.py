"""A body part chosen by hand is honoured: a PNG the image recogniser does not place, uploaded
with body part EXTREMITY and the fracture condition, is analysed by the real worker (the tiny
limb model), and the recogniser's view becomes a note on the result, not a "not recognised"."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.web.fixtures import upload, wait_for
from web.clinical.models import Analysis, Study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def unplaced_png() -> bytes:
    """Noise: the recogniser places it nowhere (tests/core/test_recognition.py)."""
    rng = np.random.default_rng(7)
    pixels = np.clip(rng.normal(120, 50, (256, 256)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_a_chosen_extremity_is_analysed_for_fracture_with_the_recogniser_only_noted(live_worker, api) -> None:
    response = upload(
        api,
        unplaced_png(),
        "lateral-leg.png",
        patient_id="MRN-CHOSEN",
        body_part="EXTREMITY",
        conditions="fracture",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["image"]["recognition"]["region"] == "unrecognised"
    study = Study.objects.get()
    assert (study.body_part, study.body_part_source) == ("EXTREMITY", "uploader")
    (queued,) = body["image"]["analyses"]

    analysis = wait_for(
        lambda: Analysis.objects.filter(pk=queued["id"], state="succeeded").first(),
        timeout=120,
        what="the fracture analysis to finish",
    )

    assert analysis.model_id == "fracture-tiny-test" and not analysis.is_placeholder
    assert analysis.applicable is True, analysis.not_applicable_reason
    assert "not recognised" not in analysis.not_applicable_reason
    assert analysis.probability is not None
    assert any(
        n.startswith("The image recogniser sees an image it does not recognise")
        and n.endswith("but the uploader chose body part EXTREMITY; the choice was followed.")
        for n in analysis.notes
    ), analysis.notes
    shown = api.get(f"/api/analyses/{analysis.pk}/").json()
    assert shown["body_part_source"] == "uploader" and shown["chosen_body_part"] == "EXTREMITY"
    card = api.get(f"/analyses/{analysis.pk}/card/").content.decode()
    assert "Body part EXTREMITY chosen by the uploader" in card
    assert "the choice was followed" in card
