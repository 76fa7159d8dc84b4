"""Admins see the model catalogue and switch the active model per condition in Django admin."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from core.registry import Registry
from tests.web.fixtures import with_role
from web.clinical.models import AuditEvent

pytestmark = pytest.mark.django_db


def model(model_id: str, **extra) -> dict:
    return {
        "id": model_id,
        "condition": "pneumonia",
        "architecture": "mobilenetv2",
        "input_size": [128, 128],
        "class_labels": ["no pneumonia", "pneumonia"],
        "threshold": 0.5,
        "artifact": f"models/{model_id}/model.keras",
        "sha256": "a" * 64,
        **extra,
    }


@pytest.fixture()
def registry(tmp_path: Path, settings) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(
        json.dumps(
            {
                "active_models": {"pneumonia": "pn-v1"},
                "models": [
                    model("pn-v1", metrics={"test": {"auc": 0.991, "auc_ci95": [0.98, 0.996]}}),
                    model(
                        "pn-v2",
                        status="experimental",
                        experimental_reason="trained on 25 images",
                        inactive_reason="no ImageNet weights offline; 15 CPU-hours from scratch",
                    ),
                ],
            }
        )
    )
    settings.RADTRIAGE_REGISTRY = path
    return path


@pytest.fixture()
def tiny_copy(tiny_registry: Path, tmp_path: Path, settings) -> Path:
    """A private copy of the session's tiny registry (real Keras artifacts), free to change."""
    folder = shutil.copytree(tiny_registry.parent, tmp_path / "tiny")
    settings.RADTRIAGE_REGISTRY = folder / "registry.json"
    return settings.RADTRIAGE_REGISTRY


def edit_entry(path: Path, model_id: str, **changes) -> None:
    document = json.loads(path.read_text())
    for entry in document["models"]:
        if entry["id"] == model_id:
            entry.update(changes)
    path.write_text(json.dumps(document))


def test_an_admin_sees_every_model_its_status_and_which_is_active(admin_client, registry):
    page = admin_client.get("/admin/model-registry/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "pn-v1" in html and "pn-v2" in html and "0.991" in html
    assert "EXPERIMENTAL" in html and "trained on 25 images" in html
    assert "Kept inactive: no ImageNet weights offline; 15 CPU-hours from scratch" in html
    assert "No active model for: Cardiomegaly" in html  # what runs on a placeholder
    assert 'href="/admin/model-registry/"' in admin_client.get("/admin/").content.decode()


def test_an_admin_switches_the_active_model_and_it_is_audited(admin_client, tiny_copy):
    """After the confirmation (a validated model: no reason needed), its artifact is checked
    (here a tiny real Keras model) and the switch is audited with the checks and the reason."""
    response = admin_client.post(
        "/admin/model-registry/",
        {"model_id": "pneumonia-always-yes-children", "confirmed": "1", "reason": "children's ward pilot"},
        follow=True,
    )
    assert "The active model for pneumonia is now pneumonia-always-yes-children" in response.content.decode()
    assert Registry.load(tiny_copy).active_models["pneumonia"] == "pneumonia-always-yes-children"
    event = AuditEvent.objects.get(action="model.activate")
    assert event.actor_label == "admin"
    assert {k: event.detail[k] for k in ("condition", "model_id", "previous", "status", "reason")} == {
        "condition": "pneumonia",
        "model_id": "pneumonia-always-yes-children",
        "previous": "pneumonia-tiny-test",
        "status": "validated",
        "reason": "children's ward pilot",
    }
    assert set(event.detail["checks"]) == {"present", "checksum", "loads", "predicts"}
    assert "probability" in event.detail["checks"]["predicts"]


def test_an_unknown_model_is_refused_and_nothing_changes(admin_client, registry):
    before = registry.read_text()
    response = admin_client.post("/admin/model-registry/", {"model_id": "nope"}, follow=True)
    assert "is not in the registry" in response.content.decode()
    assert registry.read_text() == before


def test_a_radiologist_cannot_reach_the_registry_page(client, django_user_model, registry):
    user = with_role(django_user_model.objects.create_user("rad", password="pw-rad-123"), "radiologist")
    client.force_login(user)
    before = registry.read_text()
    response = client.post("/admin/model-registry/", {"model_id": "pn-v2"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert registry.read_text() == before


def test_activate_asks_for_a_confirmation_showing_status_and_test_figures(admin_client, registry):
    page = admin_client.get("/admin/model-registry/")
    assert 'href="?confirm=pn-v2"' in page.content.decode()
    # A POST without the confirmation switches nothing: it leads to the confirmation.
    before = registry.read_text()
    response = admin_client.post("/admin/model-registry/", {"model_id": "pn-v1"})
    assert response.status_code == 302 and response["Location"].endswith("?confirm=pn-v1")
    assert registry.read_text() == before

    validated = admin_client.get("/admin/model-registry/?confirm=pn-v1").content.decode()
    assert "Status:" in validated and "<strong>validated</strong>" in validated
    assert "AUC" in validated and "0.991" in validated and "0.980–0.996" in validated
    assert 'name="reason" rows="2" cols="80"></textarea>' in validated  # optional

    experimental = admin_client.get("/admin/model-registry/?confirm=pn-v2").content.decode()
    assert "EXPERIMENTAL, not fit for triage" in experimental and "trained on 25 images" in experimental
    assert "No test figures recorded" in experimental
    assert "required></textarea>" in experimental


def test_the_test_figures_come_from_metrics_json_when_the_registry_has_none(admin_client, registry):
    folder = registry.parent / "models" / "pn-v2"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            {"metrics": {"test": {"n": 120, "n_positive": 40, "n_negative": 80, "sensitivity": 0.925}}}
        )
    )
    page = admin_client.get("/admin/model-registry/?confirm=pn-v2").content.decode()
    assert "metrics.json" in page and "Sensitivity" in page and "0.925" in page
    assert "120 (40 positive, 80 negative)" in page


def test_an_experimental_model_needs_a_typed_reason(admin_client, tiny_copy):
    before = tiny_copy.read_text()
    response = admin_client.post(
        "/admin/model-registry/",
        {"model_id": "pneumonia-always-yes-experimental", "confirmed": "1", "reason": "   "},
        follow=True,
    )
    html = response.content.decode()
    assert "it is experimental, so type the reason" in html
    assert 'id="activation-confirm"' in html  # back on the confirmation, to type it
    assert tiny_copy.read_text() == before and not AuditEvent.objects.exists()

    admin_client.post(
        "/admin/model-registry/",
        {"model_id": "pneumonia-always-yes-experimental", "confirmed": "1", "reason": "reader study, week 3"},
    )
    assert Registry.load(tiny_copy).active_models["pneumonia"] == "pneumonia-always-yes-experimental"
    assert AuditEvent.objects.get(action="model.activate").detail["reason"] == "reader study, week 3"


def test_a_model_whose_card_says_do_not_use_needs_a_reason(admin_client, tiny_copy):
    (tiny_copy.parent / "models" / "card.md").write_text("# Card\n\nDo not use: labels were wrong.\n")
    edit_entry(tiny_copy, "pneumonia-always-yes-children", card="models/card.md")
    page = admin_client.get("/admin/model-registry/?confirm=pneumonia-always-yes-children").content.decode()
    assert "Its model card says: do not use." in page and "required></textarea>" in page
    response = admin_client.post(
        "/admin/model-registry/", {"model_id": "pneumonia-always-yes-children", "confirmed": "1"}, follow=True
    )
    assert "its model card says not to use it" in response.content.decode()
    assert Registry.load(tiny_copy).active_models["pneumonia"] == "pneumonia-tiny-test"


def test_a_missing_artifact_is_refused_and_nothing_changes(admin_client, registry):
    before = registry.read_text()
    response = admin_client.post(
        "/admin/model-registry/", {"model_id": "pn-v2", "confirmed": "1", "reason": "try it"}, follow=True
    )
    assert "check &#x27;present&#x27; failed: The artifact models/pn-v2/model.keras is missing" in (
        response.content.decode()
    )
    assert registry.read_text() == before and not AuditEvent.objects.exists()


def test_an_artifact_that_fails_its_checksum_is_refused(admin_client, tiny_copy):
    edit_entry(tiny_copy, "pneumonia-always-yes-children", sha256="0" * 64)
    response = admin_client.post(
        "/admin/model-registry/", {"model_id": "pneumonia-always-yes-children", "confirmed": "1"}, follow=True
    )
    html = response.content.decode()
    assert "check &#x27;checksum&#x27; failed" in html and "changed or corrupted" in html
    assert Registry.load(tiny_copy).active_models["pneumonia"] == "pneumonia-tiny-test"


def test_an_artifact_that_does_not_load_is_refused(admin_client, tiny_copy):
    broken = tiny_copy.parent / "models" / "always-yes.keras"
    broken.write_bytes(b"PK\x03\x04 not a keras archive")
    edit_entry(
        tiny_copy, "pneumonia-always-yes-children", sha256=hashlib.sha256(broken.read_bytes()).hexdigest()
    )
    response = admin_client.post(
        "/admin/model-registry/", {"model_id": "pneumonia-always-yes-children", "confirmed": "1"}, follow=True
    )
    assert "check &#x27;loads&#x27; failed: Keras cannot load it" in response.content.decode()
    assert Registry.load(tiny_copy).active_models["pneumonia"] == "pneumonia-tiny-test"
    assert not AuditEvent.objects.exists()
