"""models/body-region-recogniser-v1/card.md from a train_recogniser report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.recognition import CLASSES, N_FEATURES, N_STATISTICS, UNRECOGNISED
from core.training.recogniser_data import (
    CUTOFF_PERCENTILE,
    MIN_POPULATION_CONFIDENCE,
    MIN_REGION_CONFIDENCE,
    ZOOM,
)

SOURCES = {
    "chest_child": "pneumonia set: Kermany et al. 2018, children aged 1-5 (Guangzhou), frontal "
    "chest, 224x224, CC BY 4.0",
    "chest_adult": "cardiomegaly set: NIH ChestX-ray14 subset, adults, frontal chest, 128x128",
    "knee_crop": "knee_osteoarthritis set: Chen et al. 2019 OAI knee joint crops, CLAHE, "
    "224x224, CC BY 4.0 + OAI terms",
    "knee_film": "knee_osteoporosis set: Wani & Arora, full bilateral AP knee films of adults, "
    "<=512 px (research use)",
    "limb": "fracture set: FracAtlas hand/leg/hip/shoulder (CC BY 4.0) + Kaggle upper-limb "
    "set (licence not stated)",
}


def render_card(report: dict[str, Any], *, data_dir: Path) -> str:
    """models/body-region-recogniser-v1/card.md from a train_recogniser report."""
    test, val = report["test"], report["val"]
    sections = [
        _card_intro(report),
        _card_data(report),
        _card_performance(test, val),
        _card_dicom(report["dicom"]),
        _card_non_xray(report["non_xray"]),
        _card_timing(report["timing"]),
        _card_limits(),
        f"## Reproduce\n`python manage.py train_recogniser --data {data_dir} --per-class "
        f"{report['per_class']} --seed {report['seed']}` ({report['train_seconds']:.0f} s here, "
        "thumbnails cached under var/cache/recogniser). Figures: metrics.json next to this card.\n",
    ]
    return "\n".join(sections)


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def _card_intro(report: dict[str, Any]) -> str:
    config = report["config"]
    layers = (
        f"MLP, one hidden layer of {config['hidden'][0]} ReLU units, L2 alpha {config['alpha']}"
        if config["kind"] == "mlp"
        else f"multinomial logistic regression, C {config['C']}"
    )
    candidates = ", ".join(f"{name} {_pct(score)}" for name, score in report["candidates"].items())
    cutoffs = ", ".join(f"{name} {value:.2f}" for name, value in report["distance_cutoffs"].items())
    return f"""# Model card: body-region-recogniser-v1

## What it is for
Tells the applicability check which body region and which training population an X-ray looks
like, from the pixels alone: `chest_child` (like the Kermany children's chest films),
`chest_adult` (like NIH ChestX-ray14 adults), `knee_crop` (like the OAI CLAHE knee joint crops),
`knee_film` (like the Wani & Arora full bilateral knee films), `limb` (like the FracAtlas/Kaggle
limb films), or `unrecognised`. It says what the image *resembles*; it is not a diagnosis and
knows nothing beyond these five data sets.

## How it works (serving: `core.recognition`, numpy + OpenCV, no pickle, no TensorFlow)
- Input: `XRay.pixels`, uint8 (H, W), any size. Down to 256x256 by nearest pixel when larger,
  then area-averaged to 128x128 (squashed: aspect kept only as a feature).
- Features ({N_FEATURES}): 32x32 picture standardised per image, 16x16 gradient magnitude,
  16-bin histogram (sqrt), {N_STATISTICS} appearance statistics (exposure, contrast, edge level,
  log aspect, roughness at 32 and 128 px, grey-level entropy, black and white fractions);
  standardised with training means and spreads.
- Classifier: {layers}, trained with scikit-learn, exported as arrays and run with numpy.
  Chosen on validation balanced accuracy among: {candidates} (multinomial logistic
  regression scores 97.0% on the same measure and is not fitted by default; zoom-out augmentation
  to 0.65 scored 98.2% against 98.5% for 0.85, same measure).
- Out of distribution: Mahalanobis distance of the appearance statistics to each class's
  Gaussian (shrunk covariance), divided by that class's cut-off = the {CUTOFF_PERCENTILE:.0f}th
  percentile of its own validation images ({cutoffs}); nearest class taken. Above 1 ->
  `unrecognised`. (A Mahalanobis distance in a 40-component PCA of all features was tried and
  dropped: the real tibia DICOM came out as far as a photograph.)
- Decision: unrecognised when out of distribution or the top region's probability is below
  {MIN_REGION_CONFIDENCE}; the population is given when its class probability is at least
  {MIN_POPULATION_CONFIDENCE} (else region only, "type unclear"). These two were set by hand,
  not tuned; with the distance they leave {_pct(report["val"]["unrecognised_rate"])} of
  validation images unrecognised.
- Artifact: `recogniser.npz`, {report["artifact_bytes"] / 1024:.0f} KiB, loaded with
  `allow_pickle=False`; a missing or corrupt file raises `core.errors.RadTriageError` naming it.
"""


def _card_data(report: dict[str, Any]) -> str:
    sizes = report["split_sizes"]
    rows = "\n".join(
        f"| `{name}` | {sizes['train'][name]} | {sizes['val'][name]} | "
        f"{sizes['test'][name]} | {SOURCES[name]} |"
        for name in CLASSES
    )
    return f"""## Training data (../shared/data, manifest.csv splits)
| class | train | val | test | source |
|---|---|---|---|---|
{rows}

Trained on train only: {report["per_class"]} augmented samples per class (small classes cycled,
every image used before any repeats: each of the 129 knee films about
{report["per_class"] / max(1, sizes["train"]["knee_film"]):.0f} times; big classes subsampled),
so the classes weigh the same. Augmentation: zoom {ZOOM[0]}-{ZOOM[1]} with a black, white or
mirrored border, rotation +-10 deg, width stretch +-15%, shift +-8%, horizontal mirror,
contrast x0.75-1.3, brightness +-0.1, gamma x0.7-1.4, occasional blur and noise, aspect-ratio
feature jittered (most sets were stored squashed to a square, so the aspect must not become a
shortcut). Classifier, cut-offs and thresholds chosen on val; every figure below is test.
"""


def _card_performance(test: dict[str, Any], val: dict[str, Any]) -> str:
    columns = [*CLASSES, UNRECOGNISED]
    header = "| true \\ said | " + " | ".join(f"`{c}`" for c in columns) + " | n |"
    lines = [header, "|---" * (len(columns) + 2) + "|"]
    for name in CLASSES:
        row = test["confusion"][name]
        lines.append(
            f"| `{name}` | " + " | ".join(str(row[c]) for c in columns) + f" | {sum(row.values())} |"
        )
    per_class = "\n".join(
        f"| `{name}` | {_pct(test['per_class_accuracy'][name])} "
        f"({_wilson(test['confusion'][name][name], sum(test['confusion'][name].values()))}) | "
        f"{_pct(val['per_class_accuracy'][name])} |"
        for name in CLASSES
    )
    regions = ", ".join(f"{region} {_pct(value)}" for region, value in test["per_region_accuracy"].items())
    ages = test["chest_age_by_class"]
    return f"""## Performance (test split, n = {test["n"]}; val for comparison)
| class | test accuracy (95% Wilson interval) | val accuracy |
|---|---|---|
{per_class}
| all (balanced) | {_pct(test["balanced_accuracy"])} | {_pct(val["balanced_accuracy"])} |
| all (per image) | {_pct(test["population_accuracy"])} | {_pct(val["population_accuracy"])} |

"Accuracy" = the population named is the true one; `unrecognised` counts as wrong. Without the
rejection rules (top class only) test accuracy is {_pct(test["argmax_accuracy"])}.

Confusion matrix (test):

{chr(10).join(lines)}

- Region accuracy (chest / knee / limb): **{_pct(test["region_accuracy"])}** ({regions}).
- Children vs adults on test chests: **{_pct(test["chest_age_accuracy"])}** named the right age
  group (children {_pct(ages["chest_child"])}, adults {_pct(ages["chest_adult"])});
  {_pct(test["chest_age_accuracy_argmax"])} when only the child-vs-adult probabilities are compared.
- Test images called unrecognised: {_pct(test["unrecognised_rate"])} (out of distribution:
  {_pct(test["out_of_distribution_rate"])}).
"""


def _wilson(successes: int, n: int, z: float = 1.96) -> str:
    if n == 0:
        return "n/a"
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{100 * (centre - half):.1f}-{100 * (centre + half):.1f}%"


def _card_dicom(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "## Real DICOM files\nNot available when this card was written.\n"
    lines = "\n".join(
        f"| {r['file']} | {r['size']} | {r['expected']} | {r['says']} | {r['distance']:.2f} |" for r in rows
    )
    return f"""## Real DICOM files (../shared/data/dicom, decoded with core.imaging.load_xray)
| file | size | truth | recogniser says | distance / cut-off |
|---|---|---|---|---|
{lines}

RG1 is an adult CR chest from another vendor (not NIH); RG3 a distal tibia CR (limb);
nih_dx_test1..6 NIH adult chests (4..6 carry test1's pixels under wrong headers).
"""


def _card_non_xray(rows: list[dict[str, Any]]) -> str:
    lines = "\n".join(
        f"| {r['image']} | {r['says']} | {r['distance']:.2f} | {r['top_class']} {r['top_probability']:.0%} |"
        for r in rows
    )
    caught = sum(r["population"] == UNRECOGNISED for r in rows)
    return f"""## Images that are not X-rays (check only; never used for training or choosing)
| image | recogniser says | distance / cut-off | top class (prob.) |
|---|---|---|---|
{lines}

{caught} of {len(rows)} come out unrecognised. What it can tell: blank frames, noise and fine
test patterns fall far outside every class's appearance statistics. What it cannot: a
photograph, a smooth gradient or a cross-sectional (CT/MRI) slice can have radiograph-like
statistics and then gets whatever class its shapes resemble, sometimes confidently. The DICOM
header check (Modality CT/MR is refused at upload) and each model's own feature-distance check
are the guards for those.
"""


def _card_timing(timing: dict[str, Any]) -> str:
    lines = "\n".join(
        f"| {name} | {row['cpu_ms']:.3f} | {row['wall_ms']:.3f} |"
        for name, row in timing["per_image"].items()
    )
    return f"""## Time per image (after decode, `Recogniser.predict`, this machine)
| image | CPU ms | wall ms (median) |
|---|---|---|
{lines}

{timing["cpus"]} CPUs shared with other training jobs (1-minute load average
{timing["load_average_1min"]} while measuring), so wall time includes waiting for a core; CPU time
is what the recogniser itself costs. Large films cost about the same as small ones (sampled down
to 256 px first).
"""


def _card_limits() -> str:
    return """## What it does not know
- It learned five data sets, not five body regions in general. `chest_adult` means "like NIH
  ChestX-ray14 at 128 px"; `chest_child` "like the Kermany Guangzhou children's films". Only
  one adult film from elsewhere could be checked (RG1 above, called adult); how other
  hospitals' adult films, or children's films not from Guangzhou, come out is unknown. A
  teenager's chest has no class of its own, and the age split is learned from two data sets
  that differ in more than age (hospital, equipment, positioning, resolution).
- No skull, spine, abdomen, pelvis-only, dental, lateral chest, mammography, CT or MRI images
  were trained: they should come out unrecognised but may be forced into the nearest class;
  the per-model population check and the DICOM header must catch those.
- `limb` is what FracAtlas and the Kaggle set contain (hand, wrist, arm, leg, foot, hip,
  shoulder). Limb films called `knee_film` are the main error. Checked by eye on the v1 test
  split: 6 of those 10 are FracAtlas "leg" films showing one or both knees (a knee film by any
  reading, though not from the osteoporosis set); 4 are forearm, wrist, hand or casted-limb
  films, true errors. A hip film shows the pelvis. A knee joint crop without CLAHE was never
  seen.
- `knee_film` rests on 129 training films of one database: its val/test figures (40/22 films)
  have wide uncertainty.
- Appearance statistics, not anatomy, decide "unrecognised": a photograph or a smooth
  synthetic image can pass (see above).
- Probabilities are not calibrated beyond what the validation thresholds need.
"""
