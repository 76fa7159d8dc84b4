"""One X-ray (or a batch), one condition: preprocess -> predict + Grad-CAM in one pass -> outcome.

The function every caller uses (CLI, Celery worker, benchmarks), so they all behave alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.conditions import get_condition
from core.errors import BodyPartMismatchError
from core.imaging import XRay
from core.model_manager import LoadedModel, ModelManager
from core.preprocessing import preprocess_gray

# From 8 images on, a CPU runs MobileNetV2/DenseNet121 + Grad-CAM ~3x cheaper per image than
# one at a time (bench/core_inference.py); 16 keeps a batch's memory small on any worker.
DEFAULT_BATCH_SIZE = 16

PLACEHOLDER_WARNING = (
    "PLACEHOLDER MODEL: this result has no diagnostic value and must not be read as a finding."
)


@dataclass(frozen=True)
class AnalysisOutcome:
    condition: str
    probability: float  # calibrated
    positive: bool  # probability >= the model's operating threshold
    threshold: float
    model_id: str
    model_sha256: str | None
    architecture: str
    is_placeholder: bool
    placeholder_reason: str | None
    experimental: bool
    experimental_reason: str | None
    gradcam_method: str
    gradcam_layer: str | None
    heatmap: np.ndarray = field(repr=False)  # float32 (h, w) in [0, 1], model resolution
    notes: tuple[str, ...] = ()

    @property
    def warnings(self) -> list[str]:
        """What must be shown next to this result, most serious first."""
        shown = []
        if self.is_placeholder:
            shown.append(f"{PLACEHOLDER_WARNING} Reason: {self.placeholder_reason}")
        if self.experimental:
            shown.append(f"EXPERIMENTAL MODEL: {self.experimental_reason}")
        return shown

    def to_dict(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "probability": round(float(self.probability), 6),
            "positive": bool(self.positive),
            "threshold": float(self.threshold),
            "model_id": self.model_id,
            "model_sha256": self.model_sha256,
            "architecture": self.architecture,
            "is_placeholder": self.is_placeholder,
            "placeholder_reason": self.placeholder_reason,
            "experimental": self.experimental,
            "experimental_reason": self.experimental_reason,
            "gradcam_method": self.gradcam_method,
            "gradcam_layer": self.gradcam_layer,
            "warnings": self.warnings,
            "notes": list(self.notes),
        }


def analyze_xray(
    xray: XRay,
    *,
    condition: str,
    manager: ModelManager,
    model_id: str | None = None,
    allow_body_part_mismatch: bool = False,
) -> AnalysisOutcome:
    return analyze_xrays([xray], condition=condition, manager=manager, model_id=model_id,
                         allow_body_part_mismatch=allow_body_part_mismatch)[0]


def analyze_xrays(
    xrays: Sequence[XRay],
    *,
    condition: str,
    manager: ModelManager,
    model_id: str | None = None,
    allow_body_part_mismatch: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[AnalysisOutcome]:
    """Several X-rays, one condition: the outcomes analyze_xray gives one by one, computed in
    model calls of up to `batch_size` images (on a CPU, ~3x cheaper per image from 8 on)."""
    if not allow_body_part_mismatch:
        for xray in xrays:
            check_body_part(xray, condition=condition)
    loaded = manager.get(condition=condition, model_id=model_id)
    return analyze_with_model_batch(xrays, loaded=loaded, batch_size=batch_size)


def check_body_part(xray: XRay, *, condition: str) -> None:
    """A chest model must never silently run on a knee: refuse when the header says otherwise.

    PNG/JPEG files carry no body part; the uploader's choice of condition stands for them.
    """
    spec = get_condition(condition)
    body_part = xray.metadata.get("BodyPartExamined")
    if body_part and not spec.applies_to(body_part):
        raise BodyPartMismatchError(
            f"This image is labelled body part '{body_part}', but {spec.label} applies to "
            f"{spec.region} images ({', '.join(sorted(spec.body_parts))}). Choose a matching "
            "condition, or correct the body part."
        )


def analyze_with_model(xray: XRay, *, loaded: LoadedModel) -> AnalysisOutcome:
    return analyze_with_model_batch([xray], loaded=loaded)[0]


def analyze_with_model_batch(xrays: Sequence[XRay], *, loaded: LoadedModel,
                             batch_size: int = DEFAULT_BATCH_SIZE) -> list[AnalysisOutcome]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    outcomes: list[AnalysisOutcome] = []
    for start in range(0, len(xrays), batch_size):
        chunk = xrays[start:start + batch_size]
        batch = np.stack([preprocess_gray(x.pixels, input_size=loaded.input_size) for x in chunk])
        probabilities, cam = loaded.predict_with_gradcam(batch)
        outcomes.extend(
            _outcome(xray, loaded=loaded, probability=float(probabilities[i]),
                     method=cam.methods[i], layer=cam.layer, heatmap=cam.heatmaps[i])
            for i, xray in enumerate(chunk)
        )
    return outcomes


def _outcome(xray: XRay, *, loaded: LoadedModel, probability: float, method: str,
             layer: str | None, heatmap: np.ndarray) -> AnalysisOutcome:
    return AnalysisOutcome(
        condition=loaded.condition,
        probability=probability,
        positive=probability >= loaded.threshold,
        threshold=loaded.threshold,
        model_id=loaded.model_id,
        model_sha256=loaded.sha256,
        architecture=loaded.architecture,
        is_placeholder=loaded.is_placeholder,
        placeholder_reason=loaded.placeholder_reason,
        experimental=loaded.experimental,
        experimental_reason=loaded.experimental_reason,
        gradcam_method=method,
        gradcam_layer=layer,
        heatmap=heatmap,
        notes=xray.notes,
    )
