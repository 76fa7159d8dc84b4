"""Which sensitivity target should a model's operating point aim at? Decided on VALIDATION only.

    .venv/bin/python bench/operating_target.py --model ID --data ../shared/data/<condition>
        [--targets 0.90 0.93 0.95 0.97] [--halvings 200]

The validation patients are halved at random --halvings times; on one half the model's and the
8x8-thumbnail baseline's thresholds are chosen by the registry's rule (the highest threshold
whose validation sensitivity has a one-sided 95% exact lower bound at the target), on the other
half both are measured. Printed per target: the model's balanced-accuracy gain over the
baseline (mean and 2.5-97.5% range over the halvings), and both classifiers' sensitivity and
specificity on the held-out halves. The test split is never read. Apply the choice with
`manage.py train --refinalize --model-id ID --data DIR --min-sensitivity T` and record why with
`--annotate --threshold-reason "..."`. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def held_out_halves(groups: np.ndarray, halvings: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Boolean masks (fit half, measure half), split by patient group."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    for _ in range(halvings):
        chosen = set(rng.choice(unique, size=len(unique) // 2, replace=False))
        fit = np.array([g in chosen for g in groups])
        yield fit, ~fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.93, 0.95, 0.97])
    parser.add_argument("--halvings", type=int, default=200)
    parser.add_argument("--registry", default=str(ROOT / "registry.json"))
    parser.add_argument("--cache-dir", default=str(ROOT / "var" / "cache"))
    args = parser.parse_args()

    import keras

    from core.registry import Registry
    from core.training.baseline import thumbnail_probabilities
    from core.training.config import THRESHOLD_CONFIDENCE, TrainConfig
    from core.training.entries import _load_splits
    from core.training.evaluation import choose_threshold, threshold_metrics
    from core.training.model_ops import predict_probabilities

    registry = Registry.load(args.registry)
    entry = registry.entry(args.model)
    config = TrainConfig(
        condition=entry.condition,
        data=args.data,
        architecture=entry.architecture,
        model_id=entry.id,
        input_size=entry.input_size,
        cache_dir=args.cache_dir,
    ).resolved()
    train, val, _test, _counts = _load_splits(config)
    model = keras.models.load_model(registry.artifact_path(entry), compile=False)
    p_model = predict_probabilities(model, val.x)
    (p_base,) = thumbnail_probabilities(train.x, train.y, val.x)
    y, groups = val.y.astype(int), np.asarray(val.groups)
    print(f"{entry.id} on validation ({len(y)} images, {len(np.unique(groups))} patients)")
    for target in args.targets:
        rows = []
        for fit, held in held_out_halves(groups, args.halvings):
            if y[fit].sum() < 10 or (1 - y[held]).sum() < 10:
                continue
            row = []
            for p in (p_model, p_base):
                t = choose_threshold(y[fit], p[fit], min_sensitivity=target, confidence=THRESHOLD_CONFIDENCE)
                m = threshold_metrics(y[held], p[held], t)
                row += [m["sensitivity"], m["specificity"]]
            rows.append(row)
        r = np.array(rows)
        gain = (r[:, 0] + r[:, 1]) / 2 - (r[:, 2] + r[:, 3]) / 2
        print(
            f"target {target:.2f}: balanced-accuracy gain {gain.mean() * 100:+.1f} points "
            f"[{np.quantile(gain, 0.025) * 100:+.1f}, {np.quantile(gain, 0.975) * 100:+.1f}] "
            f"over {len(r)} halvings | model sensitivity {r[:, 0].mean():.3f} specificity "
            f"{r[:, 1].mean():.3f} | thumbnail sensitivity {r[:, 2].mean():.3f} specificity "
            f"{r[:, 3].mean():.3f}"
        )


if __name__ == "__main__":
    main()
