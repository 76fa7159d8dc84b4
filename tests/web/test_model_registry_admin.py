"""Admins see the model catalogue and switch the active model per condition in Django admin."""

from __future__ import annotations

import json
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
                    model("pn-v2", status="experimental", experimental_reason="trained on 25 images"),
                ],
            }
        )
    )
    settings.RADTRIAGE_REGISTRY = path
    return path


def test_an_admin_sees_every_model_its_status_and_which_is_active(admin_client, registry):
    page = admin_client.get("/admin/model-registry/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "pn-v1" in html and "pn-v2" in html and "0.991" in html
    assert "EXPERIMENTAL" in html and "trained on 25 images" in html
    assert "No active model for: Cardiomegaly" in html  # what runs on a placeholder
    assert 'href="/admin/model-registry/"' in admin_client.get("/admin/").content.decode()


def test_an_admin_switches_the_active_model_and_it_is_audited(admin_client, registry):
    response = admin_client.post("/admin/model-registry/", {"model_id": "pn-v2"}, follow=True)
    assert "The active model for pneumonia is now pn-v2" in response.content.decode()
    assert Registry.load(registry).active_models["pneumonia"] == "pn-v2"
    event = AuditEvent.objects.get(action="model.activate")
    assert event.detail == {
        "condition": "pneumonia",
        "model_id": "pn-v2",
        "previous": "pn-v1",
        "status": "experimental",
    }


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
