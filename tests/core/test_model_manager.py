"""ModelManager: verified lazy loading, a bounded cache, thread safety, flagged placeholders."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.analysis import analyze_xray, analyze_xrays
from core.errors import BodyPartMismatchError, RegistryError
from core.imaging import XRay
from core.model_manager import ModelManager
from core.registry import sha256_file
from core.wording import EXPERIMENTAL, PLACEHOLDER
from tests.core.tiny_models import SIZE, make_blob_images

pytestmark = pytest.mark.slow


def registry_entry(model_id: str, artifact: str, sha: str | None, **extra) -> dict:
    return {
        "id": model_id,
        "condition": "pneumonia",
        "architecture": "custom",
        "input_size": [SIZE, SIZE],
        "class_labels": ["no blob", "blob"],
        "threshold": 0.5,
        "artifact": artifact,
        "sha256": sha,
        **extra,
    }


def write_registry(path: Path, models: list[dict], active: dict[str, str]) -> None:
    path.write_text(json.dumps({"models": models, "active_models": active}))
    # Bump mtime so a manager that already read the old file notices the change.
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))


@pytest.fixture(scope="module")
def saved_model(blob_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("artifacts") / "blob.keras"
    blob_model.save(path)
    return path


@pytest.fixture()
def registry(tmp_path, saved_model) -> Path:
    shutil.copy(saved_model, tmp_path / "model.keras")
    path = tmp_path / "registry.json"
    sha = sha256_file(tmp_path / "model.keras")
    write_registry(path, [registry_entry("blob-v1", "model.keras", sha)], {"pneumonia": "blob-v1"})
    return path


def test_the_active_model_is_loaded_verified_and_predicts(registry, blob_model):
    manager = ModelManager(registry)
    loaded = manager.get(condition="pneumonia")
    assert not loaded.is_placeholder and loaded.placeholder_reason is None
    assert loaded.model_id == "blob-v1"
    assert loaded.sha256 == sha256_file(registry.parent / "model.keras")
    images = make_blob_images(8, seed=3).images
    np.testing.assert_allclose(
        loaded.predict(images), blob_model.predict(images, verbose=0).ravel(), atol=1e-5
    )


def test_the_cache_loads_each_model_once(registry):
    manager = ModelManager(registry)
    first = manager.get(condition="pneumonia")
    for _ in range(5):
        assert manager.get(condition="pneumonia") is first
    assert manager.get(model_id="blob-v1") is first
    assert manager.load_count == 1


def test_concurrent_first_requests_load_once_and_agree(registry):
    manager = ModelManager(registry)
    images = make_blob_images(4, seed=5).images
    results, errors = [], []

    def work() -> None:
        try:
            results.append(manager.get(condition="pneumonia").predict(images))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert manager.load_count == 1
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], atol=1e-6)


def test_missing_artifact_gives_a_flagged_placeholder(registry):
    (registry.parent / "model.keras").unlink()
    loaded = ModelManager(registry).get(condition="pneumonia")
    assert loaded.is_placeholder and loaded.architecture == "placeholder"
    assert "missing" in loaded.placeholder_reason
    assert loaded.sha256 is None


def test_corrupt_artifact_gives_a_flagged_placeholder(registry):
    artifact = registry.parent / "model.keras"
    artifact.write_bytes(b"not a keras file at all" * 100)
    write_registry(
        registry, [registry_entry("blob-v1", "model.keras", sha256_file(artifact))], {"pneumonia": "blob-v1"}
    )
    loaded = ModelManager(registry).get(condition="pneumonia")
    assert loaded.is_placeholder and "could not be loaded" in loaded.placeholder_reason


def test_a_truncated_artifact_gives_a_flagged_placeholder(registry):
    artifact = registry.parent / "model.keras"
    artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    write_registry(
        registry, [registry_entry("blob-v1", "model.keras", sha256_file(artifact))], {"pneumonia": "blob-v1"}
    )
    loaded = ModelManager(registry).get(condition="pneumonia")
    assert loaded.is_placeholder and "could not be loaded" in loaded.placeholder_reason


def test_a_job_time_limit_while_loading_propagates_instead_of_caching_a_placeholder(registry):
    """Celery delivers a job's soft time limit as an exception raised from a signal handler,
    possibly while a model loads: that is the job's problem (it retries), not the file's."""
    import signal

    class JobTimeLimit(Exception):
        pass

    def interrupt(*_):
        raise JobTimeLimit()

    manager = ModelManager(registry)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)  # every 50 ms until disarmed
        with pytest.raises(JobTimeLimit):
            for _ in range(200):  # loads again until an alarm lands in the middle of one
                manager._cache.clear()
                manager.get(condition="pneumonia")
        signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    loaded = manager.get(condition="pneumonia")
    assert not loaded.is_placeholder and loaded.model_id == "blob-v1"


def test_a_restored_artifact_is_served_again_without_a_restart(registry, monkeypatch):
    import core.model_manager as model_manager

    artifact = registry.parent / "model.keras"
    good = artifact.read_bytes()
    manager = ModelManager(registry)
    artifact.write_bytes(b"corrupted" * 100)
    assert manager.get(condition="pneumonia").is_placeholder
    # A broken file that stays as it is is not read again on every job...
    monkeypatch.setattr(model_manager, "sha256_file", lambda path: pytest.fail("re-hashed"))
    assert manager.get(condition="pneumonia").is_placeholder
    monkeypatch.undo()
    # ...but the next job after the file is put back loads it: no restart, no waiting.
    artifact.write_bytes(good)
    loaded = manager.get(condition="pneumonia")
    assert not loaded.is_placeholder and loaded.model_id == "blob-v1"


def test_a_model_file_deleted_or_overwritten_under_a_warm_worker_gives_a_placeholder(registry):
    """The model is in memory; its file is then deleted, or overwritten with other bytes.
    The next job says so (placeholder, no diagnostic value) instead of answering from a model
    whose file no longer checks out; and it comes back once the file is restored."""
    artifact = registry.parent / "model.keras"
    good = artifact.read_bytes()
    manager = ModelManager(registry)
    assert not manager.get(condition="pneumonia").is_placeholder

    artifact.unlink()
    missing = manager.get(condition="pneumonia")
    assert missing.is_placeholder and "missing" in missing.placeholder_reason

    artifact.write_bytes(good[:-10] + b"0123456789")
    corrupt = manager.get(condition="pneumonia")
    assert corrupt.is_placeholder and "checksum" in corrupt.placeholder_reason

    artifact.write_bytes(good)
    back = manager.get(condition="pneumonia")
    assert not back.is_placeholder and back.model_id == "blob-v1"
    assert manager.load_count == 2


def test_wrong_checksum_gives_a_flagged_placeholder(registry):
    write_registry(registry, [registry_entry("blob-v1", "model.keras", "0" * 64)], {"pneumonia": "blob-v1"})
    loaded = ModelManager(registry).get(condition="pneumonia")
    assert loaded.is_placeholder and "checksum" in loaded.placeholder_reason


def test_no_active_model_gives_a_flagged_placeholder_and_analysis_warns(registry):
    write_registry(registry, [], {})
    manager = ModelManager(registry)
    xray = XRay(pixels=np.full((100, 80), 90, np.uint8), metadata={}, source_format="png")
    outcome = analyze_xray(xray, condition="cardiomegaly", manager=manager)
    assert outcome.is_placeholder and outcome.model_id == "placeholder:cardiomegaly"
    assert outcome.warnings[0].startswith(PLACEHOLDER)
    assert outcome.to_dict()["is_placeholder"] is True
    assert outcome.heatmap.shape == (128, 128)


def test_switching_the_active_model_takes_effect_without_restart(registry, saved_model):
    manager = ModelManager(registry)
    assert manager.get(condition="pneumonia").model_id == "blob-v1"
    shutil.copy(saved_model, registry.parent / "model2.keras")
    sha = sha256_file(registry.parent / "model2.keras")
    write_registry(
        registry,
        [registry_entry("blob-v1", "model.keras", sha), registry_entry("blob-v2", "model2.keras", sha)],
        {"pneumonia": "blob-v2"},
    )
    assert manager.get(condition="pneumonia").model_id == "blob-v2"


def test_the_cache_is_bounded(registry, saved_model):
    shutil.copy(saved_model, registry.parent / "model2.keras")
    sha = sha256_file(registry.parent / "model2.keras")
    write_registry(
        registry,
        [registry_entry("blob-v1", "model.keras", sha), registry_entry("blob-v2", "model2.keras", sha)],
        {"pneumonia": "blob-v1"},
    )
    manager = ModelManager(registry, cache_size=1)
    manager.get(model_id="blob-v1")
    manager.get(model_id="blob-v2")
    assert manager.cached_model_ids() == ["blob-v2"]


def test_experimental_models_carry_their_warning(registry):
    sha = sha256_file(registry.parent / "model.keras")
    write_registry(
        registry,
        [
            registry_entry(
                "blob-v1",
                "model.keras",
                sha,
                status="experimental",
                experimental_reason="trained on 25 images",
            )
        ],
        {"pneumonia": "blob-v1"},
    )
    xray = XRay(pixels=np.full((SIZE, SIZE), 90, np.uint8), metadata={}, source_format="png")
    outcome = analyze_xray(xray, condition="pneumonia", manager=ModelManager(registry))
    assert outcome.experimental and not outcome.is_placeholder
    assert outcome.warnings == [f"{EXPERIMENTAL} trained on 25 images"]
    assert not outcome.flag  # whatever its probability, it never puts a study first


def test_a_chest_model_is_never_run_on_a_knee(registry):
    knee = XRay(
        pixels=np.zeros((64, 64), np.uint8), metadata={"BodyPartExamined": "KNEE"}, source_format="dicom"
    )
    with pytest.raises(BodyPartMismatchError, match="KNEE"):
        analyze_xray(knee, condition="pneumonia", manager=ModelManager(registry))


def test_a_model_id_for_another_condition_is_refused(registry):
    with pytest.raises(RegistryError, match="is for pneumonia, not fracture"):
        ModelManager(registry).get(condition="fracture", model_id="blob-v1")


def test_a_batch_gives_each_image_the_result_it_gets_alone(registry):
    # The worker analyses bulk uploads in batches: batching must never change a result.
    data = make_blob_images(5, seed=21)
    xrays = [
        XRay(
            pixels=np.round(img[..., 0] * 255).astype(np.uint8),
            metadata={"BodyPartExamined": "CHEST"},
            source_format="dicom",
            notes=(f"n{i}",),
        )
        for i, img in enumerate(data.images)
    ]
    manager = ModelManager(registry)
    alone = [analyze_xray(x, condition="pneumonia", manager=manager) for x in xrays]
    batched = analyze_xrays(xrays, condition="pneumonia", manager=manager, batch_size=2)

    assert [o.notes[:1] for o in batched] == [(f"n{i}",) for i in range(5)]  # order kept
    for one, many in zip(alone, batched, strict=True):
        assert many.probability == pytest.approx(one.probability, abs=1e-5)
        assert many.positive == one.positive and many.model_sha256 == one.model_sha256
        np.testing.assert_allclose(many.heatmap, one.heatmap, atol=1e-4)
    # Blobs and plain images really differ, so equal results are not a constant output.
    assert max(o.probability for o in batched) - min(o.probability for o in batched) > 0.2


def test_a_batch_with_a_knee_among_chests_is_refused_before_the_model_runs(registry):
    chest = XRay(
        pixels=np.zeros((64, 64), np.uint8), metadata={"BodyPartExamined": "CHEST"}, source_format="dicom"
    )
    knee = XRay(
        pixels=np.zeros((64, 64), np.uint8), metadata={"BodyPartExamined": "KNEE"}, source_format="dicom"
    )
    manager = ModelManager(registry)
    with pytest.raises(BodyPartMismatchError, match="KNEE"):
        analyze_xrays([chest, knee], condition="pneumonia", manager=manager)
    assert manager.load_count == 0
    with pytest.raises(ValueError, match="batch_size"):
        analyze_xrays([chest], condition="pneumonia", manager=manager, batch_size=0)
