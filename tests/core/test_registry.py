"""registry.json: validation names every mistake; writes are atomic; entries round-trip."""

from __future__ import annotations

import json

import pytest

from core.errors import RegistryError
from core.registry import Registry, validate_registry


def entry(**overrides):
    base = {
        "id": "pneumonia-mobilenetv2-128-v1",
        "condition": "pneumonia",
        "architecture": "mobilenetv2",
        "input_size": [128, 128],
        "class_labels": ["no pneumonia", "pneumonia"],
        "threshold": 0.42,
        "artifact": "models/pneumonia-mobilenetv2-128-v1/model.keras",
        "sha256": "a" * 64,
        "calibration": {"method": "temperature", "a": 0.5, "b": 0.0},
    }
    base.update(overrides)
    return base


def test_a_good_registry_has_no_problems():
    assert validate_registry({"models": [entry()], "active_models": {"pneumonia": entry()["id"]}}) == []


def test_every_mistake_is_reported_with_where_it_is():
    document = {
        "models": [
            entry(),
            entry(),  # duplicate id
            entry(
                id="x",
                condition="gout",
                architecture="resnet",
                threshold=1.5,
                sha256="XYZ",
                input_size=[128],
                class_labels=["only one"],
                status="beta",
                calibration={"method": "isotonic"},
            ),
            {"id": "y"},
        ],
        "active_models": {"pneumonia": "missing-model", "fracture": entry()["id"], "gout": "x"},
    }
    problems = "\n".join(validate_registry(document))
    for expected in (
        "duplicate id 'pneumonia-mobilenetv2-128-v1'",
        "unknown condition 'gout'",
        "unknown architecture 'resnet'",
        "threshold must be strictly between 0 and 1",
        "sha256 must be 64 lowercase hex",
        "input_size must be [height, width]",
        "class_labels must name exactly two classes",
        "status must be one of",
        "calibration.method must be one of",
        "models[3] ('y'): missing required field 'condition'",
        "active_models.pneumonia: model 'missing-model' is not in 'models'",
        "is for condition 'pneumonia', not 'fracture'",
        "active_models: unknown condition 'gout'",
    ):
        assert expected in problems, expected


def test_loading_a_broken_file_says_where(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text('{"models": [,]}')
    with pytest.raises(RegistryError, match=r"not valid JSON \(line 1"):
        Registry.load(path)
    path.write_text(json.dumps({"models": [entry(threshold=0)], "active_models": {}}))
    with pytest.raises(RegistryError, match="threshold"):
        Registry.load(path)
    with pytest.raises(RegistryError, match="not found"):
        Registry.load(tmp_path / "absent.json")


def test_register_activate_save_round_trips_and_keeps_unknown_fields(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": [], "active_models": {}, "description": "ours"}))
    registry = Registry.load(path)
    registry.register(entry(metrics={"test": {"auc": 0.99}}))
    registry.set_active(entry()["id"])
    registry.save()
    again = Registry.load(path)
    assert again.active_entry("pneumonia").threshold == 0.42
    assert again.active_entry("pneumonia").raw["metrics"]["test"]["auc"] == 0.99
    assert again.extra["description"] == "ours"
    assert again.artifact_path(again.entry(entry()["id"])) == tmp_path / entry()["artifact"]


def test_an_invalid_registry_is_never_written(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": [], "active_models": {}}))
    registry = Registry.load(path)
    registry.register(entry(threshold=2.0))
    with pytest.raises(RegistryError, match="Refusing to write"):
        registry.save()
    assert json.loads(path.read_text())["models"] == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": [], "active_models": {}}))
    registry = Registry.load(path)
    registry.register(entry())
    registry.set_active(entry()["id"])

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("core.registry.os.replace", explode)
    with pytest.raises(OSError):
        registry.save()
    assert json.loads(path.read_text())["models"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]


def test_unknown_model_id_lists_what_is_registered(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": [entry()], "active_models": {}}))
    with pytest.raises(RegistryError, match="Registered: pneumonia-mobilenetv2-128-v1"):
        Registry.load(path).entry("nope")


def _shipped(folder, models, active):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "registry.json"
    path.write_text(json.dumps({"schema_version": 1, "models": models, "active_models": active}))
    return path


def test_a_deployment_registry_starts_as_a_copy_whose_artifacts_still_resolve(tmp_path):
    from core.registry import registry_sync

    source = _shipped(tmp_path / "image", [entry()], {"pneumonia": entry()["id"]})
    target = tmp_path / "volume" / "registry.json"

    changes = registry_sync(source, target)

    assert changes == [f"added model {entry()['id']}", f"pneumonia: active model {entry()['id']}"]
    deployed = Registry.load(target)
    shipped = Registry.load(source)
    [model_id] = deployed.models
    assert (
        deployed.artifact_path(deployed.entry(model_id))
        == shipped.artifact_path(shipped.entry(model_id)).resolve()
    )
    assert deployed.active_models == {"pneumonia": model_id}


def test_an_upgrade_adds_new_models_and_keeps_what_the_admins_chose(tmp_path):
    from core.registry import registry_sync

    v1, v2 = entry(), entry(id="pneumonia-mobilenetv2-128-v2")
    knee = entry(id="knee-v1", condition="knee_osteoarthritis")
    target = tmp_path / "volume" / "registry.json"
    registry_sync(_shipped(tmp_path / "old", [v1], {"pneumonia": v1["id"]}), target)
    # An admin switched pneumonia off the shipped default, to a model of their own.
    deployed = Registry.load(target)
    deployed.register(entry(id="site-pneumonia", artifact="/srv/site.keras"))
    deployed.set_active("site-pneumonia")
    deployed.save()

    changes = registry_sync(
        _shipped(tmp_path / "new", [v1, v2, knee], {"pneumonia": v2["id"], "knee_osteoarthritis": "knee-v1"}),
        target,
    )

    after = Registry.load(target)
    assert sorted(changes) == sorted(
        [f"added model {v2['id']}", "added model knee-v1", "knee_osteoarthritis: active model knee-v1"]
    )
    assert after.active_models["pneumonia"] == "site-pneumonia"  # the admins' choice stands
    assert set(after.models) == {v1["id"], v2["id"], "knee-v1", "site-pneumonia"}
    stamp = target.stat().st_mtime_ns
    assert registry_sync(tmp_path / "new" / "registry.json", target) == []
    assert target.stat().st_mtime_ns == stamp  # nothing to do: not rewritten


def test_saving_the_registry_keeps_it_readable_by_the_other_services(tmp_path) -> None:
    """The web process saves it when an admin switches models; the worker (another user in
    the compose stack) must still read it. mkstemp alone left it 0600."""
    import os
    import stat

    from core.registry import write_json_atomic

    path = tmp_path / "registry.json"
    write_json_atomic(path, {"active_models": {}, "models": []})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    os.chmod(path, 0o664)
    write_json_atomic(path, {"active_models": {}, "models": []})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o664
