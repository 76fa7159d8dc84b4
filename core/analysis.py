"""One X-ray (or a batch), one condition: preprocess -> predict + Grad-CAM in one pass -> outcome.

The function every caller uses (CLI, Celery worker, benchmarks), so they all behave alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.applicability import Applicability, check_applicability
from core.conditions import get_condition
from core.errors import BodyPartMismatchError, RadTriageError
from core.imaging import XRay
from core.joint_crop import paste_maps, search_shape
from core.localisation import heatmap_peak
from core.model_manager import LoadedModel, ModelManager
from core.preprocessing import preprocess_batch
from core.wording import result_warnings

log = logging.getLogger(__name__)

# From 8 images on, a CPU runs MobileNetV2/DenseNet121 + Grad-CAM ~3x cheaper per image than
# one at a time (bench/core_inference.py); 16 keeps a batch's memory small on any worker.
DEFAULT_BATCH_SIZE = 16
# Reads of joints cut from a full film are shown, never flagged: the model was validated on
# joint crops, and no graded full films exist here to validate the whole chain.
JOINT_CROP_UNVALIDATED = (
    "read on knee joints found and cut out automatically from a full film; the model was "
    "validated on joint crops only, and its accuracy on full films is not measured"
)


@dataclass(frozen=True)
class SiteThreshold:
    """A site's own operating threshold for one model artifact (chosen on its validation ROC
    and stored by the web side). It applies only to that model id with that checksum: once the
    active model changes, results fall back to the registry's threshold."""

    model_id: str
    model_sha256: str
    threshold: float


def operating_threshold(loaded: LoadedModel, site: SiteThreshold | None) -> float:
    """The threshold a result of `loaded` is judged at: the site's, when it is for exactly this
    artifact (never for a placeholder), else the registry's."""
    if (
        site is not None
        and not loaded.is_placeholder
        and site.model_id == loaded.model_id
        and site.model_sha256 == loaded.sha256
    ):
        return float(site.threshold)
    return loaded.threshold


@dataclass(frozen=True)
class AnalysisOutcome:
    condition: str
    probability: float  # calibrated
    positive: bool  # probability >= the operating threshold (operating_threshold)
    threshold: float  # the threshold actually applied
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
    # positive is False whenever the image is outside the model's population (never a flag).
    applicable: bool = True
    not_applicable_reason: str | None = None
    applicability: dict[str, Any] = field(default_factory=dict)
    heatmap_peak: tuple[float, float] | None = None  # (x, y) as fractions of width, height

    @property
    def flag(self) -> bool:
        """Whether this result may put a study at the top of the worklist."""
        return self.positive and self.applicable and not self.is_placeholder and not self.experimental

    @property
    def warnings(self) -> list[str]:
        """What must be shown next to this result, most serious first."""
        return [
            w["text"]
            for w in result_warnings(
                is_placeholder=self.is_placeholder,
                placeholder_reason=self.placeholder_reason,
                applicable=self.applicable,
                not_applicable_reason=self.not_applicable_reason,
                experimental=self.experimental,
                experimental_reason=self.experimental_reason,
            )
        ]

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
            "applicable": self.applicable,
            "not_applicable_reason": self.not_applicable_reason,
            "applicability": self.applicability,
            "flag": self.flag,
            "heatmap_peak": list(self.heatmap_peak) if self.heatmap_peak else None,
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
    site_threshold: SiteThreshold | None = None,
) -> AnalysisOutcome:
    return analyze_xrays(
        [xray],
        condition=condition,
        manager=manager,
        model_id=model_id,
        allow_body_part_mismatch=allow_body_part_mismatch,
        site_threshold=site_threshold,
    )[0]


def analyze_xrays(
    xrays: Sequence[XRay],
    *,
    condition: str,
    manager: ModelManager,
    model_id: str | None = None,
    allow_body_part_mismatch: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    site_threshold: SiteThreshold | None = None,
) -> list[AnalysisOutcome]:
    """Several X-rays, one condition: the outcomes analyze_xray gives one by one, computed in
    model calls of up to `batch_size` images (on a CPU, ~3x cheaper per image from 8 on).
    Each outcome says whether the image is one the model was made for (core.applicability).
    `site_threshold`: a site's operating threshold, used when it is for the model that runs."""
    if not allow_body_part_mismatch:
        for xray in xrays:
            check_body_part(xray, condition=condition)
    loaded = manager.get(condition=condition, model_id=model_id)
    return analyze_with_model_batch(
        xrays, loaded=loaded, batch_size=batch_size, site_threshold=site_threshold
    )


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


def analyze_with_model_batch(
    xrays: Sequence[XRay],
    *,
    loaded: LoadedModel,
    batch_size: int = DEFAULT_BATCH_SIZE,
    site_threshold: SiteThreshold | None = None,
) -> list[AnalysisOutcome]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    outcomes: list[AnalysisOutcome] = []
    for start in range(0, len(xrays), batch_size):
        chunk = xrays[start : start + batch_size]
        film_views = _views(chunk, loaded=loaded, recognitions=_recognise(chunk))
        flat = [view for views in film_views for view in views]
        batch = preprocess_batch([v.pixels for v in flat], input_size=loaded.input_size)
        probabilities, cam = loaded.predict_with_gradcam(batch)
        distances = _feature_distances(loaded, getattr(cam, "pooled", None))
        for i, view in enumerate(flat):
            view.probability, view.method = float(probabilities[i]), cam.methods[i]
            view.heatmap = cam.heatmaps[i]
            view.applicability = _applicability(
                view.xray,
                loaded=loaded,
                recognition=view.recognition,
                distance=None if distances is None else float(distances[i]),
            )
        threshold = operating_threshold(loaded, site_threshold)
        outcomes.extend(
            _film_outcome(views, loaded=loaded, layer=cam.layer, threshold=threshold) for views in film_views
        )
    return outcomes


@dataclass
class _View:
    """What the model reads of one film: the film itself, or one knee joint cut out of it."""

    xray: XRay
    pixels: np.ndarray
    recognition: Any
    box: tuple[float, float, float, float] | None = None  # the joint's place on the film
    probability: float = 0.0
    method: str = ""
    heatmap: np.ndarray | None = None
    applicability: Applicability | None = None


def _views(xrays: Sequence[XRay], *, loaded: LoadedModel, recognitions: list[Any]) -> list[list[_View]]:
    """Per film, what the model reads: the film, or, for a model trained on joint crops
    (core.joint_crop) and a film the recogniser sees as a full knee film, each joint found on it,
    cut out like the training crops. The crops are recognised and checked on their own."""
    cropper = loaded.joint_cropper
    out: list[list[_View]] = []
    crops: list[_View] = []
    for xray, recognition in zip(xrays, recognitions, strict=True):
        whole = [_View(xray, xray.pixels, recognition)]
        if cropper is None or getattr(recognition, "population", None) != "knee_film":
            out.append(whole)
            continue
        found = cropper.find(xray.pixels)
        joints = [
            _View(xray, cropper.crop(xray.pixels, box, size=loaded.input_size), None, box) for _, box in found
        ]
        crops.extend(joints)
        out.append(joints or whole)
    for view, recognition in zip(crops, _recognise([_crop_xray(v) for v in crops]), strict=True):
        view.recognition = recognition
    return out


def _joint_record(view: _View) -> dict[str, Any]:
    assert view.box is not None and view.applicability is not None
    return {
        "box": [round(float(c), 4) for c in view.box],
        "probability": round(view.probability, 6),
        "applicable": view.applicability.applicable,
    }


def _crop_xray(view: _View) -> XRay:
    return XRay(pixels=view.pixels, metadata=view.xray.metadata, source_format=view.xray.source_format)


def _film_outcome(
    views: list[_View], *, loaded: LoadedModel, layer: str | None, threshold: float
) -> AnalysisOutcome:
    """One outcome per film: the film's own view, or its joints combined (_joints_read)."""
    view = views[0]
    if view.box is None:
        assert view.applicability is not None and view.heatmap is not None
        heatmap, applicability, experimental_reason = view.heatmap, view.applicability, None
    else:
        view, heatmap, applicability = _joints_read(views)
        experimental_reason = JOINT_CROP_UNVALIDATED
    return _outcome(
        view.xray,
        loaded=loaded,
        probability=view.probability,
        method=view.method,
        layer=layer,
        heatmap=heatmap,
        applicability=applicability,
        experimental_reason=experimental_reason,
        threshold=threshold,
    )


def _joints_read(views: list[_View]) -> tuple[_View, np.ndarray, Applicability]:
    """Several joints of one film: the highest probability among the joints the model may read
    (in its population) counts, and the map shows each such joint in its place."""
    xray = views[0].xray
    readable = [v for v in views if v.applicability is not None and v.applicability.applicable]
    chosen = max(readable, key=lambda v: v.probability) if readable else views[0]
    assert chosen.applicability is not None
    shown = readable or [chosen]
    placed = [(v.box, v.heatmap) for v in shown if v.box is not None and v.heatmap is not None]
    heatmap = paste_maps(search_shape(xray.pixels), [b for b, _ in placed], [m for _, m in placed])
    within = f"; {len(readable)} within its population, the highest probability is reported"
    note = (
        f"Read on {len(views)} knee joint{'s' if len(views) > 1 else ''} found on the film, each cut "
        "out and contrast-equalised (CLAHE) like the model's training crops"
        + (within if readable else "")
        + "."
    )
    applicability = Applicability(
        chosen.applicability.applicable,
        chosen.applicability.reason,
        (*chosen.applicability.notes, note),
        {**chosen.applicability.checks, "joints": [_joint_record(v) for v in views]},
    )
    return chosen, heatmap, applicability


def _recognise(xrays: Sequence[XRay]) -> list[Any]:
    """The recogniser's view of each image; None each if it cannot run (then the check
    says so, and the result does not count)."""
    try:
        from core.recognition import recognise_many

        return list(recognise_many([x.pixels for x in xrays]))
    except (RadTriageError, ImportError, OSError, ValueError) as exc:
        log.error("The image recogniser could not run: %s", exc)
        return [None] * len(xrays)


def _feature_distances(loaded: LoadedModel, pooled: np.ndarray | None) -> np.ndarray | None:
    if loaded.population_model is None or pooled is None:
        return None
    try:
        return np.asarray(loaded.population_model.distance(np.asarray(pooled)), dtype=np.float64)
    except ValueError as exc:  # a population file fitted on another layer: say, don't crash
        log.error("Feature distance unavailable for %s: %s", loaded.model_id, exc)
        return None


def _applicability(
    xray: XRay, *, loaded: LoadedModel, recognition: Any, distance: float | None
) -> Applicability:
    if loaded.is_placeholder:  # never a finding anyway; its own warning says why
        return Applicability(True)
    return check_applicability(
        population=loaded.population,
        model_name=f"{get_condition(loaded.condition).label.lower()} model",
        metadata=xray.metadata,
        recognition=recognition,
        distance=distance,
        cutoff=getattr(loaded.population_model, "cutoff", None),
    )


def _outcome(
    xray: XRay,
    *,
    loaded: LoadedModel,
    probability: float,
    method: str,
    layer: str | None,
    heatmap: np.ndarray,
    applicability: Applicability,
    threshold: float,
    experimental_reason: str | None = None,
) -> AnalysisOutcome:
    """experimental_reason: this read is experimental even if the model is not (never a flag)."""
    return AnalysisOutcome(
        condition=loaded.condition,
        probability=probability,
        positive=applicability.applicable and probability >= threshold,
        threshold=threshold,
        model_id=loaded.model_id,
        model_sha256=loaded.sha256,
        architecture=loaded.architecture,
        is_placeholder=loaded.is_placeholder,
        placeholder_reason=loaded.placeholder_reason,
        experimental=loaded.experimental or experimental_reason is not None,
        experimental_reason=loaded.experimental_reason or experimental_reason,
        gradcam_method=method,
        gradcam_layer=layer,
        heatmap=heatmap,
        notes=tuple(xray.notes) + applicability.notes,
        applicable=applicability.applicable,
        not_applicable_reason=applicability.reason or None,
        applicability=applicability.checks,
        heatmap_peak=_peak(heatmap),
    )


def _peak(heatmap: np.ndarray) -> tuple[float, float] | None:
    """Where the map is hottest, (x, y) as fractions of width and height; None if flat."""
    x, y = heatmap_peak(heatmap)
    return None if math.isnan(x) else (round(float(x), 4), round(float(y), 4))


def warm_active_models(manager: ModelManager, *, conditions: Sequence[str] | None = None) -> dict[str, float]:
    """Load every active model (or those of `conditions`) and run one synthetic X-ray through
    the whole analysis (predict, Grad-CAM, applicability), so that the first real job of this
    process finds TensorFlow imported, the model loaded and its graphs traced.

    Returns condition -> seconds it took. A condition that cannot warm is logged and skipped:
    its first job will load it (or answer from the flagged placeholder) as before.
    """
    import time

    wanted = list(conditions) if conditions is not None else sorted(manager.registry().active_models)
    rng = np.random.default_rng(0)
    # Mid-grey noise, not zeros: an all-black image would take the all-zero heat-map path.
    xray = XRay(
        pixels=rng.integers(60, 200, size=(256, 256), dtype=np.uint8), metadata={}, source_format="png"
    )
    took: dict[str, float] = {}
    for condition in wanted:
        start = time.monotonic()
        try:
            loaded = manager.get(condition=condition)
            analyze_with_model_batch([xray], loaded=loaded)
        except Exception:  # noqa: BLE001 - warming is an optimisation: never fail a worker for it
            log.warning("Could not warm the model for %s", condition, exc_info=True)
            continue
        took[condition] = time.monotonic() - start
        log.info("Warmed %s (%s) in %.1f s", condition, loaded.model_id, took[condition])
    return took
