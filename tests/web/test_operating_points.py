"""A site's operating point: an admin moves the active validated model's threshold to another
sensitivity target chosen on its validation ROC, sees the figures to expect first, types a
reason; it is audited, the worker's next result is judged at it, and it ends when the active
model changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.registry import Registry
from tests.web.fixtures import dicom_bytes, upload, wait_for, with_role
from web.clinical.models import Analysis, AuditEvent, SiteOperatingPoint

pytestmark = pytest.mark.django_db

MODEL = "pneumonia-tiny-test"
PAGE = f"/admin/model-registry/{MODEL}/operating-point/"

# Known validation scores: 10 positives, 10 negatives. For a 0.90 target the threshold is the
# 9th highest positive, 0.55: validation sensitivity 9/10, specificity 8/10 (0.6 and 0.7 flagged).
VAL_POS = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.2]
VAL_NEG = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.6, 0.7]
# Test at 0.55: 4 of 5 positives flagged (0.8), 9 of 10 negatives not (0.9), 5 of 15 flagged.
TEST_POS = [0.9, 0.8, 0.7, 0.6, 0.5]
TEST_NEG = [0.1, 0.2, 0.3, 0.56, 0.4, 0.45, 0.5, 0.3, 0.2, 0.1]


def write_scores(registry_path: Path, model_id: str = MODEL, *, val_pos=VAL_POS, val_neg=VAL_NEG) -> Path:
    entry = Registry.load(registry_path).entry(model_id)
    path = registry_path.parent / "models" / model_id / "scores.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "model_id": model_id,
                "sha256": entry.sha256,
                "computed_at": "2026-12-01T00:00:00+00:00",
                "splits": {
                    "val": {"scores": val_pos + val_neg, "labels": [1] * len(val_pos) + [0] * len(val_neg)},
                    "test": {
                        "scores": TEST_POS + TEST_NEG,
                        "labels": [1] * len(TEST_POS) + [0] * len(TEST_NEG),
                    },
                },
            }
        )
    )
    return path


@pytest.fixture(autouse=True)
def isolated_media(settings):
    """The worker is a subprocess: keep the session's MEDIA_ROOT."""
    return settings.MEDIA_ROOT


@pytest.fixture()
def tiny_copy(tiny_registry: Path, tmp_path: Path, settings) -> Path:
    """A private copy of the session's tiny registry (same model ids and checksums as the
    worker's), with a scores.json for the active pneumonia model."""
    folder = shutil.copytree(tiny_registry.parent, tmp_path / "tiny")
    settings.RADTRIAGE_REGISTRY = folder / "registry.json"
    write_scores(settings.RADTRIAGE_REGISTRY)
    return settings.RADTRIAGE_REGISTRY


def edit_entry(path: Path, model_id: str, **changes) -> None:
    document = json.loads(path.read_text())
    for entry in document["models"]:
        if entry["id"] == model_id:
            entry.update(changes)
    path.write_text(json.dumps(document))


def test_the_preview_shows_the_threshold_and_the_figures_to_expect(admin_client, tiny_copy):
    html = admin_client.get(PAGE, {"target": "0.90"}).content.decode()
    assert "At a target sensitivity of 0.90: threshold 0.5500" in html
    # Test split, with exact intervals: sensitivity 4/5, specificity 9/10, flag rate 5/15.
    assert "<td>0.800</td><td>0.284–0.995</td><td>4 of 5 positives flagged</td>" in html
    assert "<td>0.900</td><td>0.555–0.997</td><td>9 of 10 negatives not flagged</td>" in html
    assert "<td>0.333</td><td>0.118–0.616</td><td>5 of 15 test images flagged</td>" in html
    # Validation, where the threshold was chosen.
    assert "<th>Sensitivity (validation)</th><td>0.900</td>" in html
    assert "<th>Specificity (validation)</th><td>0.800</td>" in html
    assert 'name="reason"' in html and "Confirm threshold 0.5500" in html
    assert not SiteOperatingPoint.objects.exists()  # a preview changes nothing


@pytest.mark.parametrize("target", ["0.5", "0.995", "1", "lots"])
def test_a_target_outside_the_validated_bounds_is_refused(admin_client, tiny_copy, target):
    html = admin_client.get(PAGE, {"target": target}).content.decode()
    assert 'id="operating-point-refused"' in html
    assert "between 0.80 and 0.99" in html or "must be a number" in html
    response = admin_client.post(PAGE, {"action": "set", "target": target, "reason": "try"}, follow=True)
    assert (
        "between 0.80 and 0.99" in response.content.decode()
        or "must be a number" in response.content.decode()
    )
    assert not SiteOperatingPoint.objects.exists()
    assert not AuditEvent.objects.filter(action="model.operating_point.set").exists()


def test_a_target_validation_cannot_reach_without_flagging_everything_is_refused(admin_client, tiny_copy):
    # The lowest positive scores below every negative: 0.99 keeps all positives, flags all.
    write_scores(tiny_copy, val_pos=[0.9] * 9 + [0.01], val_neg=[0.05] * 10)
    html = admin_client.get(PAGE, {"target": "0.99"}).content.decode()
    assert "not achievable on validation without flagging every validation image" in html


def test_confirming_needs_a_typed_reason(admin_client, tiny_copy):
    response = admin_client.post(PAGE, {"action": "set", "target": "0.90", "reason": "  "}, follow=True)
    assert "Type the reason for moving the threshold" in response.content.decode()
    assert not SiteOperatingPoint.objects.exists()


def test_an_experimental_model_keeps_its_registry_threshold(admin_client, tiny_copy):
    edit_entry(tiny_copy, MODEL, status="experimental", experimental_reason="tiny")
    html = admin_client.get(PAGE, {"target": "0.90"}).content.decode()
    assert "is experimental, not validated for clinical use" in html
    admin_client.post(PAGE, {"action": "set", "target": "0.90", "reason": "pilot"})
    assert not SiteOperatingPoint.objects.exists()


def test_a_radiologist_cannot_move_a_threshold(client, django_user_model, tiny_copy):
    user = with_role(django_user_model.objects.create_user("rad", password="pw-rad-123"), "radiologist")
    client.force_login(user)
    response = client.post(PAGE, {"action": "set", "target": "0.90", "reason": "faster worklist"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    # Even a staff account without the admin role is sent to the admin login.
    user.is_staff = True
    user.save()
    response = client.post(PAGE, {"action": "set", "target": "0.90", "reason": "faster worklist"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not SiteOperatingPoint.objects.exists()


def test_an_admin_confirms_it_and_it_is_audited_and_shown(admin_client, tiny_copy):
    response = admin_client.post(
        PAGE, {"action": "set", "target": "0.90", "reason": "ED wants fewer misses"}, follow=True
    )
    assert (
        f"The site threshold of {MODEL} is now 0.5500 (target sensitivity 0.90)" in response.content.decode()
    )
    point = SiteOperatingPoint.objects.get(active=True)
    entry = Registry.load(tiny_copy).entry(MODEL)
    assert (point.condition, point.model_id, point.model_sha256) == ("pneumonia", MODEL, entry.sha256)
    assert (point.threshold, point.target_sensitivity, point.registry_threshold) == (0.55, 0.9, 0.5)
    event = AuditEvent.objects.get(action="model.operating_point.set")
    assert event.actor_label == "admin"
    assert event.detail["reason"] == "ED wants fewer misses"
    assert event.detail["threshold"] == 0.55 and event.detail["previous_threshold"] == 0.5
    assert event.detail["expected_test"]["flag_rate"]["value"] == 0.3333
    # The registry page and the model card show the site's choice.
    registry_page = admin_client.get("/admin/model-registry/").content.decode()
    assert '<strong class="site-threshold">0.5500</strong>' in registry_page
    assert "for a target sensitivity of 0.90 (registry: 0.5000)" in registry_page
    card = admin_client.get(f"/models/{MODEL}/card/").content.decode()
    assert '<strong class="site-threshold">0.5500</strong>' in card and "ED wants fewer misses" in card
    assert "5 of 15 test images flagged" in card


def test_it_ends_when_the_active_model_changes(admin_client, tiny_copy):
    from web.clinical.registry.activation import registry_activate
    from web.clinical.registry.operating_points import site_operating_point_state

    admin_client.post(PAGE, {"action": "set", "target": "0.90", "reason": "ED"})
    assert site_operating_point_state(model_id=MODEL).threshold == 0.55
    # The registry edited by hand (another artifact under the same id): the site choice no
    # longer holds, at once, for the card and the registry page.
    original = Registry.load(tiny_copy).entry(MODEL).sha256
    edit_entry(tiny_copy, MODEL, sha256="b" * 64)
    assert site_operating_point_state(model_id=MODEL).site is None
    assert "site-threshold" not in admin_client.get(f"/models/{MODEL}/card/").content.decode()
    edit_entry(tiny_copy, MODEL, sha256=original)
    assert site_operating_point_state(model_id=MODEL).threshold == 0.55

    # Switching the active model ends it (audited), and switching back does not revive it.
    registry_activate(model_id="pneumonia-always-yes-children", actor=None, reason="pilot", command="test")
    assert not SiteOperatingPoint.objects.filter(active=True).exists()
    cleared = AuditEvent.objects.get(action="model.operating_point.clear")
    assert "the active model changed to pneumonia-always-yes-children" in cleared.detail["reason"]
    registry_activate(model_id=MODEL, actor=None, reason="back", command="test")
    state = site_operating_point_state(model_id=MODEL)
    assert state.site is None and state.threshold == 0.5
    assert "site-threshold" not in admin_client.get("/admin/model-registry/").content.decode()


def test_the_worker_judges_only_the_artifact_the_site_chose_at_its_threshold():
    """core applies a site threshold to exactly the model id and checksum it names."""
    from core.analysis import SiteThreshold, operating_threshold
    from core.model_manager import LoadedModel

    def loaded(model_id: str, sha: str | None, placeholder: bool = False) -> LoadedModel:
        return LoadedModel(
            model_id=model_id, condition="pneumonia", architecture="mobilenetv2", input_size=(64, 64),
            threshold=0.5, calibration={}, sha256=sha, is_placeholder=placeholder, placeholder_reason=None,
            experimental=False, experimental_reason=None, gradcam_layer=None, keras_model=None,
        )  # fmt: skip

    site = SiteThreshold(model_id="m", model_sha256="a" * 64, threshold=0.2)
    assert operating_threshold(loaded("m", "a" * 64), site) == 0.2
    assert operating_threshold(loaded("m", "b" * 64), site) == 0.5  # another artifact
    assert operating_threshold(loaded("other", "a" * 64), site) == 0.5  # another model
    assert operating_threshold(loaded("m", None, placeholder=True), site) == 0.5
    assert operating_threshold(loaded("m", "a" * 64), None) == 0.5


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_result_after_the_change_records_the_new_threshold(
    live_worker, tiny_copy, admin_user, django_user_model
):
    from rest_framework.test import APIClient

    from web.clinical.analysis.findings import analysis_is_finding, finding_q
    from web.clinical.registry.operating_points import site_operating_point_set

    tech = with_role(django_user_model.objects.create_user("tech", password="pw-tech-123"), "technologist")
    client = APIClient()
    client.force_login(tech)

    def analyse(mrn: str) -> Analysis:
        body = upload(client, dicom_bytes(patient_id=mrn, size=128, seed=11), conditions="pneumonia").json()
        pk = next(a["id"] for a in body["image"]["analyses"] if a["condition"] == "pneumonia")
        finished = ("succeeded", "failed")
        wait_for(lambda: Analysis.objects.get(pk=pk).state in finished, timeout=180, what="the analysis")
        analysis = Analysis.objects.get(pk=pk)
        assert analysis.state == "succeeded", analysis.error_message
        return analysis

    before = analyse("MRN-OP1")
    assert before.threshold == 0.5 and before.model_id == MODEL
    assert before.positive == (before.probability >= 0.5)
    p = before.probability
    # Validation scores whose 0.90 threshold lies on the other side of this image's probability.
    t = round(p + 0.002, 4) if before.positive else round(p - 0.002, 4)
    write_scores(tiny_copy, val_pos=[0.999] * 8 + [t, 0.0001], val_neg=[0.0001] * 9 + [0.9995])
    site_operating_point_set(model_id=MODEL, target_sensitivity=0.9, reason="ED", actor=admin_user)

    after = analyse("MRN-OP2")  # the same pixels, so the same probability
    assert after.probability == pytest.approx(p, abs=1e-6)
    assert after.threshold == pytest.approx(t)
    assert after.positive is (not before.positive)
    # The finding rule (the flag, the worklist) follows the stored result.
    assert analysis_is_finding(after) is after.positive
    assert Analysis.objects.filter(finding_q(), pk=after.pk).exists() is after.positive
