"""One X-ray, one condition: preprocess -> predict + Grad-CAM in one pass -> outcome.

The function every caller uses (CLI, Celery worker, benchmarks), so they all behave alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.conditions import get_condition
from core.errors import BodyPartMismatchError
from core.imaging import XRay
from core.model_manager import LoadedModel, ModelManager
from core.preprocessing import preprocess_gray

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
    if not allow_body_part_mismatch:
        check_body_part(xray, condition=condition)
    loaded = manager.get(condition=condition, model_id=model_id)
    return analyze_with_model(xray, loaded=loaded)


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
    batch = preprocess_gray(xray.pixels, input_size=loaded.input_size)[None]
    probabilities, cam = loaded.predict_with_gradcam(batch)
    probability = float(probabilities[0])
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
        gradcam_method=cam.methods[0],
        gradcam_layer=cam.layer,
        heatmap=cam.heatmaps[0],
        notes=xray.notes,
    )
