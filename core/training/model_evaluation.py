"""Evaluate a registered model on a labelled folder, through the serving path.

Predictions go through core.model_manager.ModelManager (checksum check, load, calibration from
the registry) and the data through core.training.data (serve-time decoding and resizing), so the numbers
are those a radiologist's results would have. The threshold is the registry's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.preprocessing import to_model_input
from core.registry import Registry
from core.training.data import Sample, load_arrays, samples_from_folder
from core.training.evaluation import evaluate_predictions
from core.training.model_card import PAPER_TABLE1
from core.training.plots import plot_confusion, plot_reliability, plot_roc

TABLE_CONDITIONS = ("pneumonia", "knee_osteoarthritis", "knee_osteoporosis", "fracture", "cardiomegaly")


def labelled_samples(data: str | Path, split: str | None) -> tuple[list[Sample], str]:
    """DIR/<split>/<negative|positive>/ or DIR/<negative|positive>/ -> samples of one split."""
    root = Path(data)
    if (root / "negative").is_dir() or (root / "positive").is_dir():
        samples = samples_from_folder(root.parent, splits=[root.name])
        return samples, root.name
    split = split or "test"
    samples = samples_from_folder(root, splits=[split])
    return samples, split


def evaluate_registered_model(
    *,
    registry_path: str | Path,
    data: str | Path,
    model_id: str | None = None,
    condition: str | None = None,
    split: str | None = "test",
    n_boot: int = 1000,
    plots_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """-> JSON-safe report: model, split, n, auc, accuracy, sensitivity, specificity, ppv, npv,
    f1 (each with `<name>_ci95`), threshold, confusion, calibration error; plots if asked."""
    from core.model_manager import ModelManager

    manager = ModelManager(registry_path)
    loaded = manager.get(condition=condition, model_id=model_id)
    if loaded.is_placeholder:
        raise RuntimeError(f"No real model to evaluate: {loaded.placeholder_reason}")
    samples, split_name = labelled_samples(data, split)
    arrays = load_arrays(samples, input_size=loaded.input_size, cache_dir=cache_dir)
    probs = np.concatenate(
        [loaded.predict(to_model_input(arrays.x[i : i + 64])) for i in range(0, arrays.n, 64)]
    )
    report = evaluate_predictions(arrays.y, probs, loaded.threshold, n_boot=n_boot, groups=arrays.groups)
    report = {
        "model_id": loaded.model_id,
        "model_sha256": loaded.sha256,
        "condition": loaded.condition,
        "data": str(data),
        "split": split_name,
        "experimental": loaded.experimental,
        **report,
    }
    if plots_dir is not None:
        out = Path(plots_dir)
        title = f"{loaded.model_id} ({split_name}, n={report['n']})"
        labels = (loaded.entry.raw.get("class_labels") if loaded.entry else None) or ["neg", "pos"]
        report["plots"] = [
            str(p)
            for p in (
                plot_roc(
                    out / "roc.png",
                    arrays.y,
                    probs,
                    title=title,
                    threshold=loaded.threshold,
                    auc_ci=report["auc_ci95"],
                ),
                plot_reliability(out / "reliability.png", arrays.y, probs, title=title),
                plot_confusion(out / "confusion.png", report["confusion"], labels=labels, title=title),
            )
        ]
    return report


def table1(registry_path: str | Path) -> str:
    """The seed paper's Table 1 layout: condition x DenseNet121/MobileNetV2, accuracy and AUC of
    the registered models (test split, else validation) beside the paper's accuracy."""
    registry = Registry.load(registry_path)
    header = (
        "| condition | DenseNet121 acc % | DenseNet121 AUC | paper DenseNet121 acc % "
        "| MobileNetV2 acc % | MobileNetV2 AUC | paper MobileNetV2 acc % |"
    )
    rows = [header, "|" + "---|" * 7]
    for cond in TABLE_CONDITIONS:
        cells = [cond]
        paper = PAPER_TABLE1.get(cond, (None, None))
        for arch, paper_acc in (("densenet121", paper[0]), ("mobilenetv2", paper[1])):
            entry = _pick(registry, cond, arch)
            if entry is None:
                cells += ["-", "-"]
            else:
                metrics = entry.raw.get("metrics", {})
                split = "test" if "test" in metrics else "val"
                m = metrics.get(split, {})
                flag = "" if split == "test" else " (val)"
                flag += " *" if entry.is_experimental else ""
                acc, auc = m.get("accuracy"), m.get("auc")
                cells += [
                    f"{acc * 100:.1f}{flag}" if acc is not None else "-",
                    f"{auc:.3f}{flag}" if auc is not None else "-",
                ]
            cells.append(f"{paper_acc:.1f}" if paper_acc is not None else "-")
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(
        "\n* experimental model (see its card). Accuracy at each model's registered "
        "threshold (see its threshold_rule: validation sensitivity >= 0.90, with a margin for "
        "models evaluated since the exact-interval rule), not at 0.5. The paper's numbers are "
        "on its own data and are not directly comparable."
    )
    return "\n".join(rows)


def active_table(registry_path: str | Path) -> str:
    """Every active model on its test split: AUC with its interval, accuracy/sensitivity/
    specificity at the operating point beside the 8x8-thumbnail baseline at its own operating
    point, Brier skill, ECE and status (from the registry entries)."""
    registry = Registry.load(registry_path)
    rows = [
        "| condition | model | status | test n (neg/pos) | AUC (95% CI) | acc % model / "
        "baseline | sens % model / baseline | spec % model / baseline | beats baseline "
        "| Brier skill | ECE |",
        "|" + "---|" * 11,
    ]
    for cond in TABLE_CONDITIONS:
        entry = registry.active_entry(cond)
        if entry is None:
            rows.append(f"| {cond} | (none) |" + " |" * 9)
            continue
        metrics = entry.raw.get("metrics", {})
        split = "test" if "test" in metrics else "val"
        m = metrics.get(split, {})
        base = entry.raw.get("baseline") or {}
        op = base.get("operating_point") or {}
        beats = (base.get("comparison") or {}).get("beats_baseline")

        def pair(name: str, m: dict[str, Any] = m, op: dict[str, Any] = op) -> str:
            return f"{_pct(m.get(name))} / {_pct(op.get(name))}"

        ci = m.get("auc_ci95") or [None, None]
        rows.append(
            f"| {cond} | {entry.id} | {entry.status} | {m.get('n')} ({m.get('n_negative')}/"
            f"{m.get('n_positive')}){'' if split == 'test' else ' val'} "
            f"| {_num(m.get('auc'))} ({_num(ci[0])}-{_num(ci[1])}) | {pair('accuracy')} "
            f"| {pair('sensitivity')} | {pair('specificity')} "
            f"| {'-' if beats is None else ('yes' if beats else 'no')} "
            f"| {_num(m.get('brier_skill'))} | {_num(m.get('ece'))} |"
        )
    rows.append(
        "\nBaseline: logistic regression on 8x8 thumbnails, its threshold chosen on "
        "validation by the same rule. 'beats baseline': the paired patient-bootstrap 95% "
        "interval of the balanced-accuracy difference lies above 0."
    )
    return "\n".join(rows)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v * 100:.1f}"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pick(registry: Registry, condition: str, architecture: str) -> Any:
    active = registry.active_entry(condition)
    if active is not None and active.architecture == architecture:
        return active
    candidates = [
        e
        for e in registry.models.values()
        if e.condition == condition and e.architecture == architecture and e.status != "retired"
    ]
    return max(candidates, key=lambda e: str(e.raw.get("created", "")), default=None)
