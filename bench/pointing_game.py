"""Does the heat map point at the finding? Pointing game per Grad-CAM layer, and fallback share.

    .venv/bin/python bench/pointing_game.py --model ID [--model ID2 ...] [--split test]
        [--layer NAME ...] [--choose] [--write]

For every model:
- fallback share: of the split's true positives the model calls with confidence (calibrated
  p >= the model's threshold), how many get an activation map instead of Grad-CAM, with the
  layer the registry serves (and with the layer chosen below, if any);
- for fracture models (the only condition with boxes, ../shared/data/fracture_boxes.csv): the
  pointing game of each layer tried (--layer, or the architecture's candidates below) and of
  the image-centre baseline. The split's boxed films are scored, whatever the model predicts;
  a hit is the map's hottest point inside any of that film's boxes.

--choose picks the layer on the VALIDATION boxes (highest hit rate among layers that beat the
layer core.gradcam serves by default, or the first --layer, beyond chance: paired exact McNemar
p < 0.05 / layers compared; else that default) and reports it on --split (test).
--write stores that test figure as metrics.test.pointing_game and sets gradcam_layer in the
model's registry entry (and re-renders its card). Figures go to stdout and, as JSON, to
bench/out/pointing_game-<model>.json (never committed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# Layers worth trying, coarse to fine (grid at 128 / 224 px input). core.gradcam's default for
# the model is always tried first, as the reference (the maps the head pools are the first here).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "mobilenetv2": (
        "out_relu",  # 4x4 / 7x7
        "Conv_1",
        "block_16_project_BN",
        "block_15_add",
        "block_14_add",
        "block_13_expand_relu",  # 8x8 / 14x14
        "block_12_add",
        "block_11_add",
        "block_10_project_BN",
        "block_9_add",
        "block_6_expand_relu",  # 16x16 / 28x28
        "block_5_add",
    ),
    "densenet121": (
        "relu",  # 4x4 / 7x7
        "conv5_block16_concat",
        "conv5_block8_concat",
        "pool4_relu",  # 8x8 / 14x14
        "conv4_block24_concat",
        "conv4_block12_concat",
        "pool3_relu",  # 16x16 / 28x28
    ),
}
BATCH = 16
NEAR = 0.05  # a looser, secondary game: the peak within 5% of the image side of a box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="model id (repeatable)")
    ap.add_argument("--split", default="test")
    ap.add_argument(
        "--layer",
        action="append",
        default=None,
        help="layer to try (repeatable); default: the architecture's candidates",
    )
    ap.add_argument("--choose", action="store_true", help="choose the layer on val boxes")
    ap.add_argument("--write", action="store_true", help="write the chosen layer's figure")
    ap.add_argument("--registry", default=str(ROOT / "registry.json"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument(
        "--max-positives",
        type=int,
        default=400,
        help="true positives scored for the fallback share (first N of the split)",
    )
    args = ap.parse_args()
    if args.write and not args.choose:
        ap.error("--write needs --choose: the layer written must be chosen on validation")

    from core.training.model_ops import configure_tensorflow

    configure_tensorflow(2, 0)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # one compiled call per layer tried: retracing is expected
    from core.model_manager import ModelManager

    manager = ModelManager(args.registry)
    for model_id in args.model:
        loaded = manager.get(model_id=model_id)
        if loaded.is_placeholder:
            print(f"{model_id}: not loadable ({loaded.placeholder_reason})")
            continue
        report = evaluate_model(loaded, args)
        out = ROOT / "bench" / "out"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"pointing_game-{model_id}.json").write_text(json.dumps(report, indent=1))
        if args.write and report.get("chosen"):
            write_registry(args.registry, model_id, report)


def evaluate_model(loaded: Any, args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data)
    report: dict[str, Any] = {
        "model_id": loaded.model_id,
        "split": args.split,
        "registry_layer": loaded.gradcam_layer,
    }
    print(
        f"\n== {loaded.model_id} ({loaded.condition}, {loaded.architecture}, "
        f"{loaded.input_size[0]} px, threshold {loaded.threshold:.3f})"
    )
    positives = load_positives(loaded, data, args.split, args.max_positives)
    served = fallback_share(loaded, positives, loaded.gradcam_layer)
    report["fallback_served"] = served
    print(
        f"fallback share on confident true positives ({args.split}, layer {served['layer']}): "
        f"{served['fallbacks']}/{served['confident']} = {served['share']:.3f}"
    )
    boxes_csv = data / "fracture_boxes.csv"
    if loaded.condition != "fracture" or not boxes_csv.is_file():
        return report
    # The first layer is the reference the others must beat: the one served by default.
    default = "/".join(default_layer_path(loaded.keras_model))
    layers = args.layer or [default] + [
        name
        for name in CANDIDATES.get(loaded.architecture, ())
        if has_layer(loaded.keras_model, name) and name != default.split("/")[-1]
    ]
    splits = ["val", args.split] if args.choose and args.split != "val" else [args.split]
    results: dict[str, dict[str, Any]] = {}
    for split in splits:
        results[split] = pointing_by_layer(loaded, data, boxes_csv, split, layers)
    report["pointing_game"] = results
    if args.choose:
        chosen = choose_layer(results["val"], layers)
        test = results[args.split]["layers"][chosen]
        report["chosen"] = {
            "layer": test["layer"],
            "val": results["val"]["layers"][chosen],
            args.split: test,
            "centre_baseline": results[args.split]["centre"],
        }
        print(
            f"chosen on val: {test['layer']} -> {args.split} {summary(test)} "
            f"(centre baseline {summary(results[args.split]['centre'])})"
        )
        chosen_share = fallback_share(loaded, positives, test["layer"])
        report["fallback_chosen"] = chosen_share
        print(
            f"fallback share with the chosen layer: "
            f"{chosen_share['fallbacks']}/{chosen_share['confident']} = "
            f"{chosen_share['share']:.3f}"
        )
    return report


def default_layer_path(model: Any) -> list[str]:
    from core.gradcam import default_layer_path as served_default

    return served_default(model)


def has_layer(model: Any, name: str) -> bool:
    from core.gradcam import resolve_layer_path

    try:
        resolve_layer_path(model, name)
    except ValueError:
        return False
    return True


def load_positives(loaded: Any, data: Path, split: str, limit: int) -> Any:
    from core.training.data import samples_from_folder

    samples = samples_from_folder(data / loaded.condition, splits=[split])
    return load_images(loaded, [s.path for s in samples if s.label == 1][:limit])


def load_images(loaded: Any, paths: list[Path]) -> np.ndarray:
    from core.training.data import decode_resized

    return np.stack([decode_resized(p, input_size=loaded.input_size) for p in paths])


def run_gradcam(loaded: Any, gray: np.ndarray, layer: str | None) -> Any:
    """(probabilities calibrated, heatmaps, methods, layer) over a uint8 (n, h, w) stack."""
    from core.calibration import apply_calibration
    from core.gradcam import GradCam
    from core.preprocessing import to_model_input

    cam = GradCam(loaded.keras_model, layer=layer, position_reference=loaded.position_reference)
    probs, maps, methods = [], [], []
    for i in range(0, len(gray), BATCH):
        result = cam(to_model_input(gray[i : i + BATCH]))
        probs.append(apply_calibration(result.probabilities, loaded.calibration))
        maps.append(result.heatmaps)
        methods += result.methods
    return np.concatenate(probs), np.concatenate(maps), methods, cam.layer


def fallback_share(loaded: Any, gray: np.ndarray, layer: str | None) -> dict[str, Any]:
    from core.gradcam import METHOD_GRADCAM

    probs, _, methods, name = run_gradcam(loaded, gray, layer)
    confident = probs >= loaded.threshold
    fallbacks = int(sum(m != METHOD_GRADCAM for m, c in zip(methods, confident, strict=True) if c))
    n = int(confident.sum())
    return {
        "layer": name,
        "positives": len(probs),
        "confident": n,
        "fallbacks": fallbacks,
        "share": fallbacks / n if n else float("nan"),
    }


def pointing_by_layer(
    loaded: Any, data: Path, boxes_csv: Path, split: str, layers: list[str | None]
) -> dict[str, Any]:
    from core.localisation import heatmap_peaks
    from core.training.pointing_game import centre_baseline, load_boxes, pointing_game

    boxes = load_boxes(boxes_csv, split=split)
    paths = sorted(boxes)
    gray = load_images(loaded, [data / p for p in paths])
    film_boxes = [boxes[p] for p in paths]
    centre = strip(centre_baseline(film_boxes))
    centre_near = pointing_game([(0.5, 0.5)] * len(paths), film_boxes, tolerance=NEAR)["rate"]
    centre[f"rate_within_{NEAR}"] = centre_near
    print(
        f"-- {split}: {len(paths)} boxed films; centre baseline {summary(centre)} "
        f"(within {NEAR:.0%}: {centre_near:.2f})"
    )
    out: dict[str, Any] = {"centre": centre, "layers": {}}
    for layer in layers:
        start = time.perf_counter()
        probs, maps, methods, name = run_gradcam(loaded, gray, layer)
        peaks = heatmap_peaks(maps)
        result = pointing_game(peaks, film_boxes)
        flagged = probs >= loaded.threshold
        called = (
            pointing_game(
                [pk for pk, f in zip(peaks, flagged, strict=True) if f],
                [b for b, f in zip(film_boxes, flagged, strict=True) if f],
            )
            if flagged.any()
            else None
        )
        near = pointing_game(peaks, film_boxes, tolerance=NEAR)
        grid = grid_of(loaded.keras_model, name)
        row = {
            **strip(result),
            "layer": name,
            "grid": grid,
            f"rate_within_{NEAR}": near["rate"],
            "activation_maps": int(sum(m != "gradcam" for m in methods)),
            "films_called_positive": int(flagged.sum()),
            "rate_on_films_called_positive": called["rate"] if called else None,
        }
        default = out["layers"].get(str(layers[0]))
        row["p_vs_default"] = mcnemar_p(result["hit_list"], default["hit_list"]) if default else 1.0
        row["hit_list"] = result["hit_list"]
        out["layers"][str(layer)] = row
        print(
            f"   {name:36s} grid {grid:>7s}  {summary(row)}  "
            f"[on {row['films_called_positive']} called positive: "
            f"{row['rate_on_films_called_positive'] if called else float('nan'):.2f}; "
            f"within {NEAR:.0%} of the image: {near['rate']:.2f}; "
            f"activation maps {row['activation_maps']}; p vs default "
            f"{row['p_vs_default']:.3f}] {time.perf_counter() - start:.0f}s"
        )
    return out


def choose_layer(val: dict[str, Any], layers: list[str | None]) -> str:
    """The layer with the highest validation hit rate among those that beat the default layer
    (the first) beyond chance: exact one-sided McNemar test on the paired films, p below
    0.05 / (layers compared) (Bonferroni: with a dozen layers one would 'win' by luck).
    A layer whose maps fall back to activation maps on more than 5% of the films is not a
    Grad-CAM layer in practice and is skipped. Otherwise the default stays."""
    rows = val["layers"]
    default = str(layers[0])
    best = default
    alpha = 0.05 / max(1, len(layers) - 1)
    for layer in map(str, layers[1:]):
        row = rows[layer]
        if row["activation_maps"] > 0.05 * row["n"] or row["p_vs_default"] >= alpha:
            continue
        if row["rate"] > rows[best]["rate"]:
            best = layer
    return best


def mcnemar_p(hits: list[bool], reference: list[bool]) -> float:
    """One-sided exact McNemar: P(a layer this much better than the reference by chance)."""
    from scipy.stats import binomtest

    better = sum(h and not r for h, r in zip(hits, reference, strict=True))
    worse = sum(r and not h for h, r in zip(hits, reference, strict=True))
    if better + worse == 0:
        return 1.0
    return float(binomtest(better, better + worse, 0.5, alternative="greater").pvalue)


def grid_of(model: Any, layer: str) -> str:
    from core.gradcam import _layer_at

    shape = _layer_at(model, layer.split("/")).output.shape
    return f"{shape[1]}x{shape[2]}"


def strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("rate", "ci95", "hits", "n")}


def summary(row: dict[str, Any]) -> str:
    from core.training.pointing_game import summary as text

    return text(row)


def write_registry(registry_path: str, model_id: str, report: dict[str, Any]) -> None:
    from core.registry import Registry
    from core.training.entries import annotate_model

    chosen = report["chosen"]
    test = chosen[report["split"]]
    entry = Registry.load(registry_path).entry(model_id)
    metrics = copy.deepcopy(entry.raw.get("metrics") or {})
    metrics.setdefault("test", {})["pointing_game"] = {
        "rate": round(test["rate"], 4),
        "ci95": test["ci95"],
        "hits": test["hits"],
        "n": test["n"],
        "layer": test["layer"],
        "centre_baseline": round(chosen["centre_baseline"]["rate"], 4),
        "centre_baseline_hits": chosen["centre_baseline"]["hits"],
        "layer_chosen_on": f"val ({chosen['val']['hits']}/{chosen['val']['n']} hits)",
        "boxes": "FracAtlas fracture boxes (fracture_boxes.csv); hit = peak inside any box",
    }
    annotate_model(registry_path, model_id, metrics=metrics, gradcam_layer=test["layer"])
    print(f"wrote metrics.test.pointing_game and gradcam_layer={test['layer']} for {model_id}")


if __name__ == "__main__":
    main()
