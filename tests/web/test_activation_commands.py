"""The training commands switch a model on only through the registry's checked step: a reason
on the command line, an artifact that passes its check, and an audit row naming the command."""

from __future__ import annotations

import getpass
import io
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from core.registry import Registry
from web.clinical.models import AuditEvent

pytestmark = pytest.mark.django_db

MODEL = "pneumonia-always-yes-children"  # a validated tiny real Keras model, inactive


@pytest.fixture()
def registry(tiny_registry: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny registry (real Keras artifacts), free to change."""
    return shutil.copytree(tiny_registry.parent, tmp_path / "tiny") / "registry.json"


def set_checksum(path: Path, model_id: str, sha256: str) -> None:
    document = json.loads(path.read_text())
    next(e for e in document["models"] if e["id"] == model_id)["sha256"] = sha256
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("command", ["train", "train_boxed"])
def test_activate_without_a_reason_is_refused_before_any_training(command: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"active_models": {}, "models": []}))
    before = registry.read_text()
    options = {"condition": "fracture", "activate": True, "registry": str(registry)}
    if command == "train":
        options |= {"data": str(tmp_path / "data"), "models_dir": str(tmp_path / "models")}
    with pytest.raises(CommandError, match=r'a reason is required \(--reason "why this model goes live"\)'):
        call_command(command, **options)
    assert registry.read_text() == before and not (tmp_path / "models").exists()


def test_train_activate_refuses_an_artifact_that_fails_its_check(registry: Path) -> None:
    set_checksum(registry, MODEL, "0" * 64)
    with pytest.raises(CommandError, match=f"{MODEL} was not activated: check 'checksum' failed"):
        call_command(
            "train", annotate=True, model_id=MODEL, activate=True, reason="pilot", registry=str(registry)
        )
    assert Registry.load(registry).active_models["pneumonia"] == "pneumonia-tiny-test"
    assert not AuditEvent.objects.filter(action="model.activate").exists()


def test_train_activate_with_a_reason_switches_the_model_on_and_audits_it(registry: Path) -> None:
    call_command(
        "train",
        annotate=True,
        model_id=MODEL,
        activate=True,
        reason="children's ward pilot",
        registry=str(registry),
        stdout=io.StringIO(),
    )
    assert Registry.load(registry).active_models["pneumonia"] == MODEL
    event = AuditEvent.objects.get(action="model.activate")
    assert event.actor is None and event.actor_label == "system"
    assert event.detail["model_id"] == MODEL and event.detail["previous"] == "pneumonia-tiny-test"
    assert event.detail["reason"] == "children's ward pilot"
    assert event.detail["os_user"] == getpass.getuser() and "manage.py" in event.detail["command"]
    assert set(event.detail["checks"]) == {"present", "checksum", "loads", "predicts"}


def test_activate_model_switches_an_experimental_model_on_with_its_reason(registry: Path) -> None:
    call_command(
        "activate_model",
        "pneumonia-always-yes-experimental",
        reason="reader study, week 3",
        registry=str(registry),
        stdout=io.StringIO(),
    )
    assert Registry.load(registry).active_models["pneumonia"] == "pneumonia-always-yes-experimental"
    event = AuditEvent.objects.get(action="model.activate")
    assert event.detail["reason"] == "reader study, week 3" and event.detail["status"] == "experimental"
