"""Which reference a model's results are judged against, and what it expects.

In order: the department's own first weeks (ModelReference: the first
RADTRIAGE_MONITORING_REFERENCE_DAYS of results of that model id and checksum, once that period
is over and holds RADTRIAGE_MONITORING_REFERENCE_MIN scored results); else the model's
validation scores (models/<id>/scores.json, when its checksum is this model's); else the
validation flag rate from models/<id>/metrics.json (a band, no score distribution); else none.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Min, Q

from core.drift import bin_fractions, decile_cuts
from web.clinical.analysis.findings import result_kind_q
from web.clinical.models import Analysis, ModelReference

SCORES_FILE = "scores.json"
METRICS_FILE = "metrics.json"
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def scored_q(prefix: str = "") -> Q:
    """The results whose score describes the model's population: findings, negatives and
    experimental results (never a placeholder's number, nor one for an image outside the
    model's population). Their scores are compared with the reference's."""
    return (
        result_kind_q("finding", prefix)
        | result_kind_q("negative", prefix)
        | result_kind_q("experimental", prefix)
    )


@dataclass(frozen=True)
class Reference:
    source: str  # "department", "validation", "metrics" or "" (none)
    key: str  # changes whenever the reference does (alerts judged on another key clear)
    label: str  # what the page and the API say
    flag_rate: float | None = None
    n: int = 0
    cuts: list[float] = field(default_factory=list)  # 9 decile cuts; [] without scores
    fractions: list[float] = field(default_factory=list)  # share per bin (10)
    note: str = ""  # why a better reference is not used yet

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source or None,
            "label": self.label,
            "n": self.n,
            "flag_rate": self.flag_rate,
            "cuts": self.cuts,
            "fractions": self.fractions,
            "note": self.note,
        }


def model_reference(
    *, model_id: str, model_sha256: str, threshold: float | None, now: dt.datetime
) -> Reference:
    """The reference for this model (id and checksum), the best one there is now."""
    saved = ModelReference.objects.filter(model_id=model_id, model_sha256=model_sha256).first()
    note = ""
    if saved is None:
        saved, note = _department_reference_save(model_id=model_id, model_sha256=model_sha256, now=now)
    if saved is not None:
        return Reference(
            source="department",
            key=f"department:{saved.pk}",
            label=(
                f"this department's first {(saved.period_end - saved.period_start).days} days of results "
                f"({saved.period_start:%Y-%m-%d} to {saved.period_end:%Y-%m-%d}, {saved.n} results)"
            ),
            flag_rate=saved.flagged / saved.n if saved.n else None,
            n=saved.n,
            cuts=list(saved.cuts),
            fractions=list(saved.fractions),
        )
    validation = _validation_scores(model_id)
    if validation is not None and validation["sha256"] in ("", model_sha256):
        scores = validation["scores"]
        cuts = decile_cuts(scores)
        rate = sum(1 for s in scores if s >= threshold) / len(scores) if threshold is not None else None
        return Reference(
            source="validation",
            key=f"validation:{validation['sha256'][:16]}",
            label=f"the model's validation scores ({len(scores)} images, {SCORES_FILE})",
            flag_rate=rate,
            n=len(scores),
            cuts=cuts,
            fractions=bin_fractions(scores, cuts),
            note=note,
        )
    if validation is not None:
        note = f"{note} {SCORES_FILE} is for another checksum of this model.".strip()
    rate, n = _validation_flag_rate(model_id)
    if rate is not None:
        return Reference(
            source="metrics",
            key="metrics:val",
            label=f"no validation reference; the validation flag rate only ({METRICS_FILE}, {n} images)",
            flag_rate=rate,
            n=n,
            note=note,
        )
    return Reference(source="", key="none", label="no validation reference", note=note)


def reference_cuts(*, now: dt.datetime) -> Callable[[str, str], list[float]]:
    """(model id, checksum) -> the cuts of its reference now (model_reference's), asked once
    per model: the bins a day's scores are counted in (monitoring.days)."""

    @functools.cache
    def cuts_of(model_id: str, model_sha256: str) -> list[float]:
        return model_reference(model_id=model_id, model_sha256=model_sha256, threshold=None, now=now).cuts

    return cuts_of


def _department_reference_save(
    *, model_id: str, model_sha256: str, now: dt.datetime
) -> tuple[ModelReference | None, str]:
    days = settings.RADTRIAGE_MONITORING_REFERENCE_DAYS
    least = settings.RADTRIAGE_MONITORING_REFERENCE_MIN
    rows = Analysis.objects.filter(model_id=model_id, model_sha256=model_sha256).filter(scored_q())
    first = rows.aggregate(first=Min("finished_at"))["first"]
    if first is None:
        return None, ""
    end = first + dt.timedelta(days=days)
    if end > now:
        return None, f"the department's reference is ready after {end:%Y-%m-%d}."
    period = rows.filter(finished_at__gte=first, finished_at__lt=end)
    scores = [float(p) for (p,) in period.values_list("probability") if p is not None]
    if len(scores) < least:
        return None, (
            f"the department's first {days} days hold {len(scores)} results, fewer than {least}: "
            "too few for a reference."
        )
    flagged = period.filter(positive=True).count()
    cuts = decile_cuts(scores)
    try:
        with transaction.atomic():
            saved = ModelReference.objects.create(
                model_id=model_id,
                model_sha256=model_sha256,
                period_start=first,
                period_end=end,
                n=len(scores),
                flagged=flagged,
                cuts=cuts,
                fractions=bin_fractions(scores, cuts),
            )
    except IntegrityError:  # saved meanwhile by another process
        saved = ModelReference.objects.get(model_id=model_id, model_sha256=model_sha256)
    return saved, ""


def _model_folder(model_id: str) -> Path | None:
    if not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        return None
    return Path(settings.RADTRIAGE_REGISTRY).parent / "models" / model_id


def _validation_scores(model_id: str) -> dict[str, Any] | None:
    """{"sha256", "scores"} from scores.json's validation split; None when absent or unreadable."""
    folder = _model_folder(model_id)
    path = folder / SCORES_FILE if folder else None
    if path is None or not path.is_file():
        return None
    return _scores_read(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _scores_read(path: str, mtime_ns: int) -> dict[str, Any] | None:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        scores = [float(s) for s in document["splits"]["val"]["scores"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not scores:
        return None
    return {"sha256": str(document.get("sha256") or ""), "scores": scores}


def _validation_flag_rate(model_id: str) -> tuple[float | None, int]:
    folder = _model_folder(model_id)
    path = folder / METRICS_FILE if folder else None
    if path is None or not path.is_file():
        return None, 0
    try:
        confusion = json.loads(path.read_text(encoding="utf-8"))["metrics"]["val"]["confusion"]
        n = sum(int(confusion[k]) for k in ("tp", "fp", "tn", "fn"))
        return (int(confusion["tp"]) + int(confusion["fp"])) / n, n
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None, 0
