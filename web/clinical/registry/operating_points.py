"""A site's operating point: the one owner of moving a validated model's threshold.

An admin picks a target sensitivity; the threshold is chosen on the model's validation ROC
(models/<id>/scores.json, core.training.operating_points) and the figures to expect on the
test split are shown before anything changes. Setting it needs a typed reason and is audited.
It is stored in the database (SiteOperatingPoint), for one model id AND checksum: when the
condition's active model changes, it no longer applies and results fall back to the
registry's threshold (registry_activate clears it, and every reader checks the match anyway).

The worker asks site_threshold_for_worker for the condition and hands the answer to core as
data (core.analysis.SiteThreshold); each result records the threshold it was judged at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.registry import ModelEntry, Registry
from core.training.operating_points import (
    OperatingPointPreview,
    OperatingPointRefused,
    operating_point_preview,
)
from core.training.split_scores import read_split_scores
from web.clinical.audit.records import audit_record
from web.clinical.registry.models import SiteOperatingPoint

if TYPE_CHECKING:
    from core.analysis import SiteThreshold

CLINICAL_STATUSES = ("validated",)  # core.registry.STATUSES that may be used for triage


@dataclass(frozen=True)
class OperatingPointState:
    """What the card and the admin page show of a model's threshold."""

    model_id: str
    registry_threshold: float
    site: SiteOperatingPoint | None  # the site's choice in force for this model, if any

    @property
    def threshold(self) -> float:
        return self.site.threshold if self.site is not None else self.registry_threshold


def _registry(registry_path: Path | None) -> Registry:
    return Registry.load(registry_path or settings.RADTRIAGE_REGISTRY)


def _entry_for_change(registry: Registry, model_id: str) -> ModelEntry:
    """The registry entry, when a site may move its threshold; OperatingPointRefused otherwise."""
    entry = registry.entry(model_id)
    if entry.status not in CLINICAL_STATUSES:
        raise OperatingPointRefused(
            f"{model_id} is {entry.status}, not validated for clinical use: its threshold cannot be moved."
        )
    if registry.active_models.get(entry.condition) != entry.id:
        raise OperatingPointRefused(
            f"{model_id} is not the active {entry.condition} model: a site threshold applies to the "
            "active model only."
        )
    if not entry.sha256:
        raise OperatingPointRefused(f"{model_id} has no checksum in the registry to tie a threshold to.")
    return entry


def site_operating_point_preview(
    *, model_id: str, target_sensitivity: Any, registry_path: Path | None = None
) -> OperatingPointPreview:
    """The threshold for the target and the figures to expect; nothing changes.
    OperatingPointRefused (or RegistryError: no or stale scores.json) says why not."""
    registry = _registry(registry_path)
    entry = _entry_for_change(registry, model_id)
    return operating_point_preview(read_split_scores(registry, entry), target_sensitivity=target_sensitivity)


def site_operating_point_set(
    *,
    model_id: str,
    target_sensitivity: Any,
    reason: str,
    actor: Any,
    ip_address: str | None = None,
    registry_path: Path | None = None,
) -> SiteOperatingPoint:
    """Run `model_id` (the active model of its condition) at the threshold for the target from
    the next analysis on; the previous site choice for the condition ends. Audited."""
    reason = (reason or "").strip()
    if not reason:
        raise OperatingPointRefused("Type the reason for moving the threshold: it is kept in the audit log.")
    registry = _registry(registry_path)
    entry = _entry_for_change(registry, model_id)
    preview = operating_point_preview(
        read_split_scores(registry, entry), target_sensitivity=target_sensitivity
    )
    with transaction.atomic():
        previous = _current_row(entry.condition, lock=True)
        if previous is not None:
            _end(previous, reason=f"replaced: {reason}")
        point = SiteOperatingPoint.objects.create(
            condition=entry.condition,
            model_id=entry.id,
            model_sha256=str(entry.sha256),
            threshold=preview.threshold,
            registry_threshold=entry.threshold,
            target_sensitivity=preview.target_sensitivity,
            expected=preview.to_dict(),
            reason=reason,
            set_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        audit_record(
            actor=actor,
            action="model.operating_point.set",
            obj=point,
            ip_address=ip_address,
            detail={
                "condition": entry.condition,
                "model_id": entry.id,
                "model_sha256": entry.sha256,
                "threshold": preview.threshold,
                "previous_threshold": previous.threshold if previous is not None else entry.threshold,
                "registry_threshold": entry.threshold,
                "target_sensitivity": preview.target_sensitivity,
                "expected_test": _figures_detail(preview),
                "reason": reason,
            },
        )
    return point


def site_operating_point_clear(
    *, condition: str, actor: Any, reason: str, ip_address: str | None = None
) -> SiteOperatingPoint | None:
    """Back to the registry's threshold for `condition` (audited); None when none was set.
    Called by an admin (a reason is required) and by registry_activate when the model changes."""
    reason = (reason or "").strip()
    if not reason:
        raise OperatingPointRefused("Type the reason for going back to the registry's threshold.")
    with transaction.atomic():
        point = _current_row(condition, lock=True)
        if point is None:
            return None
        _end(point, reason=reason)
        audit_record(
            actor=actor,
            action="model.operating_point.clear",
            obj=point,
            ip_address=ip_address,
            detail={
                "condition": condition,
                "model_id": point.model_id,
                "model_sha256": point.model_sha256,
                "threshold": point.threshold,
                "registry_threshold": point.registry_threshold,
                "reason": reason,
            },
        )
    return point


def site_operating_point_clear_stale(
    *, registry: Registry, condition: str, actor: Any, ip_address: str | None = None
) -> SiteOperatingPoint | None:
    """registry_activate's last step: the site's choice ends when the condition's active model
    is no longer the artifact it was chosen for (audited as a clear)."""
    point = _current_row(condition)
    entry = registry.active_entry(condition)
    if point is None or (
        entry is not None and (point.model_id, point.model_sha256) == (entry.id, entry.sha256)
    ):
        return None
    now = f"{entry.id} ({str(entry.sha256)[:12]})" if entry is not None else "no model"
    return site_operating_point_clear(
        condition=condition,
        actor=actor,
        reason=f"the active model changed to {now}: back to the registry's threshold",
        ip_address=ip_address,
    )


def site_operating_point_state(*, model_id: str, registry_path: Path | None = None) -> OperatingPointState:
    """The model's registry threshold and the site's choice in force for it (if any)."""
    registry = _registry(registry_path)
    entry = registry.entry(model_id)
    site = site_operating_point_current(registry=registry, condition=entry.condition)
    return OperatingPointState(
        model_id=entry.id,
        registry_threshold=entry.threshold,
        site=site if site is not None and site.model_id == entry.id else None,
    )


def site_operating_point_current(*, registry: Registry, condition: str) -> SiteOperatingPoint | None:
    """The site's choice in force for `condition`: the active row, only while the condition's
    active model is the one (id and checksum) it was chosen for."""
    point = _current_row(condition)
    entry = registry.active_entry(condition)
    if point is None or entry is None or (point.model_id, point.model_sha256) != (entry.id, entry.sha256):
        return None
    return point


def site_threshold_for_worker(*, condition: str) -> SiteThreshold | None:
    """The site threshold to hand to core for the next result of `condition` (core applies it
    only to the very artifact it names, so a model switched since falls back by itself)."""
    from core.analysis import SiteThreshold

    point = _current_row(condition)
    if point is None:
        return None
    return SiteThreshold(model_id=point.model_id, model_sha256=point.model_sha256, threshold=point.threshold)


def _current_row(condition: str, *, lock: bool = False) -> SiteOperatingPoint | None:
    rows = SiteOperatingPoint.objects.filter(condition=condition, active=True)
    return (rows.select_for_update() if lock else rows).first()


def _end(point: SiteOperatingPoint, *, reason: str) -> None:
    point.active = False
    point.cleared_at = timezone.now()
    point.cleared_reason = reason
    point.save(update_fields=["active", "cleared_at", "cleared_reason"])


def _figures_detail(preview: OperatingPointPreview) -> dict[str, Any]:
    test = preview.test
    return {
        name: {"value": round(p.value, 4), "ci95": [round(p.ci95[0], 4), round(p.ci95[1], 4)], "n": p.n}
        for name, p in (
            ("sensitivity", test.sensitivity),
            ("specificity", test.specificity),
            ("flag_rate", test.flag_rate),
        )
    }
