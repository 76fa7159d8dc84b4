"""Core's outcome -> the stored result: the one typed mapping from `core.analysis.AnalysisOutcome`
to an Analysis row. It reads the outcome's attributes (never a dict), so mypy checks every
field that decides flagging (positive, applicable, is_placeholder, experimental, probability,
threshold, model_id, model_sha256) against core's dataclass."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.utils import timezone

from web.clinical.models import Analysis

if TYPE_CHECKING:  # core.analysis pulls in the model code: never imported by the web process
    from core.analysis import AnalysisOutcome

# The columns analysis_apply_outcome writes (one UPDATE for a batch of results).
OUTCOME_FIELDS = [
    "state",
    "probability",
    "threshold",
    "positive",
    "model_id",
    "model_sha256",
    "architecture",
    "is_placeholder",
    "placeholder_reason",
    "experimental",
    "experimental_reason",
    "gradcam_method",
    "gradcam_layer",
    "notes",
    "heatmap_raw",
    "error_message",
    "finished_at",
    "applicable",
    "not_applicable_reason",
    "applicability",
    "heatmap_peak",
]


def analysis_apply_outcome(analysis: Analysis, outcome: AnalysisOutcome, *, heatmap_name: str) -> None:
    """Set `analysis` (not saved) to the succeeded result `outcome`, its heat map stored as
    `heatmap_name`. Saving is the caller's: see OUTCOME_FIELDS."""
    analysis.state = Analysis.State.SUCCEEDED
    analysis.probability = round(float(outcome.probability), 6)
    analysis.threshold = float(outcome.threshold)
    analysis.applicable = bool(outcome.applicable)
    analysis.not_applicable_reason = outcome.not_applicable_reason or ""
    analysis.applicability = dict(outcome.applicability)
    analysis.heatmap_peak = list(outcome.heatmap_peak) if outcome.heatmap_peak else None
    # Outside the model's population the label means nothing: neither positive nor negative.
    analysis.positive = bool(outcome.positive) if analysis.applicable else None
    analysis.model_id = outcome.model_id[:128]
    analysis.model_sha256 = (outcome.model_sha256 or "")[:64]
    analysis.architecture = outcome.architecture[:32]
    analysis.is_placeholder = bool(outcome.is_placeholder)
    analysis.placeholder_reason = outcome.placeholder_reason or ""
    analysis.experimental = bool(outcome.experimental)
    analysis.experimental_reason = outcome.experimental_reason or ""
    analysis.gradcam_method = outcome.gradcam_method[:32]
    analysis.gradcam_layer = (outcome.gradcam_layer or "")[:128]
    analysis.notes = list(outcome.notes)
    analysis.heatmap_raw.name = heatmap_name
    analysis.error_message = ""
    analysis.finished_at = timezone.now()
