"""The training loop: train_model and the named steps it runs, in order.

TensorFlow/Keras are imported inside functions only (core/ stays importable without them).

A run lives in `<models_dir>/<model_id>/`:
    checkpoints/last.weights.h5, best.weights.h5, state.json   (resume; never committed)
    model.keras, roc.png, reliability.png, confusion.png, card.md, metrics.json   (artifact)

Decisions worth knowing (why, not what):
- Backbone BatchNorm layers stay frozen (inference mode) when the backbone starts from ImageNet
  weights: updating them on small X-ray batches is what makes fine-tuned Keras models drift.
  Backbones trained from scratch must learn their BatchNorm statistics, so theirs train.
- The head's BatchNorm momentum is lowered (0.99 -> 0.9) so its moving statistics keep up with
  a backbone being fine-tuned, and after training every trainable BatchNorm layer's statistics
  are re-estimated on clean (un-augmented) training images (`reestimate_batchnorm`). Without
  this, the served probabilities were badly shifted (mean 0.075 on a balanced test set).
- Probabilities are then calibrated on the validation split (Platt by default) and the
  operating threshold is chosen on calibrated validation probabilities (core.training.finalize).
- Checkpoints are written every epoch, with the epoch count, learning rate and best validation
  AUC in state.json, so `resume=True` continues an interrupted run where it stopped. Adam's
  moment estimates are not kept across a resume (they re-warm within a few dozen steps), and
  ReduceLROnPlateau/EarlyStopping patience counters restart at a resume or a new stage.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.training.callbacks import (
    OPTIMIZER_STATE,
    RunState,
    clean_validation_callback,
    persist_callback,
    progress_callback,
    restore_optimizer_state,
)
from core.training.config import PROTOCOLS, Stage, TrainConfig, plan_stages
from core.training.cross_validation import cross_validate
from core.training.data import ArraySplit, load_arrays, load_samples, split_counts
from core.training.datasets import carve_val, class_weights, make_dataset, subset
from core.training.entries import register_entry
from core.training.finalize import finalize_model
from core.training.model_ops import configure_tensorflow, reestimate_batchnorm, set_trainable


@dataclass
class RunResult:
    model_id: str
    artifact: Path
    entry: dict[str, Any]
    history: list[dict[str, float]]
    epochs_run: int
    finished: bool


@dataclass
class RunData:
    """A run's splits as uint8 arrays (train and val possibly subsets) and the data's counts."""

    train: ArraySplit
    val: ArraySplit
    test: ArraySplit | None
    counts: dict[str, dict[str, int]]


def train_model(
    config: TrainConfig,
    *,
    models_dir: str | Path,
    registry_path: str | Path | None = None,
    resume: bool = False,
    command: str | None = None,
    log: Callable[[str], None] = print,
    stop_after_epochs: int | None = None,
) -> RunResult:
    """Train (or resume), then calibrate, threshold, evaluate, save and register (inactive:
    activation is the registry's checked, audited step, see register_entry).

    stop_after_epochs: stop this sitting after that many new epochs (a budgeted sitting of a
    long run); the run is left resumable and nothing is registered until it finishes.
    """
    config = config.resolved()
    assert config.model_id and config.input_size and config.epochs and config.batch_size
    configure_tensorflow(config.threads, config.seed)
    out_dir = Path(models_dir) / config.model_id
    ckpt_dir = open_checkpoints(out_dir, resume=resume)
    run = read_run_state(ckpt_dir, config, resume=resume, log=log)
    data = load_run_data(config, log=log)
    cv = cross_validation_once(config, ckpt_dir, log=log)
    model = build_run_model(config, ckpt_dir, run)
    stages = plan_stages(config, pretrained=config.imagenet_weights is not None)
    fit_stages(
        model,
        stages,
        data,
        config=config,
        run=run,
        ckpt_dir=ckpt_dir,
        log=log,
        stop_after_epochs=stop_after_epochs,
    )
    if not run.finished(config.epochs):
        log(
            f"sitting over after {run.new_epochs} new epoch(s): {run.epochs_done}/{config.epochs} done; "
            "continue with --resume"
        )
        return RunResult(config.model_id, out_dir / "model.keras", {}, run.history, run.epochs_done, False)

    settle_best_weights(model, stages, data.train, config=config, ckpt_dir=ckpt_dir, log=log)
    final, artifact = save_artifact(model, config, out_dir)
    entry = finalize_model(
        final,
        config=config,
        out_dir=out_dir,
        train=data.train,
        val=data.val,
        test=data.test,
        counts=data.counts,
        history=run.history,
        epochs_run=run.epochs_done,
        wall_s=run.wall_s,
        stopped_early=run.stopped_early,
        stages=stages,
        command=command,
        log=log,
        sittings=run.sittings,
        artifact_root=Path(registry_path).resolve().parent if registry_path else None,
        cross_validation=cv,
    )
    if registry_path is not None:
        register_entry(entry, registry_path=registry_path)
        log(f"registered {config.model_id} in {registry_path} (inactive)")
    return RunResult(config.model_id, artifact, entry, run.history, run.epochs_done, True)


# ----------------------------------------------------------------------------- the steps


def open_checkpoints(out_dir: Path, *, resume: bool) -> Path:
    """out_dir/checkpoints, emptied unless resuming."""
    ckpt_dir = out_dir / "checkpoints"
    if not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return ckpt_dir


def read_run_state(
    ckpt_dir: Path, config: TrainConfig, *, resume: bool, log: Callable[[str], None]
) -> RunState:
    """Where a resumed run stopped (state.json), or a fresh state."""
    state_file = ckpt_dir / "state.json"
    if not (resume and state_file.is_file()):
        return RunState()
    run = RunState.read(state_file)
    log(f"resuming {config.model_id}: {run.epochs_done} epoch(s) done, best val AUC {run.best_val_auc}")
    return run


def load_run_data(config: TrainConfig, *, log: Callable[[str], None]) -> RunData:
    """The splits as arrays; val carved from train by group when the data has none (noted)."""
    assert config.input_size
    samples = load_samples(config.data, condition=config.condition)
    if not any(s.split == config.val_split for s in samples):
        samples = carve_val(samples, config)
        config.notes.append(
            f"no '{config.val_split}' split in the data: "
            f"{config.val_fraction:.0%} of training groups held out as val"
        )

    def arrays(split: str) -> ArraySplit:
        chosen = [s for s in samples if s.split == split]
        assert config.input_size is not None  # TrainConfig.resolved() fills it in
        return load_arrays(chosen, input_size=config.input_size, cache_dir=config.cache_dir)

    counts = split_counts(samples)
    train = subset(arrays(config.train_split), config.max_train, config.seed)
    val = subset(arrays(config.val_split), config.max_val, config.seed + 1)
    test = arrays(config.test_split) if any(s.split == config.test_split for s in samples) else None
    if train.n == 0 or len(set(train.y.tolist())) < 2:
        raise ValueError("the training split needs images of both classes")
    log(f"data: train {train.counts()}, val {val.counts()}, test {test.counts() if test else None}")
    return RunData(train, val, test, counts)


def cross_validation_once(
    config: TrainConfig, ckpt_dir: Path, *, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """The cross-validation asked for (cv_folds > 1), run once per run: a resume reads cv.json."""
    cv_file = ckpt_dir / "cv.json"
    cv = json.loads(cv_file.read_text()) if cv_file.is_file() else None
    if config.cv_folds > 1 and cv is None:
        cv = cross_validate(config, folds=config.cv_folds, epochs=config.cv_epochs, log=log)
        cv_file.write_text(json.dumps(cv, indent=1))
        log(f"cross-validation: pooled AUC {cv['pooled_auc']} {cv['pooled_auc_ci95']}")
    return cv


def build_run_model(config: TrainConfig, ckpt_dir: Path, run: RunState) -> Any:
    """The architecture with the run's head, its last weights when resuming."""
    from core.architectures import build_model

    assert config.input_size
    model = build_model(
        config.architecture,
        input_size=config.input_size,
        imagenet_weights=config.imagenet_weights,
        dense_units=config.dense_units,
        dropout=config.dropout,
        seed=config.seed,
    )
    model.get_layer("head_bn").momentum = 0.9
    if run.epochs_done:
        model.load_weights(ckpt_dir / "last.weights.h5")
    return model


def compile_for_stage(model: Any, lr: float) -> None:
    import keras

    # Gradient-norm clipping: full fine-tuning at 2e-4 without it diverged on knee OA.
    model.compile(
        optimizer=keras.optimizers.Adam(lr, clipnorm=1.0),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
    )


def fit_stages(
    model: Any,
    stages: list[Stage],
    data: RunData,
    *,
    config: TrainConfig,
    run: RunState,
    ckpt_dir: Path,
    log: Callable[[str], None],
    stop_after_epochs: int | None,
) -> None:
    """Fit the stages not done yet, until the last, an early stop or the sitting's budget."""
    assert config.batch_size
    train_ds = make_dataset(
        data.train, batch_size=config.batch_size, training=True, config=config, seed=config.seed
    )
    weights = class_weights(data.train.y)
    steps = math.ceil(data.train.n / config.batch_size)
    bn_probe = subset(data.train, min(data.train.n, 512), config.seed + 2).x
    for stage in stages:
        if run.stopped_early or run.epochs_done >= stage.end_epoch:
            continue
        if run.sitting_over(stop_after_epochs):
            break
        fit_stage(
            model,
            stage,
            train_ds,
            weights=weights,
            callbacks=[
                clean_validation_callback(data.val, bn_probe, seed=config.seed),
                progress_callback(steps, int(config.epochs or 0), log),
            ],
            final_stage=stage is stages[-1],
            config=config,
            run=run,
            ckpt_dir=ckpt_dir,
            log=log,
            stop_after_epochs=stop_after_epochs,
        )


def fit_stage(
    model: Any,
    stage: Stage,
    train_ds: Any,
    *,
    weights: dict[int, float],
    callbacks: list[Any],
    final_stage: bool,
    config: TrainConfig,
    run: RunState,
    ckpt_dir: Path,
    log: Callable[[str], None],
    stop_after_epochs: int | None,
) -> None:
    """One stage: set what trains, compile, fit with checkpoints, learning-rate reduction and
    early stopping; an early stop in the final stage ends the run (saved in state.json).
    `callbacks` run first, before the checkpoint sees val_auc."""
    import keras

    pretrained = config.imagenet_weights is not None
    protocol = PROTOCOLS[config.protocol]
    set_trainable(model, stage.trainable, freeze_backbone_bn=pretrained)
    lr = stage.lr
    if run.lr is not None and run.epochs_done > stage.start_epoch:
        lr = float(run.lr)  # resuming inside this stage: keep the reduced rate
    compile_for_stage(model, lr)
    if run.epochs_done > stage.start_epoch and restore_optimizer_state(model, ckpt_dir / OPTIMIZER_STATE):
        log("resumed the optimizer's state (Adam moments) with the weights")
    log(
        f"stage {stage.trainable}: epochs {max(run.epochs_done, stage.start_epoch) + 1}"
        f"-{stage.end_epoch}, lr {lr:g}, trainable weights "
        f"{sum(int(np.prod(w.shape)) for w in model.trainable_weights):,}"
    )
    early = keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=int(config.patience or protocol["patience_stop"])
    )
    model.fit(
        train_ds,
        epochs=stage.end_epoch,
        initial_epoch=max(run.epochs_done, stage.start_epoch),
        class_weight=weights,
        callbacks=[
            *callbacks,
            keras.callbacks.ModelCheckpoint(
                str(ckpt_dir / "best.weights.h5"),
                monitor="val_auc",
                mode="max",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=run.best_val_auc,
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_auc", mode="max", factor=0.3, patience=int(protocol["patience_lr"]), min_lr=1e-7
            ),
            early,
            persist_callback(run, ckpt_dir=ckpt_dir, config=config, stop_after_epochs=stop_after_epochs),
        ],
        verbose=0,
    )
    if early.stopped_epoch and final_stage:
        run.stopped_early = True
        run.save(ckpt_dir / "state.json", config)


def settle_best_weights(
    model: Any,
    stages: list[Stage],
    train: ArraySplit,
    *,
    config: TrainConfig,
    ckpt_dir: Path,
    log: Callable[[str], None],
) -> None:
    """Best validation weights, then BatchNorm statistics re-estimated on clean training images."""
    if (ckpt_dir / "best.weights.h5").is_file():
        model.load_weights(ckpt_dir / "best.weights.h5")
    if stages:
        # A run resumed only to finish never passed through set_trainable: without this, the
        # frozen ImageNet BatchNorm statistics of the backbone would be re-estimated below.
        set_trainable(model, stages[-1].trainable, freeze_backbone_bn=config.imagenet_weights is not None)
    n_bn = reestimate_batchnorm(model, train.x, max_images=config.bn_reestimate_images, seed=config.seed)
    log(f"re-estimated statistics of {n_bn} BatchNorm layer(s) on clean training images")


def save_artifact(model: Any, config: TrainConfig, out_dir: Path) -> tuple[Any, Path]:
    """The weights in a fresh model without ImageNet-loading code paths -> out_dir/model.keras."""
    from core.architectures import build_model

    assert config.input_size
    final = build_model(
        config.architecture,
        input_size=config.input_size,
        imagenet_weights=None,
        dense_units=config.dense_units,
        dropout=config.dropout,
    )
    final.set_weights(model.get_weights())
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / "model.keras"
    final.save(artifact)
    return final, artifact
