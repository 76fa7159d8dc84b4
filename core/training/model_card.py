"""Model cards (models/<model-id>/card.md) rendered from a registry entry. Framework-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA_SOURCES: dict[str, dict[str, str]] = {
    "pneumonia": {
        "source": "Kermany et al. 2018, paediatric chest X-rays (Guangzhou Women and Children's "
        "Medical Center), split by patient",
        "licence": "CC BY 4.0",
        "not_trained_on": "adult chest films, lateral views, CT, portable ICU films, other "
        "hospitals' equipment; it cannot tell bacterial from viral pneumonia "
        "or detect other chest findings",
    },
    "cardiomegaly": {
        "source": "NIH ChestX-ray14 subset at 128x128 (labels mined from radiology reports, so "
        "noisy; no patient ids, so test scores may be optimistic)",
        "licence": "NIH ChestX-ray14 terms (public, cite Wang et al. 2017)",
        "not_trained_on": "paediatric films, lateral views, images above 128 px detail; it "
        "does not measure the cardiothoracic ratio",
    },
    "fracture": {
        "source": "FracAtlas (Abedeen et al. 2023: hand, leg, hip and shoulder radiographs, all "
        "fractured images and about two non-fractured per fractured one; no patient "
        "ids, split by image) plus the Kaggle 'bone fracture detection using X-rays' "
        "set (upper limb, many paediatric, split by source image)",
        "licence": "FracAtlas CC BY 4.0; Kaggle set licence not stated: demo/research use only",
        "not_trained_on": "spine, skull, rib or facial fractures; CT; it does not localise "
        "the fracture (the heat map is only a hint)",
    },
    "knee_osteoarthritis": {
        "source": "Chen et al. 2019 knee joint crops from the Osteoarthritis Initiative, KL "
        "graded, CLAHE; positive = KL >= 2; split by patient",
        "licence": "CC BY 4.0 + OAI data-use terms",
        "not_trained_on": "uncropped knee films (the model expects a crop centred on the "
        "joint), other joints, post-operative knees; it does not grade KL",
    },
    "knee_osteoporosis": {
        "source": "Wani & Arora knee X-ray database (bilateral AP knee films of adults with a "
        "DXA T-score; positive = osteoporosis, T <= -2.5; negative = normal or "
        "osteopenia), split by patient",
        "licence": "as stated on Mendeley Data fxjm8fb6mw (not verified offline): research use",
        "not_trained_on": "films from other hospitals or scanners, lateral views, children; "
        "osteoporosis is diagnosed by DXA, not by a knee film",
    },
}

REGION = {
    "pneumonia": "frontal chest",
    "cardiomegaly": "frontal chest",
    "fracture": "limb",
    "knee_osteoarthritis": "knee (joint crop)",
    "knee_osteoporosis": "knee",
}

PAPER_TABLE1 = {  # accuracy %, DenseNet121 / MobileNetV2, the seed paper's own data
    "pneumonia": (95.8, 87.2),
    "knee_osteoarthritis": (94.2, 97.0),
    "knee_osteoporosis": (91.8, 86.9),
    "fracture": (73.0, 77.0),
    "cardiomegaly": (63.0, 65.6),
}


def _fmt(value: Any, ci: Any = None, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    scale = 100.0 if pct else 1.0
    text = f"{value * scale:.1f}" if pct else f"{value:.3f}"
    if ci and None not in ci:
        text += f" ({ci[0] * scale:.1f}-{ci[1] * scale:.1f})" if pct else f" ({ci[0]:.3f}-{ci[1]:.3f})"
    return text


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def metrics_table(metrics: dict[str, Any]) -> str:
    rows = [
        "| split | n (neg/pos) | AUC | accuracy % | sensitivity % | specificity % | PPV % | NPV % | F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, m in metrics.items():
        if not isinstance(m, dict) or "n_negative" not in m:
            continue
        rows.append(
            f"| {split} | {m['n']} ({m['n_negative']}/{m['n_positive']}) "
            f"| {_fmt(m['auc'], m.get('auc_ci95'))} "
            f"| {_fmt(m['accuracy'], m.get('accuracy_ci95'), True)} "
            f"| {_fmt(m['sensitivity'], m.get('sensitivity_ci95'), True)} "
            f"| {_fmt(m['specificity'], m.get('specificity_ci95'), True)} "
            f"| {_fmt(m['ppv'], m.get('ppv_ci95'), True)} "
            f"| {_fmt(m['npv'], m.get('npv_ci95'), True)} "
            f"| {_fmt(m['f1'], m.get('f1_ci95'))} |"
        )
    return "\n".join(rows)


def population_lines(pop: dict[str, Any] | None) -> list[str]:
    if not pop:
        return ["- Not recorded for this model."]
    ages = pop.get("age_range_years")
    age = (
        f"{pop.get('age_group')}, ages {ages[0]}-{ages[1]}"
        if ages
        else f"{pop.get('age_group')}, ages not recorded"
    )
    return [
        f"- Trained on: **{pop.get('description')}**.",
        f"- Region: {pop.get('region')}; image kind: {pop.get('image_kind')}; views: "
        f"{', '.join(pop.get('views') or [])}; age group: {age}.",
        f"- Sources: {'; '.join(pop.get('sources') or [])}.",
        f"- Images the recogniser files as {', '.join(pop.get('recogniser_classes') or [])} "
        "are within this population; anything else is outside what the model has seen.",
    ]


def baseline_lines(base: dict[str, Any], m: dict[str, Any], split: str) -> list[str]:
    lines = [
        f"- {base.get('method')}: {split} AUC {_fmt(base.get('auc'), base.get('auc_ci95'))}"
        f" vs this model's {_fmt(m.get('auc'), m.get('auc_ci95'))}."
    ]
    op = base.get("operating_point")
    if op:
        lines += [
            "",
            "At the operating point (each threshold chosen on validation by the same "
            "rule; exact 95% intervals):",
            "",
            "| | threshold | accuracy % | sensitivity % | specificity % | Brier skill |",
            "|---|---|---|---|---|---|",
            f"| this model | {m.get('threshold', 0):.4f} "
            f"| {_fmt(m.get('accuracy'), m.get('accuracy_ci95'), True)} "
            f"| {_fmt(m.get('sensitivity'), m.get('sensitivity_ci95'), True)} "
            f"| {_fmt(m.get('specificity'), m.get('specificity_ci95'), True)} "
            f"| {_fmt(m.get('brier_skill'))} |",
            f"| 8x8 thumbnail baseline | {op.get('threshold', 0):.4f} "
            f"| {_fmt(op.get('accuracy'), op.get('accuracy_ci95'), True)} "
            f"| {_fmt(op.get('sensitivity'), op.get('sensitivity_ci95'), True)} "
            f"| {_fmt(op.get('specificity'), op.get('specificity_ci95'), True)} "
            f"| {_fmt(base.get('brier_skill'))} |",
            "",
        ]
    cmp_ = base.get("comparison")
    if cmp_:
        d, ci = (
            cmp_.get("balanced_accuracy_difference"),
            cmp_.get("balanced_accuracy_difference_ci95") or [None, None],
        )
        verdict = (
            "**The model clearly beats the baseline at its operating point**"
            if cmp_.get("beats_baseline")
            else "**The model does NOT clearly beat the baseline at its operating point**: "
            "a logistic regression on an 8x8 thumbnail does about as well, so the "
            "network may rely on global brightness/layout shortcuts"
        )
        lines.append(
            f"- {verdict} (balanced accuracy difference {_fmt(d, ci, True)} "
            "percentage points, paired patient bootstrap)."
        )
    lines += [
        "- A high baseline means global brightness/layout cues (side markers, acquisition "
        "differences) already separate the classes in this data set; only the gap "
        "between the two is evidence that the network looks at the anatomy."
    ]
    return lines


def cv_lines(cv: dict[str, Any] | None) -> list[str]:
    if not cv:
        return []
    return [
        "",
        "## Cross-validation (the estimate to trust for this small data set)",
        f"- {cv.get('method')}; {cv.get('n')} images ({cv.get('n_negative')}/"
        f"{cv.get('n_positive')}), {cv.get('n_groups')} patients.",
        f"- Pooled out-of-fold AUC {_fmt(cv.get('pooled_auc'), cv.get('pooled_auc_ci95'))} "
        f"(patient bootstrap); per fold {[f.get('auc') for f in cv.get('folds', [])]} "
        f"(mean {cv.get('fold_auc_mean')}, sd {cv.get('fold_auc_sd')}).",
        f"- At each fold's threshold ({cv.get('threshold_rule')}): sensitivity "
        f"{_fmt(cv.get('sensitivity'), cv.get('sensitivity_ci95'), True)} %, specificity "
        f"{_fmt(cv.get('specificity'), cv.get('specificity_ci95'), True)} % (exact 95%).",
    ]


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# Technical fields of the applicability record left out of the card (kept in the registry).
APPLICABILITY_DETAILS = {
    "file",
    "sha256",
    "feature_layer",
    "feature_dim",
    "k",
    "n",
    "seconds_per_image",
    "model_seconds_per_image",
    "cutoff",
    "cutoff_quantile",
}


def extra_lines(entry: dict[str, Any]) -> list[str]:
    """Sections other tools add to an entry: applicability, pointing game."""
    lines: list[str] = []
    if entry.get("applicability"):
        lines += [
            "",
            "## Applicability check (population distance)",
            "Share of images that pass the check that an image resembles the training "
            "population (in-population images should pass; others should not):",
        ]
        app = entry["applicability"]
        lines += (
            [
                f"- {k.replace('_', ' ')}: {_plain(v)}"
                for k, v in app.items()
                if k not in APPLICABILITY_DETAILS
            ]
            if isinstance(app, dict)
            else [f"- {_plain(app)}"]
        )
    pointing = (entry.get("metrics", {}).get("test") or {}).get("pointing_game")
    if pointing:
        lines += ["", "## Pointing game (does the heat map hit the fracture box? test split)"]
        lines += (
            [f"- {k}: {_plain(v)}" for k, v in pointing.items()]
            if isinstance(pointing, dict)
            else [f"- {_plain(pointing)}"]
        )
    joint = entry.get("joint_crop")
    if joint:
        lines += [
            "",
            "## Full knee films: joints found and cut out automatically (core.joint_crop)",
            "A full film is read through each knee joint found on it, cut out and equalised like "
            "the training crops. Such reads are shown as EXPERIMENTAL and never flag: no graded "
            "full films exist here to validate them.",
        ]
        lines += [f"- {k.replace('_', ' ')}: {_plain(v)}" for k, v in joint.items() if k != "sha256"]
    return lines


def render_card(entry: dict[str, Any]) -> str:
    cond = entry["condition"]
    src = DATA_SOURCES.get(
        cond, {"source": "see training.data", "licence": "unknown", "not_trained_on": "unknown"}
    )
    t = entry.get("training", {})
    cal = entry.get("calibration", {})
    base = entry.get("baseline", {})
    metrics = entry.get("metrics", {})
    main_split = "test" if "test" in metrics else "val"
    m = metrics.get(main_split, {})
    weights = t.get("imagenet_weights") or "none (random initialisation, trained from scratch)"
    lines = [f"# Model card: {entry['id']}", ""]
    if entry.get("status") == "experimental":
        lines += [
            f"> **EXPERIMENTAL — not validated.** {entry.get('experimental_reason', '')}",
            "> Results from this model must always be shown with this warning.",
            "",
        ]
    if entry.get("inactive_reason"):
        lines += [f"> **Kept inactive.** {entry['inactive_reason']}", ""]
    lines += [
        "## Intended use",
        f"Triage aid for **{cond.replace('_', ' ')}** on {REGION.get(cond, '')} X-rays "
        f"(outputs: {' / '.join(entry['class_labels'])}): it reorders a worklist and "
        "highlights studies for a radiologist's attention. "
        "It is not a diagnosis, must not be used without a radiologist reading the image, and "
        "is a research prototype without regulatory clearance.",
        "",
        "## Model",
        f"- Architecture: {entry['architecture']} ({entry.get('family')}), input "
        f"{entry['input_size'][0]}x{entry['input_size'][1]} RGB (grayscale replicated), X/255; "
        "backbone-specific scaling inside the model.",
        f"- Initial weights: {weights}.",
        f"- Protocol: `{t.get('protocol')}`, {t.get('epochs_run')} of {t.get('epochs_planned')} "
        f"epoch(s) run{' (stopped early)' if t.get('stopped_early') else ''}, batch "
        f"{t.get('batch_size')}, {(t.get('optimizer') or 'Adam').split(' (')[0]} lr "
        f"{t.get('learning_rate')}, class weights "
        f"{ {k: round(v, 3) for k, v in (t.get('class_weights') or {}).items()} }, "
        f"seed {t.get('seed')}; stages "
        + "; ".join(
            f"epochs {s['start_epoch'] + 1}-{s['end_epoch']}: {s['trainable']} at {s['lr']:g}"
            for s in t.get("stages", [])
            if s["end_epoch"] > s["start_epoch"]
        )
        + ".",
        f"- Augmentation: {t.get('augmentation')}.",
        f"- BatchNorm: {t.get('batchnorm')}"
        + (
            "."
            if t.get("protocol") == "boxed head"
            else "; trainable BatchNorm statistics re-estimated on clean training images after training."
        ),
        f"- Training wall time: {t.get('wall_time_s')} s on {t.get('hardware')}.",
        f"- Command: `{t.get('command')}`",
        *[
            f"- {key.replace('_', ' ').capitalize()}: {t[key]}."
            for key in ("head", "loss", "epoch_chosen_by")
            if t.get(key)
        ],
        "",
        "## Population",
        *population_lines(entry.get("population")),
        "",
        "## Data",
        f"- Source: {src['source']}.",
        f"- Licence: {src['licence']}.",
        f"- Images per split (data set): {t.get('n')}; used: {t.get('n_used')}.",
        f"- Not trained on: {src['not_trained_on']}.",
        *[f"- Note: {n}" for n in t.get("notes", [])],
        "",
        "## Calibration and operating threshold",
        (
            f"- Calibration: {cal.get('method')} fitted on the validation split "
            f"(p = sigmoid(a * logit(p_raw) + b), a = {cal.get('a')}, b = {cal.get('b')}); "
            f"validation log-loss {cal.get('val_log_loss_raw')} -> "
            f"{cal.get('val_log_loss_calibrated')}."
            if cal.get("method") not in (None, "none")
            else f"- Calibration: none ({cal.get('reason', 'not fitted')})."
        ),
        f"- Threshold: **{entry['threshold']:.4f}** on the calibrated probability; rule: "
        f'{entry.get("threshold_rule")}. "Positive" means p >= threshold, not p >= 0.5.',
        *(
            [f"- Why this sensitivity target: {entry['threshold_reason']}"]
            if entry.get("threshold_reason")
            else []
        ),
        "",
        "## Performance (95% intervals)",
        metrics_table(metrics),
        "",
        f"Intervals: {(m.get('ci_method') or {}).get('proportions', 'bootstrap')} for accuracy, "
        f"sensitivity, specificity, PPV and NPV; "
        f"{(m.get('ci_method') or {}).get('auc_f1', 'bootstrap over images')} for AUC and F1.",
        "",
        f"Confusion on {main_split} (tn/fp/fn/tp): {m.get('confusion')}. "
        f"Calibrated ECE {_num(m.get('ece'))}, Brier {_num(m.get('brier'))}, Brier skill "
        f"score {_num(m.get('brier_skill'))} (1 - Brier / Brier of always predicting the "
        f"prevalence; 0 = no better than the prevalence), log-loss {_num(m.get('log_loss'))}. "
        "Plots: `roc.png`, `reliability.png`, `confusion.png`.",
        *cv_lines(entry.get("cross_validation")),
        "",
        "## Trivial baseline (shortcut check)",
        *baseline_lines(base, m, main_split),
        *extra_lines(entry),
        "",
        "## Limitations",
    ]
    limits = list(entry.get("limitations") or [])
    limits += [
        "Evaluated on held-out images of the same public data set, not on an external "
        "hospital: expect lower performance elsewhere (different scanners, populations, "
        "prevalence). PPV/NPV depend on prevalence and are given at this test set's prevalence.",
        f"Accuracy in the seed paper's Table 1 (its own data, DenseNet121 / MobileNetV2): "
        f"{PAPER_TABLE1.get(cond)} %; not directly comparable with these data.",
    ]
    lines += [f"- {x}" for x in limits]
    if entry.get("gradcam_review"):
        lines += ["", "## Grad-CAM review", entry["gradcam_review"]]
    return "\n".join(lines) + "\n"


def write_card(path: str | Path, entry: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_card(entry), encoding="utf-8")
    return path
