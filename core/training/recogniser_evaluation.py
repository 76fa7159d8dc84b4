"""Evaluation of a trained body-region recogniser: labelled features, the DICOM samples,
images that are not X-rays, and its speed."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.recognition import CLASSES, REGION_OF, UNRECOGNISED, Recogniser
from core.training.recogniser_data import DICOM_EXPECTED, ThumbnailSet


def evaluate_features(recogniser: Recogniser, features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy figures for raw (unstandardised) features with known classes."""
    results = recogniser.predict_features(features)
    truth = [CLASSES[label] for label in labels]
    columns = [*CLASSES, UNRECOGNISED]
    confusion = {t: {c: 0 for c in columns} for t in CLASSES}
    for t, r in zip(truth, results, strict=True):
        confusion[t][r.population] += 1
    per_class = {t: confusion[t][t] / max(1, sum(confusion[t].values())) for t in CLASSES}
    argmax = [max(r.probabilities, key=r.probabilities.__getitem__) for r in results]
    chest = [i for i, t in enumerate(truth) if REGION_OF[t] == "chest"]
    return {
        "n": len(truth),
        "population_accuracy": _mean([r.population == t for t, r in zip(truth, results, strict=True)]),
        "balanced_accuracy": float(np.mean(list(per_class.values()))),
        "per_class_accuracy": per_class,
        "argmax_accuracy": _mean([a == t for a, t in zip(argmax, truth, strict=True)]),
        "region_accuracy": _mean([r.region == REGION_OF[t] for t, r in zip(truth, results, strict=True)]),
        "per_region_accuracy": {
            region: _mean(
                [results[i].region == region for i, t in enumerate(truth) if REGION_OF[t] == region]
            )
            for region in ("chest", "knee", "limb")
        },
        "unrecognised_rate": _mean([not r.recognised for r in results]),
        "out_of_distribution_rate": _mean([r.distance > 1.0 for r in results]),
        "chest_age_accuracy": _mean([results[i].population == truth[i] for i in chest]),
        "chest_age_accuracy_argmax": _mean(
            [
                (results[i].probabilities["chest_child"] > results[i].probabilities["chest_adult"])
                == (truth[i] == "chest_child")
                for i in chest
            ]
        ),
        "chest_age_by_class": {
            t: _mean(
                [
                    results[i].age_group == ("children" if t == "chest_child" else "adults")
                    for i in chest
                    if truth[i] == t
                ]
            )
            for t in ("chest_child", "chest_adult")
        },
        "confusion": confusion,
    }


def _mean(values: list[bool]) -> float:
    return float(np.mean(values)) if values else float("nan")


def evaluate_dicom(recogniser: Recogniser, dicom_dir: Path) -> list[dict[str, Any]]:
    from core.imaging import load_xray

    out = []
    for name, expected in DICOM_EXPECTED.items():
        path = Path(dicom_dir) / name
        if not path.is_file():
            continue
        xray = load_xray(path)
        result = recogniser.predict(xray.pixels)
        out.append(
            {
                "file": name,
                "size": f"{xray.shape[1]}x{xray.shape[0]}",
                "expected": expected,
                "region": result.region,
                "population": result.population,
                "says": result.describe(),
                "distance": round(result.distance, 3),
            }
        )
    return out


def non_xray_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Images that are not radiographs: synthetic patterns, plus the photographs and the MRI
    slice that ship with matplotlib and scikit-learn when they are installed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    images = {
        "uniform noise": rng.integers(0, 256, (256, 256), dtype=np.uint8),
        "gaussian noise (grey)": np.clip(rng.normal(128, 40, (300, 200)), 0, 255).astype(np.uint8),
        "black frame": np.zeros((256, 256), np.uint8),
        "white frame": np.full((256, 256), 255, np.uint8),
        "mid-grey frame": np.full((200, 300), 128, np.uint8),
        "horizontal gradient": np.tile(np.linspace(0, 255, 256, dtype=np.float32), (256, 1)).astype(np.uint8),
        "radial gradient": np.clip(255 - np.hypot(xx - 128, yy - 128) * 2, 0, 255).astype(np.uint8),
        "checkerboard 8 px": (((xx // 8 + yy // 8) % 2) * 255).astype(np.uint8),
        "checkerboard 32 px": (((xx // 32 + yy // 32) % 2) * 255).astype(np.uint8),
        "random rectangles": _rectangles(rng),
    }
    images.update(_installed_photos())
    return images


def _rectangles(rng: np.random.Generator) -> np.ndarray:
    image = np.full((256, 256), 30, np.uint8)
    for _ in range(12):
        x0, y0 = rng.integers(0, 200, 2)
        w, h = rng.integers(20, 90, 2)
        image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256)
    return image


def _installed_photos() -> dict[str, np.ndarray]:
    out: dict[str, Any] = {}  # cv2.imread gives None for a missing file: skipped by the caller
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        out["photo: portrait (matplotlib grace_hopper.jpg)"] = cv2.imread(
            str(sample / "grace_hopper.jpg"), cv2.IMREAD_GRAYSCALE
        )
        with gzip.open(sample / "s1045.ima.gz") as handle:
            raw = np.frombuffer(handle.read(), np.uint16).reshape(256, 256)
        scaled = (raw - raw.min()) * (255.0 / max(1, int(raw.max()) - int(raw.min())))
        out["MRI head slice (matplotlib s1045.ima)"] = scaled.astype(np.uint8)
    except (ImportError, OSError, ValueError):
        pass
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        for name in ("china.jpg", "flower.jpg"):
            out[f"photo: {name} (scikit-learn)"] = cv2.imread(str(images / name), cv2.IMREAD_GRAYSCALE)
    except ImportError:
        pass
    return {name: image for name, image in out.items() if image is not None}


def evaluate_non_xrays(recogniser: Recogniser) -> list[dict[str, Any]]:
    out = []
    for name, image in non_xray_images().items():
        result = recogniser.predict(image)
        top = max(result.probabilities, key=result.probabilities.__getitem__)
        out.append(
            {
                "image": name,
                "region": result.region,
                "population": result.population,
                "says": result.describe(),
                "distance": round(result.distance, 2),
                "top_class": top,
                "top_probability": round(result.probabilities[top], 3),
            }
        )
    return out


def time_recogniser(recogniser: Recogniser, data: ThumbnailSet, repeats: int = 300) -> dict[str, Any]:
    """Milliseconds per image after decode, median wall-clock and mean CPU time (this process),
    one image at a time, for typical and large sizes; plus a batch of 64. The CPU time is
    the fairer figure on a shared machine: wall time includes waiting for a core."""

    base = cv2.resize(data.thumbs[0], (512, 512), interpolation=cv2.INTER_CUBIC)
    sizes = {
        "224x224": (224, 224),
        "512x512": (512, 512),
        "1024x1024": (1024, 1024),
        "2000x2500": (2000, 2500),
        "4000x4000": (4000, 4000),
    }
    rows: dict[str, dict[str, float]] = {}
    for name, size in sizes.items():
        image = cv2.resize(base, size, interpolation=cv2.INTER_CUBIC)
        recogniser.predict(image)
        walls = []
        cpu_start = time.process_time()
        for _ in range(repeats):
            start = time.perf_counter()
            recogniser.predict(image)
            walls.append(time.perf_counter() - start)
        rows[name] = {
            "wall_ms": round(float(np.median(walls)) * 1000, 3),
            "cpu_ms": round((time.process_time() - cpu_start) / repeats * 1000, 3),
        }
    batch = [cv2.resize(t, (512, 512)) for t in data.thumbs[:64]]
    recogniser.predict_many(batch)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(5):
        recogniser.predict_many(batch)
    rows["batch of 64, 512x512"] = {
        "wall_ms": round((time.perf_counter() - start) * 1000 / (5 * 64), 3),
        "cpu_ms": round((time.process_time() - cpu_start) * 1000 / (5 * 64), 3),
    }
    return {"per_image": rows, "load_average_1min": round(os.getloadavg()[0], 1), "cpus": os.cpu_count() or 0}
