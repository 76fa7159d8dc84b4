"""Each model's results in a window, counted in the database with the finding rule's query
forms (web.clinical.analysis.findings), and judged against its reference (monitoring.reference).

A model here is a model id and checksum: a retrained artifact under the same id is another
model, with its own reference. Results are the model's finished analyses (each re-run counts:
these are the records), placed in the window by when they finished. The numbers are added up
from each day's (monitoring.days): counts and verdicts summed, AI-missed records as the union
of each day's (a record counts once however many days the model read its image).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core.drift import effective_n, psi, wilson_interval
from web.clinical.models import Analysis
from web.clinical.monitoring.days import KINDS, VERDICTS, Key, Tally, day_tallies, window_results
from web.clinical.monitoring.reference import Reference, model_reference, reference_cuts, scored_q

__all__ = ["KINDS", "VERDICTS", "ModelMonitoring", "monitoring_models", "window_results"]


@dataclass
class ModelMonitoring:
    """One model's numbers in a window, and what its reference makes of them."""

    model_id: str
    model_sha256: str
    condition: str
    analysed: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # KINDS -> results
    scored: int = 0  # findings, negatives and experimental results: those with a meaningful score
    flagged: int = 0  # of them positive at the model's threshold
    threshold: float | None = None
    last_result: dt.datetime | None = None
    last_clinical: dt.datetime | None = None
    verdicts: dict[str, int] = field(default_factory=dict)  # on its findings
    verdicts_on_negatives: dict[str, int] = field(default_factory=dict)
    missed: int = 0
    superseded: bool = False  # a later checksum of this id, or another model now answers
    reference: Reference = field(default_factory=lambda: Reference("", "none", "no validation reference"))
    histogram: list[int] = field(default_factory=list)  # window's scores in the reference's bins
    psi: float | None = None
    drift_reasons: list[dict[str, str]] = field(default_factory=list)

    @property
    def flag_rate(self) -> float | None:
        return self.flagged / self.scored if self.scored else None

    @property
    def agreement(self) -> float | None:
        judged = self.verdicts.get("agree", 0) + self.verdicts.get("disagree", 0)
        return self.verdicts.get("agree", 0) / judged if judged else None

    @property
    def expected_band(self) -> tuple[float, float] | None:
        if self.reference.flag_rate is None or not self.scored:
            return None
        return wilson_interval(
            self.reference.flag_rate,
            effective_n(self.scored, self.reference.n),
            confidence=settings.RADTRIAGE_MONITORING_BAND_CONFIDENCE,
        )

    @property
    def psi_level(self) -> str:
        if self.psi is None:
            return ""
        if self.psi > settings.RADTRIAGE_MONITORING_PSI_ALERT:
            return "major"
        return "moderate" if self.psi >= settings.RADTRIAGE_MONITORING_PSI_MODERATE else "stable"

    @property
    def drift_alert(self) -> bool:
        return bool(self.drift_reasons)

    def as_dict(self) -> dict[str, Any]:
        band = self.expected_band
        return {
            "model_id": self.model_id,
            "model_sha256": self.model_sha256,
            "condition": self.condition,
            "analysed": self.analysed,
            "findings": self.counts.get("finding", 0),
            "negatives": self.counts.get("negative", 0),
            "not_applicable": self.counts.get("not_applicable", 0),
            "experimental": self.counts.get("experimental", 0),
            "placeholder": self.counts.get("placeholder", 0),
            "scored": self.scored,
            "flagged": self.flagged,
            "flag_rate": self.flag_rate,
            "expected_flag_rate": self.reference.flag_rate,
            "expected_flag_rate_interval": list(band) if band else None,
            "band_confidence": settings.RADTRIAGE_MONITORING_BAND_CONFIDENCE,
            "agree": self.verdicts.get("agree", 0),
            "disagree": self.verdicts.get("disagree", 0),
            "uncertain": self.verdicts.get("uncertain", 0),
            "verdicts_on_negatives": {v: self.verdicts_on_negatives.get(v, 0) for v in VERDICTS},
            "missed": self.missed,
            "agreement": self.agreement,
            "psi": self.psi,
            "psi_level": self.psi_level or None,
            "drift_alert": self.drift_alert,
            "drift_reasons": self.drift_reasons,
            "superseded": self.superseded,
            "last_result": self.last_result.isoformat() if self.last_result else None,
            "reference": self.reference.as_dict(),
            "histogram": self.histogram,
        }


def monitoring_models(
    *, days: int, now: dt.datetime | None = None, counted: bool = True
) -> list[ModelMonitoring]:
    """One entry per model (id, checksum, condition) with results in the last `days` days,
    by condition then model id; counts exact, added up from the days' counts (monitoring.days;
    counted=False: every result counted live, the same numbers)."""
    now = now or timezone.now()
    start = now - dt.timedelta(days=days)
    results = window_results(start=start, end=now)
    cuts_of = reference_cuts(now=now)
    tallies: dict[Key, Tally] = {}
    for (key, _), tally in day_tallies(start=start, end=now, cuts_of=cuts_of, counted=counted).items():
        tallies.setdefault(key, Tally()).add(tally)
    models: dict[tuple[str, str, str], ModelMonitoring] = {}
    for key, tally in sorted(tallies.items()):
        models[key] = ModelMonitoring(
            model_id=key[0],
            model_sha256=key[1],
            condition=key[2],
            analysed=tally.analysed,
            counts=dict(tally.counts),
            scored=tally.scored,
            flagged=tally.flagged,
            threshold=tally.threshold,
            last_result=tally.last_result,
            last_clinical=tally.last_clinical,
            verdicts=dict(tally.verdicts),
            verdicts_on_negatives=dict(tally.verdicts_on_negatives),
            missed=len(tally.missed),
        )
    if not models:
        return []
    _superseded_mark(models)
    for model in models.values():
        model.reference = model_reference(
            model_id=model.model_id, model_sha256=model.model_sha256, threshold=model.threshold, now=now
        )
    for key, model in models.items():
        if model.reference.cuts and tallies[key].cuts == model.reference.cuts:
            model.histogram = list(tallies[key].histogram)
    # Days counted against other bins (the reference changed meanwhile): counted live.
    _histograms_count([m for m in models.values() if m.reference.cuts and not m.histogram], results)
    for model in models.values():
        _drift_judge(model)
    return sorted(models.values(), key=lambda m: (m.condition, m.model_id, m.superseded, m.model_sha256))


def _superseded_mark(models: dict[tuple[str, str, str], ModelMonitoring]) -> None:
    """A model is superseded when a later checksum of its id answered after it, or when another
    model in clinical use answered its condition after it: its alerts no longer stand."""
    for model in models.values():
        for other in models.values():
            if other is model or other.last_result is None or model.last_result is None:
                continue
            newer_checksum = other.model_id == model.model_id and other.last_result > model.last_result
            replaced = (
                model.last_clinical is not None
                and other.condition == model.condition
                and other.model_id != model.model_id
                and other.last_clinical is not None
                and other.last_clinical > model.last_clinical
            )
            if newer_checksum or replaced:
                model.superseded = True


def _drift_judge(model: ModelMonitoring) -> None:
    reference = model.reference
    total = sum(model.histogram)
    if reference.cuts and total:
        model.psi = psi(reference.fractions, [c / total for c in model.histogram])
    if model.scored < settings.RADTRIAGE_MONITORING_MIN_RESULTS:
        return
    band = model.expected_band
    rate = model.flag_rate
    if band is not None and rate is not None and not band[0] <= rate <= band[1]:
        model.drift_reasons.append(
            {
                "reason": "flag_rate",
                "text": (
                    f"flag rate {rate:.1%} outside its expected {band[0]:.1%}-{band[1]:.1%} "
                    f"({reference.flag_rate:.1%} in the reference, {model.scored} results)"
                ),
            }
        )
    if model.psi is not None and model.psi > settings.RADTRIAGE_MONITORING_PSI_ALERT:
        model.drift_reasons.append(
            {
                "reason": "psi",
                "text": (
                    f"score distribution shifted: PSI {model.psi:.2f} > "
                    f"{settings.RADTRIAGE_MONITORING_PSI_ALERT:g}"
                ),
            }
        )


def _histograms_count(models: list[ModelMonitoring], results: QuerySet[Analysis]) -> None:
    """Each model's scored results in its reference's bins (bin i: cuts[i-1] <= p < cuts[i]),
    all models counted in one pass over the window."""
    aggregates: dict[str, Count] = {}
    for index, model in enumerate(models):
        if not model.reference.cuts:
            continue
        mine = Q(model_id=model.model_id, model_sha256=model.model_sha256, condition=model.condition)
        edges: list[float | None] = [None, *model.reference.cuts, None]
        for i in range(len(edges) - 1):
            low, high = edges[i], edges[i + 1]
            q = mine & Q(probability__isnull=False)
            if low is not None:
                q &= Q(probability__gte=low)
            if high is not None:
                q &= Q(probability__lt=high)
            aggregates[f"m{index}_b{i}"] = Count("pk", filter=q)
    if not aggregates:
        return
    row = results.filter(scored_q()).aggregate(**aggregates)
    for index, model in enumerate(models):
        if model.reference.cuts:
            model.histogram = [int(row[f"m{index}_b{i}"]) for i in range(len(model.reference.cuts) + 1)]
