"""The state of a training run and the Keras callbacks that update it, one epoch at a time.

RunState is what a run has done so far; it is saved to checkpoints/state.json after every epoch
so that `resume=True` continues where an interrupted run stopped. The callbacks hold the state
they change (no closures over the loop's variables). TensorFlow is imported inside functions
only: each callback is built by a function that imports Keras when called.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.training.config import TrainConfig
from core.training.data import ArraySplit
from core.training.evaluation import roc_auc
from core.training.model_ops import predict_probabilities, reestimate_batchnorm


@dataclass
class RunState:
    """Epochs done, best validation AUC, learning rate, history, wall time: saved after every
    epoch. `new_epochs` counts this sitting's epochs only and is not saved."""

    epochs_done: int = 0
    best_val_auc: float | None = None
    lr: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    stopped_early: bool = False
    sittings: int = 1  # how many runs (resumes) this training took, this one included
    new_epochs: int = 0

    @classmethod
    def read(cls, path: Path) -> RunState:
        """The state saved at `path` as the start of a new sitting; a fresh state if none."""
        saved: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        return cls(
            epochs_done=int(saved.get("epochs_done", 0)),
            best_val_auc=saved.get("best_val_auc"),
            lr=saved.get("lr"),
            history=list(saved.get("history", [])),
            wall_s=float(saved.get("wall_s", 0.0)),
            stopped_early=bool(saved.get("stopped_early", False)),
            sittings=int(saved.get("sittings", 0)) + 1,
        )

    def record_epoch(self, epoch: int, logs: dict[str, Any] | None, *, seconds: float, lr: float) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.history.append({"epoch": epoch + 1, **logs})
        self.wall_s += seconds
        self.epochs_done = epoch + 1
        self.new_epochs += 1
        self.lr = lr
        if self.best_val_auc is None or logs.get("val_auc", -1) > self.best_val_auc:
            self.best_val_auc = logs.get("val_auc")

    def sitting_over(self, stop_after_epochs: int | None) -> bool:
        """This sitting has run its budget of new epochs (None: no budget)."""
        return stop_after_epochs is not None and self.new_epochs >= stop_after_epochs

    def finished(self, total_epochs: int) -> bool:
        return self.stopped_early or self.epochs_done >= total_epochs

    def save(self, path: Path, config: TrainConfig) -> None:
        _write_state(
            path,
            epochs_done=self.epochs_done,
            best_val_auc=self.best_val_auc,
            lr=self.lr,
            history=self.history,
            wall_s=self.wall_s,
            stopped_early=self.stopped_early,
            sittings=self.sittings,
            config=asdict(config),
        )


def _write_state(path: Path, **state: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(path)


def clean_validation_callback(val: ArraySplit, bn_probe: np.ndarray, *, seed: int) -> Any:
    """Validation after re-estimating trainable BatchNorm statistics on clean training images
    (`bn_probe`), so val_auc (which drives checkpointing, the learning rate and early stopping)
    measures the model as it will be served, not with statistics of augmented batches."""
    import keras

    class CleanValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            reestimate_batchnorm(self.model, bn_probe, max_images=len(bn_probe), seed=seed + epoch)
            p_val = predict_probabilities(self.model, val.x)
            q = np.clip(p_val, 1e-7, 1 - 1e-7)
            if logs is not None:
                logs["val_auc"] = roc_auc(val.y, p_val)
                logs["val_loss"] = float(-np.mean(val.y * np.log(q) + (1 - val.y) * np.log1p(-q)))
                logs["val_accuracy"] = float(np.mean((p_val >= 0.5) == (val.y == 1)))

    return CleanValidation()


OPTIMIZER_STATE = "last.optimizer.npz"


def save_optimizer_state(optimizer: Any, path: Path) -> None:
    """The optimizer's variables (Adam's moments, its step count) beside the last weights: a
    resumed run continues the same optimisation instead of restarting Adam, whose first steps
    on trained weights sent the loss up (seen in the tiny resume test)."""
    import numpy as np

    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, *[np.asarray(v) for v in optimizer.variables])
    tmp.replace(path)


def restore_optimizer_state(model: Any, path: Path) -> bool:
    """Load what save_optimizer_state wrote into the freshly compiled model's optimizer; False
    (nothing changed) when there is none or it does not fit (another stage trains other weights)."""
    import numpy as np

    if not path.is_file():
        return False
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    with np.load(path, allow_pickle=False) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables) or any(
        tuple(v.shape) != tuple(x.shape) for v, x in zip(optimizer.variables, values, strict=True)
    ):
        return False
    for variable, value in zip(optimizer.variables, values, strict=True):
        variable.assign(value)
    return True


def persist_callback(
    run: RunState, *, ckpt_dir: Path, config: TrainConfig, stop_after_epochs: int | None
) -> Any:
    """After every epoch: record it in `run`, save the last weights and state.json; stop the
    fit once this sitting has run `stop_after_epochs` new epochs."""
    import keras

    class Persist(keras.callbacks.Callback):
        started: float = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            lr = float(self.model.optimizer.learning_rate.numpy())
            run.record_epoch(epoch, logs, seconds=time.time() - self.started, lr=lr)
            self.model.save_weights(ckpt_dir / "last.weights.h5")
            save_optimizer_state(self.model.optimizer, ckpt_dir / OPTIMIZER_STATE)
            run.save(ckpt_dir / "state.json", config)
            if run.sitting_over(stop_after_epochs):
                self.model.stop_training = True

    return Persist()


def progress_callback(steps: int, total_epochs: int, log: Callable[[str], None]) -> Any:
    """A tqdm bar per epoch with loss and ETA (mininterval in logs), and one log line per epoch."""
    import keras
    from tqdm import tqdm

    class Progress(keras.callbacks.Callback):
        bar: Any = None

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            interval = 0.5 if sys.stderr.isatty() else 30.0
            self.bar = tqdm(
                total=steps,
                desc=f"epoch {epoch + 1}/{total_epochs}",
                unit="batch",
                mininterval=interval,
                file=sys.stderr,
            )

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.bar.update(1)
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.bar.close()
            shown = {k: round(float(v), 4) for k, v in (logs or {}).items()}
            log(f"epoch {epoch + 1}/{total_epochs}: {shown}")

    return Progress()
