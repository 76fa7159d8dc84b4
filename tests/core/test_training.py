"""A real (tiny) training run: loss falls, checkpoints resume, the registry entry validates,
and training preprocesses exactly like serving."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.preprocessing import resize_gray, to_model_input
from core.registry import Registry, sha256_file, validate_registry
from core.training.config import TrainConfig, plan_stages
from core.training.data import load_samples
from core.training.train import train_model

pytestmark = pytest.mark.slow


def _make_dataset(root: Path, *, n_per_class: int = 16, size: int = 40, seed: int = 0) -> Path:
    """<root>/<split>/<negative|positive>/*.png: positives carry a bright blob."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("val", 10), ("test", 6)):
        for label in ("negative", "positive"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(20, 90, (size, size)).astype(np.uint8)
                if label == "positive":
                    r, c = rng.integers(4, size - 16, 2)
                    img[r : r + 12, c : c + 12] = 230
                Image.fromarray(img).save(folder / f"{split}-{label}-{i}.png")
    return root


def _config(data: Path, **kw) -> TrainConfig:
    base = dict(
        condition="fracture",
        data=str(data),
        architecture="mobilenetv2",
        model_id="tiny-fracture",
        input_size=(32, 32),
        protocol="quick",
        epochs=4,
        batch_size=8,
        lr=1e-3,
        n_boot=50,
        bn_reestimate_images=64,
        threads=2,
        dense_units=(16,),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "registry.json").write_text(json.dumps({"active_models": {}, "models": []}))
    _make_dataset(tmp_path / "data")
    return tmp_path


def test_a_tiny_run_interrupted_and_resumed_learns_registers_and_its_artifact_loads(project: Path) -> None:
    """One tiny run (training is the suite's slowest step): stopped after two epochs, resumed
    from its checkpoint, then everything a finished run must give."""
    import keras

    logs: list[str] = []
    first = train_model(
        _config(project / "data"),
        models_dir=project / "models",
        registry_path=project / "registry.json",
        stop_after_epochs=2,
        log=logs.append,
    )
    assert not first.finished and first.epochs_run == 2
    assert Registry.load(project / "registry.json").models == {}  # nothing registered yet
    state = json.loads((project / "models/tiny-fracture/checkpoints/state.json").read_text())
    assert state["epochs_done"] == 2

    result = train_model(
        _config(project / "data"),
        models_dir=project / "models",
        registry_path=project / "registry.json",
        resume=True,
        command="pytest",
        log=logs.append,
    )
    assert result.finished and result.epochs_run == 4
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]  # continued, not restarted
    assert any("resuming tiny-fracture: 2 epoch(s) done" in m for m in logs)
    # Adam's moments came back with the weights: the resumed epochs continue, not restart.
    assert any("resumed the optimizer's state" in m for m in logs)
    losses = [h["loss"] for h in result.history]
    # A from-scratch backbone on 32 images is noisy epoch to epoch (batch-8 BatchNorm,
    # dropout; the mean of the last two epochs once came out above the first): judge whether
    # the resumed sitting still learns, its best epoch against the first.
    assert min(losses[2:]) < losses[0]

    registry = Registry.load(project / "registry.json")  # validates
    entry = registry.entry("tiny-fracture")
    # Registered inactive: switching it on is the registry's checked, audited step.
    assert registry.active_models == {}
    assert validate_registry(registry.to_document()) == []
    artifact = registry.artifact_path(entry)
    assert entry.artifact == "models/tiny-fracture/model.keras"
    assert sha256_file(artifact) == entry.sha256
    raw = entry.raw
    assert raw["training"]["epochs_run"] == 4 and raw["training"]["seed"] == 42
    assert raw["training"]["sittings"] == 2
    assert raw["calibration"]["method"] == "platt"
    assert 0 < raw["threshold"] < 1
    for split in ("val", "test"):
        assert {"auc", "auc_ci95", "accuracy", "sensitivity", "specificity"} <= set(raw["metrics"][split])
    assert "auc" in raw["baseline"]
    # The thumbnail baseline at its own operating point, compared with the model there.
    op = raw["baseline"]["operating_point"]
    assert {"accuracy", "sensitivity", "specificity", "specificity_ci95"} <= set(op)
    assert "beats_baseline" in raw["baseline"]["comparison"]
    assert raw["metrics"]["test"]["brier_skill"] is not None
    assert raw["population"]["recogniser_classes"] == ["limb"]
    # 12 test images cannot validate anything: registered experimental, the reason in words.
    assert raw["status"] == "experimental" and "tiny test set" in raw["experimental_reason"]
    card = (project / raw["card"]).read_text()
    assert "Intended use" in card and "Limitations" in card and "baseline" in card
    assert "## Population" in card and "Limb radiographs" in card
    assert "8x8 thumbnail baseline" in card and "Brier skill" in card
    assert "EXPERIMENTAL" in card and "Clopper-Pearson" in card
    for png in ("roc.png", "reliability.png", "confusion.png"):
        assert (artifact.parent / png).stat().st_size > 1000

    model = keras.models.load_model(artifact, compile=False)
    out = model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)
    assert out.shape == (1, 1) and 0 <= float(out[0, 0]) <= 1

    # `manage.py evaluate` goes through the serving path (ModelManager: checksum, calibration,
    # registry threshold) and reproduces the test metrics recorded at training time.
    from django.core.management import call_command

    out = project / "eval.json"
    call_command(
        "evaluate",
        model="tiny-fracture",
        data=str(project / "data"),
        split="test",
        json=str(out),
        registry=str(project / "registry.json"),
        n_boot=50,
        plots=str(project / "plots"),
        stdout=io.StringIO(),
    )
    report = json.loads(out.read_text())
    assert report["n"] == 12 and report["threshold"] == pytest.approx(raw["threshold"])
    for name in ("auc", "accuracy", "sensitivity", "specificity"):
        assert report[name] == pytest.approx(raw["metrics"]["test"][name], abs=1e-3)
        assert len(report[f"{name}_ci95"]) == 2
    assert (project / "plots" / "roc.png").is_file()

    # Re-evaluating with today's rules keeps the artifact, the training record and what other
    # tools wrote into the entry (pointing game, applicability).
    from core.training.entries import annotate_model, refinalize_model

    reg = Registry.load(project / "registry.json")
    raw_now = reg.entry("tiny-fracture").raw
    raw_now["metrics"]["test"]["pointing_game"] = {"hits": 3, "n": 6}
    # A boxed head records its own protocol name, which TrainConfig does not know.
    boxed_training = {**raw["training"], "protocol": "boxed head"}
    annotate_model(
        project / "registry.json",
        "tiny-fracture",
        metrics=raw_now["metrics"],
        applicability={"in_population_pass_rate": 0.97},
        training=boxed_training,
        threshold_reason="a triage list should miss few fractures",
    )
    history = json.loads((artifact.parent / "metrics.json").read_text())["history"]
    assert history
    again = refinalize_model(
        project / "registry.json",
        "tiny-fracture",
        data=project / "data",
        n_boot=50,
        min_sensitivity=0.95,
        log=lambda _m: None,
    )
    assert again["sha256"] == raw["sha256"] and again["training"] == boxed_training
    assert again["metrics"]["test"]["pointing_game"] == {"hits": 3, "n": 6}
    assert ">= 0.95" in again["threshold_rule"]
    # The training history is not lost by a re-evaluation.
    assert json.loads((artifact.parent / "metrics.json").read_text())["history"] == history
    card = (project / raw["card"]).read_text()
    assert "Pointing game" in card and "in population pass rate: 0.970" in card
    assert "Why this sensitivity target: a triage list should miss few fractures" in card
    table = io.StringIO()
    call_command("evaluate", table=True, registry=str(project / "registry.json"), stdout=table)
    assert "| fracture |" in table.getvalue() and "77.0" in table.getvalue()


def test_training_and_serving_preprocess_an_image_identically() -> None:
    from core.imaging import load_xray
    from core.preprocessing import preprocess_gray

    rng = np.random.default_rng(3)
    for shape, size in (((300, 260), (128, 128)), ((64, 80), (128, 128)), ((128, 128), (128, 128))):
        pixels = rng.integers(0, 256, shape).astype(np.uint8)
        served = preprocess_gray(pixels, input_size=size)
        trained = to_model_input(resize_gray(pixels, input_size=size))
        np.testing.assert_array_equal(served, trained)
    # The worker's batch path writes the same values straight into one array.
    from core.preprocessing import preprocess_batch

    films = [rng.integers(0, 256, shape).astype(np.uint8) for shape in ((300, 260), (64, 80), (128, 128))]
    batch = preprocess_batch(films, input_size=(128, 128))
    np.testing.assert_array_equal(batch, np.stack([preprocess_gray(f, input_size=(128, 128)) for f in films]))
    # ...and both are the paper's rule, X/255 replicated to RGB, for every 8-bit value.
    small = np.stack([resize_gray(f, input_size=(128, 128)) for f in films])
    np.testing.assert_array_equal(batch, np.repeat(small[..., None], 3, axis=-1).astype(np.float32) / 255.0)
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(
        to_model_input(every_value), np.repeat(every_value[..., None], 3, axis=-1).astype(np.float32) / 255.0
    )
    real = Path(__file__).resolve().parents[3] / "shared/data/pneumonia/test/positive"
    if real.is_dir():
        path = sorted(real.iterdir())[0]
        from core.training.data import decode_resized

        np.testing.assert_array_equal(
            preprocess_gray(load_xray(path).pixels, input_size=(128, 128)),
            to_model_input(decode_resized(path, input_size=(128, 128))),
        )


def test_groups_crossing_splits_are_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "path,split,label,group\na.jpg,train,0,p1\nb.jpg,test,1,p1\nc.jpg,val,0,p2\n"
    )
    with pytest.raises(ValueError, match="more than one split"):
        load_samples(tmp_path / "m.csv")


def test_protocol_stages_follow_the_paper() -> None:
    quick = plan_stages(_config(Path("."), protocol="quick", epochs=5).resolved(), pretrained=True)
    assert [(s.trainable, s.start_epoch, s.end_epoch) for s in quick] == [("head", 0, 5)]
    intensive = plan_stages(
        _config(Path("."), protocol="intensive", epochs=50, lr=None, batch_size=None).resolved(),
        pretrained=True,
    )
    assert [s.trainable for s in intensive] == ["head", "top1/3", "top2/3", "all"]
    assert intensive[-1].end_epoch == 50 and intensive[0].lr == 1e-5
    cfg = TrainConfig(condition="pneumonia", data=".", protocol="intensive").resolved()
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (50, 16, 1e-5)
    assert cfg.horizontal_flip is False  # chest films: laterality matters
    assert TrainConfig(condition="fracture", data=".").resolved().horizontal_flip is True


def test_calibration_is_not_fitted_on_a_handful_of_validation_images() -> None:
    from core.training.finalize import calibrate_on_validation

    y = np.array([0, 0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.1, 0.3, 0.2, 0.9, 0.8])
    cal = calibrate_on_validation(y, p, method="platt")
    assert cal["method"] == "none" and "5 negative / 2 positive" in cal["reason"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 200), 0.01, 0.99)
    assert calibrate_on_validation(y, p, method="temperature")["method"] == "temperature"


def test_shortcut_augmentation_hides_borders_and_keeps_the_image_range() -> None:
    import tensorflow as tf

    from core.training.datasets import shortcut_augment

    tf.random.set_seed(0)
    # A bright "side marker" in the top-left corner of a mid-gray image.
    x = np.full((64, 48, 48, 1), 0.5, np.float32)
    x[:, :4, :4, 0] = 1.0
    out = shortcut_augment(tf.constant(x)).numpy()
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    # The marker does not survive in the same place in every image (crops, blanked borders).
    assert np.mean(out[:, :4, :4, 0] > 0.95) < 0.9
    # Pasted text-like markers appear away from the corner in some images.
    assert np.mean(out[:, 8:, 8:, 0] > 0.84) > 0


def test_every_condition_has_a_population_for_the_applicability_check() -> None:
    from core.conditions import CONDITIONS
    from core.training.config import POPULATIONS

    allowed = {"chest_child", "chest_adult", "knee_crop", "knee_film", "limb"}
    for condition in CONDITIONS:
        pop = POPULATIONS[condition]
        assert set(pop["recogniser_classes"]) <= allowed and pop["description"]
        assert pop["age_group"] in ("children", "adults", "both")
    assert POPULATIONS["pneumonia"]["age_range_years"] == [1, 5]


def test_a_tiny_test_set_or_a_model_no_better_than_the_thumbnail_is_experimental() -> None:
    from core.training.finalize import decide_status

    config = _config(Path(".")).resolved()
    good = {"test": {"n": 500, "n_positive": 200, "n_negative": 300, "auc_ci95": [0.8, 0.9]}}
    beats = {"comparison": {"beats_baseline": True}}
    assert decide_status(config, good, beats, "test") == ("validated", None)
    status, reason = decide_status(
        config,
        good,
        {
            "comparison": {
                "beats_baseline": False,
                "balanced_accuracy_difference": 0.01,
                "balanced_accuracy_difference_ci95": [-0.02, 0.04],
            }
        },
        "test",
    )
    assert status == "experimental" and "does not clearly beat" in reason
    tiny = {"test": {"n": 22, "n_positive": 5, "n_negative": 17, "auc_ci95": [0.45, 0.9]}}
    status, reason = decide_status(config, tiny, beats, "test")
    assert "tiny test set" in reason and "reaches 0.5" in reason
