"""Where do registered models look? Grad-CAM statistics on test images, to spot shortcuts
(side markers, burned-in text) in corners and borders.

    .venv/bin/python bench/gradcam_review.py MODEL_ID [--n 200] [--split test] [--layer NAME]
        [--annotate]

Prints, for correctly and wrongly classified images: the mean share of heat in the outer band
(12.5% of each side; 44% of the area) and in the four corner squares (20% x 20%; 16% of the
area), and how often the hottest pixel lies in the band. A montage of overlays goes to
bench/out/ (never committed: the images are the data sets'). --annotate writes a summary
into the model's registry entry and re-renders its card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_id")
    ap.add_argument("--registry", default=str(ROOT / "registry.json"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument(
        "--layer", default=None, help="Grad-CAM layer to review (default: the registry's, as served)"
    )
    ap.add_argument("--annotate", action="store_true")
    ap.add_argument("--note", default="", help="what a person saw in the montage, for the card")
    args = ap.parse_args()

    from core.training.model_ops import configure_tensorflow

    configure_tensorflow(2, 0)
    from core.calibration import apply_calibration
    from core.gradcam import GradCam
    from core.model_manager import ModelManager
    from core.preprocessing import to_model_input
    from core.training.data import load_arrays, samples_from_folder

    manager = ModelManager(args.registry)
    loaded = manager.get(model_id=args.model_id)
    assert not loaded.is_placeholder, loaded.placeholder_reason
    folder = Path(args.data) / loaded.condition
    splits = [args.split] if (folder / args.split).is_dir() else None
    samples = samples_from_folder(folder, splits=splits)
    rng = np.random.default_rng(0)
    pick = sorted(rng.permutation(len(samples))[: args.n].tolist())
    arrays = load_arrays([samples[i] for i in pick], input_size=loaded.input_size)
    cam = GradCam(
        loaded.keras_model,
        layer=args.layer or loaded.gradcam_layer,
        position_reference=loaded.position_reference,
    )
    probs, maps = [], []
    for i in range(0, arrays.n, 32):
        r = cam(to_model_input(arrays.x[i : i + 32]))
        probs.append(apply_calibration(r.probabilities, loaded.calibration))
        maps.append(r.heatmaps)
    p = np.concatenate(probs)
    h = np.concatenate(maps)
    n, hh, ww = h.shape
    band = np.ones((hh, ww), bool)
    bh, bw = int(hh * 0.125), int(ww * 0.125)
    band[bh : hh - bh, bw : ww - bw] = False
    corners = np.zeros((hh, ww), bool)
    ch, cw = int(hh * 0.2), int(ww * 0.2)
    for rs in (slice(0, ch), slice(hh - ch, hh)):
        for cs in (slice(0, cw), slice(ww - cw, ww)):
            corners[rs, cs] = True
    mass = h.reshape(n, -1).sum(1) + 1e-9
    band_share = (h * band).reshape(n, -1).sum(1) / mass
    corner_share = (h * corners).reshape(n, -1).sum(1) / mass
    peak = h.reshape(n, -1).argmax(1)
    peak_in_band = band.reshape(-1)[peak]
    correct = (p >= loaded.threshold) == (arrays.y == 1)
    summary = {
        "model_id": loaded.model_id,
        "split": args.split,
        "n": int(n),
        "layer": cam.layer,
        "band_area_share": round(float(band.mean()), 3),
        "corner_area_share": round(float(corners.mean()), 3),
        "band_heat_share_mean": round(float(band_share.mean()), 3),
        "corner_heat_share_mean": round(float(corner_share.mean()), 3),
        "peak_in_band_fraction": round(float(peak_in_band.mean()), 3),
        "corner_heat_share_correct": round(float(corner_share[correct].mean()), 3) if correct.any() else None,
        "corner_heat_share_wrong": round(float(corner_share[~correct].mean()), 3)
        if (~correct).any()
        else None,
        "images_with_over_half_heat_in_corners": int((corner_share > 0.5).sum()),
    }
    print(json.dumps(summary, indent=1))
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    show = np.r_[np.flatnonzero(arrays.y == 0)[:8], np.flatnonzero(arrays.y == 1)[:8]]
    suffix = f"-{args.layer.replace('/', '_')}" if args.layer else ""
    _montage(out / f"gradcam-{loaded.model_id}{suffix}.png", arrays.x[show], h[show], p[show], arrays.y[show])
    # Where the heat sits, as a mean map per true class (rows top->bottom, in thirds).
    for label in (0, 1):
        m = h[arrays.y == label].mean(0) if (arrays.y == label).any() else None
        if m is not None:
            thirds = [float(m[i * hh // 3 : (i + 1) * hh // 3].sum() / m.sum()) for i in range(3)]
            summary[f"heat_by_third_top_mid_bottom_label{label}"] = [round(t, 2) for t in thirds]
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("heat_by")}))
    if args.annotate:
        from core.training.entries import annotate_model

        text = (
            f"Grad-CAM ({cam.layer}) on {n} {args.split} images "
            f"(bench/gradcam_review.py): on average {summary['band_heat_share_mean']:.0%} of "
            f"the heat lies in the outer band that covers {summary['band_area_share']:.0%} of "
            f"the image, {summary['corner_heat_share_mean']:.0%} in the four corners "
            f"({summary['corner_area_share']:.0%} of the area); the hottest point is in the "
            f"outer band for {summary['peak_in_band_fraction']:.0%} of images and "
            f"{summary['images_with_over_half_heat_in_corners']} image(s) have more than half "
            f"their heat in a corner (where side markers and burned-in text sit). Share of "
            f"heat in the top/middle/bottom thirds: negatives "
            f"{summary.get('heat_by_third_top_mid_bottom_label0')}, positives "
            f"{summary.get('heat_by_third_top_mid_bottom_label1')}. {args.note}"
        ).strip()
        annotate_model(args.registry, loaded.model_id, gradcam_stats=summary, gradcam_review=text)
        print("annotated", loaded.model_id)


def _montage(path: Path, gray: np.ndarray, heat: np.ndarray, p: np.ndarray, y: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(gray)
    fig, axes = plt.subplots(2, (k + 1) // 2, figsize=(2 * ((k + 1) // 2), 4.4), dpi=80)
    for ax, g, hm, pi, yi in zip(axes.ravel(), gray, heat, p, y, strict=False):
        ax.imshow(g, cmap="gray")
        ax.imshow(hm, cmap="jet", alpha=0.35)
        ax.set_title(f"y={yi} p={pi:.2f}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
