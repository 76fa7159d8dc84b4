"""Does each active model keep its own population and turn the others away? And at what cost?

For every active model, test-split images of each population in ../shared/data (children's
chests, adults' chests, knee joint crops, full knee films, limb films) go through
`core.analysis.analyze_xrays` exactly as the worker runs them (PNG/JPEG: no header, so the
pixels decide). Printed per model and population: the share the applicability check lets
through, the share the model would flag without the check (probability at or above its
threshold) and the share flagged with it. Then the time the check adds per image (recogniser +
feature distance) against the model's own call (prediction + Grad-CAM), in the same run.
Figures only, asserts nothing.

    .venv/bin/python bench/applicability.py [--per-population 100] [--json bench/out/applicability.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

POPULATIONS = {  # data folder -> population in words
    "pneumonia": "children's chests",
    "cardiomegaly": "adults' chests",
    "knee_osteoarthritis": "knee joint crops",
    "knee_osteoporosis": "full knee films",
    "fracture": "limb films",
}


def test_images(data: Path, folder: str, n: int, seed: int) -> list:
    from core.imaging import load_xray
    from core.training.data import load_samples

    samples = [s for s in load_samples(data / folder, splits=["test"])]
    random.Random(seed).shuffle(samples)
    return [load_xray(s.path) for s in samples[:n]]


def median_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_cost(loaded, xrays: list) -> dict[str, float]:
    """Seconds per image: the model call, the recogniser, the feature distance."""
    from core.preprocessing import preprocess_gray
    from core.recognition import recognise_many

    batch = np.stack([preprocess_gray(x.pixels, input_size=loaded.input_size) for x in xrays])
    model_s = median_seconds(lambda: loaded.predict_with_gradcam(batch))
    recogniser_s = median_seconds(lambda: recognise_many([x.pixels for x in xrays]))
    _, cam = loaded.predict_with_gradcam(batch)
    distance_s = (
        median_seconds(lambda: loaded.population_model.distance(cam.pooled))
        if loaded.population_model is not None
        else 0.0
    )
    n = len(xrays)
    return {
        "model_ms": 1000 * model_s / n,
        "recogniser_ms": 1000 * recogniser_s / n,
        "distance_ms": 1000 * distance_s / n,
        "check_share_of_model": (recogniser_s + distance_s) / model_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--registry", type=Path, default=ROOT / "registry.json")
    parser.add_argument("--per-population", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from core.analysis import analyze_xrays
    from core.model_manager import ModelManager
    from core.registry import Registry

    images = {
        folder: test_images(args.data, folder, args.per_population, args.seed) for folder in POPULATIONS
    }
    manager = ModelManager(args.registry)
    report = {}
    for condition, model_id in sorted(Registry.load(args.registry).active_models.items()):
        loaded = manager.get(condition=condition)
        rows = {}
        for folder, xrays in images.items():
            outcomes = analyze_xrays(
                xrays, condition=condition, manager=manager, allow_body_part_mismatch=True
            )
            rows[POPULATIONS[folder]] = {
                "n": len(outcomes),
                "own": folder == condition,
                "applicable": float(np.mean([o.applicable for o in outcomes])),
                "flag_without_check": float(
                    np.mean([o.probability >= o.threshold and not o.is_placeholder for o in outcomes])
                ),
                "flag_with_check": float(np.mean([o.flag for o in outcomes])),
            }
        cost = check_cost(loaded, images[condition][:16])
        report[model_id] = {
            "condition": condition,
            "experimental": loaded.experimental,
            "populations": rows,
            "cost": cost,
        }
        print(f"\n{model_id}{' (experimental: never flags)' if loaded.experimental else ''}")
        print(
            f"  {'population':<20} {'n':>4} {'passes check':>13} {'flag w/o check':>15} "
            f"{'flag with check':>16}"
        )
        for name, row in rows.items():
            mark = " (own)" if row["own"] else ""
            print(
                f"  {name + mark:<20} {row['n']:>4} {row['applicable']:>13.1%} "
                f"{row['flag_without_check']:>15.1%} {row['flag_with_check']:>16.1%}"
            )
        print(
            f"  per image: model + Grad-CAM {cost['model_ms']:.2f} ms, recogniser "
            f"{cost['recogniser_ms']:.3f} ms, feature distance {cost['distance_ms']:.3f} ms "
            f"= {cost['check_share_of_model']:.1%} of the model's own time"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
