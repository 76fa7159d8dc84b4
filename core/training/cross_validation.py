"""Grouped, label-stratified k-fold cross-validation of a training recipe on train + val."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from core.training.config import TrainConfig, plan_stages, replace_epochs
from core.training.data import ArraySplit, load_arrays, load_samples
from core.training.datasets import class_weights, make_dataset
from core.training.evaluation import choose_threshold, roc_auc
from core.training.model_ops import (
    configure_tensorflow,
    predict_probabilities,
    reestimate_batchnorm,
    set_trainable,
)


def cross_validate(
    config: TrainConfig, *, folds: int = 5, epochs: int | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Grouped, label-stratified k-fold cross-validation on train + val (test untouched):
    each fold trains a fresh model with the run's recipe for a fixed number of epochs (no
    early stopping: nothing is tuned on the held-out fold) and scores its held-out patients.
    -> pooled out-of-fold AUC with a patient-bootstrap interval, per-fold AUCs, and the
    sensitivity/specificity at each fold's threshold chosen on its own training folds."""
    import keras
    from sklearn.model_selection import StratifiedGroupKFold

    from core.architectures import build_model
    from core.training.evaluation import bootstrap_intervals, clopper_pearson

    config = config.resolved()
    assert config.input_size and config.batch_size and config.epochs
    configure_tensorflow(config.threads, config.seed)
    samples = [
        s
        for s in load_samples(config.data, condition=config.condition)
        if s.split in (config.train_split, config.val_split)
    ]
    pool = load_arrays(samples, input_size=config.input_size, cache_dir=config.cache_dir)
    n_epochs = int(epochs or config.epochs)
    oof = np.full(pool.n, np.nan)
    fold_of = np.full(pool.n, -1)
    per_fold: list[dict[str, Any]] = []
    tp = fn = tn = fp = 0
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    for k, (tr, te) in enumerate(splitter.split(np.zeros(pool.n), pool.y, pool.groups)):
        t0 = time.time()
        fit = ArraySplit(pool.x[tr], pool.y[tr], [pool.paths[i] for i in tr], [pool.groups[i] for i in tr])
        model = build_model(
            config.architecture,
            input_size=config.input_size,
            imagenet_weights=config.imagenet_weights,
            dense_units=config.dense_units,
            dropout=config.dropout,
            seed=config.seed + k,
        )
        model.get_layer("head_bn").momentum = 0.9
        pretrained = config.imagenet_weights is not None
        ds = make_dataset(
            fit, batch_size=config.batch_size, training=True, config=config, seed=config.seed + k
        )
        for stage in plan_stages(replace_epochs(config, n_epochs), pretrained=pretrained):
            set_trainable(model, stage.trainable, freeze_backbone_bn=pretrained)
            model.compile(
                optimizer=keras.optimizers.Adam(stage.lr, clipnorm=1.0),
                loss=keras.losses.BinaryCrossentropy(),
            )
            model.fit(
                ds,
                epochs=stage.end_epoch,
                initial_epoch=stage.start_epoch,
                class_weight=class_weights(fit.y),
                verbose=0,
            )
        reestimate_batchnorm(model, fit.x, max_images=config.bn_reestimate_images, seed=config.seed)
        p_fit = predict_probabilities(model, fit.x)
        p_out = predict_probabilities(model, pool.x[te])
        oof[te], fold_of[te] = p_out, k
        # Threshold from the fold's own training images: optimistic there, so a strict test.
        t = choose_threshold(fit.y, p_fit, min_sensitivity=config.min_sensitivity)
        y_te = pool.y[te]
        tp += int(((p_out >= t) & (y_te == 1)).sum())
        fn += int(((p_out < t) & (y_te == 1)).sum())
        tn += int(((p_out < t) & (y_te == 0)).sum())
        fp += int(((p_out >= t) & (y_te == 0)).sum())
        per_fold.append(
            {
                "fold": k,
                "n": int(len(te)),
                "n_positive": int(y_te.sum()),
                "auc": _round(roc_auc(y_te, p_out)),
                "wall_s": round(time.time() - t0),
            }
        )
        log(f"fold {k + 1}/{folds}: {per_fold[-1]}")
        keras.backend.clear_session()
    ci = bootstrap_intervals(pool.y, oof, 0.5, n_boot=config.n_boot, seed=config.seed, groups=pool.groups)[
        "auc"
    ]
    fold_aucs = [f["auc"] for f in per_fold if f["auc"] is not None]
    return {
        "method": (
            f"{folds}-fold cross-validation on train+val, grouped by patient and "
            f"stratified by label; {n_epochs} epochs per fold, no early stopping"
        ),
        "n": pool.n,
        "n_positive": int(pool.y.sum()),
        "n_negative": int(pool.n - pool.y.sum()),
        "n_groups": len(set(pool.groups)),
        "pooled_auc": _round(roc_auc(pool.y, oof)),
        "pooled_auc_ci95": [_round(ci[0]), _round(ci[1])],
        "fold_auc_mean": _round(float(np.mean(fold_aucs))) if fold_aucs else None,
        "fold_auc_sd": _round(float(np.std(fold_aucs, ddof=1))) if len(fold_aucs) > 1 else None,
        "folds": per_fold,
        "sensitivity": _round(tp / max(tp + fn, 1)),
        "sensitivity_ci95": [_round(v) for v in clopper_pearson(tp, tp + fn)],
        "specificity": _round(tn / max(tn + fp, 1)),
        "specificity_ci95": [_round(v) for v in clopper_pearson(tn, tn + fp)],
        "threshold_rule": (
            "each fold: highest threshold with sensitivity >= "
            f"{config.min_sensitivity:.2f} on its own training folds"
        ),
    }


def _round(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)
