"""Django admin page for the model registry: see every model, switch the active one.

registry.json stays the source of truth (the ModelManager in each worker re-reads it when it
changes), so switching here takes effect on the next analysis without restarting anything.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from core.conditions import CONDITIONS
from core.errors import RadTriageError
from core.registry import Registry
from core.training.operating_points import MAX_TARGET, MIN_TARGET, PRESET_TARGETS
from web.access import Capability, can
from web.clinical.registry.activation import ActivationRefused, registry_activate, registry_activation_preview
from web.clinical.registry.cards import model_card_url
from web.clinical.registry.operating_points import (
    site_operating_point_clear,
    site_operating_point_current,
    site_operating_point_preview,
    site_operating_point_set,
    site_operating_point_state,
)
from web.clinical.registry.shared import registry_pull


def _rows(registry: Registry) -> list[dict[str, Any]]:
    rows = []
    for code, condition in CONDITIONS.items():
        site = site_operating_point_current(registry=registry, condition=code)
        for entry in sorted((e for e in registry.models.values() if e.condition == code), key=lambda e: e.id):
            test = (entry.raw.get("metrics") or {}).get("test") or {}
            rows.append(
                {
                    "condition": condition.label,
                    "id": entry.id,
                    "architecture": entry.architecture,
                    "input_size": "x".join(map(str, entry.input_size)),
                    "status": entry.status,
                    "experimental_reason": entry.experimental_reason,
                    # Why a model is kept off (e.g. DenseNet121: no ImageNet weights offline).
                    "inactive_reason": entry.raw.get("inactive_reason") or "",
                    "threshold": entry.threshold,
                    "test_auc": test.get("auc"),
                    "test_auc_ci": test.get("auc_ci95"),
                    "active": registry.active_models.get(code) == entry.id,
                    "population": (entry.raw.get("population") or {}).get("description", ""),
                    "check_pass_rate": _percent((entry.raw.get("applicability") or {}).get("test_pass_rate")),
                    "card_url": model_card_url(entry.id),
                    "site": site if site is not None and site.model_id == entry.id else None,
                    "may_move_threshold": entry.status == "validated"
                    and registry.active_models.get(code) == entry.id,
                }
            )
    return rows


def _percent(share: Any) -> str | None:
    return None if share is None else f"{float(share):.1%}"


def registry_view(request: HttpRequest) -> HttpResponse:
    """The catalogue; `?confirm=<id>` asks to confirm switching that model on; a POST with
    `confirmed` checks its artifact and switches it on (a POST without goes to the confirmation)."""
    here = reverse("admin-model-registry")
    if request.method == "POST":
        model_id = request.POST.get("model_id", "")
        if not can(request.user, Capability.MANAGE):
            messages.error(request, "You are not allowed to change the active models.")
            return HttpResponseRedirect(here)
        if not request.POST.get("confirmed"):
            return HttpResponseRedirect(f"{here}?{urlencode({'confirm': model_id})}")
        try:
            condition = registry_activate(
                model_id=model_id,
                actor=request.user,
                reason=request.POST.get("reason", ""),
                ip_address=request.META.get("REMOTE_ADDR"),
            )
        except ActivationRefused as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(f"{here}?{urlencode({'confirm': model_id})}")
        except RadTriageError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request, f"The active model for {condition} is now {model_id}; new analyses use it."
            )
        return HttpResponseRedirect(here)
    context: dict[str, Any] = {**admin.site.each_context(request), "title": "Model registry"}
    if "confirm" in request.GET:
        try:
            preview = registry_activation_preview(model_id=request.GET["confirm"])
        except RadTriageError as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(here)
        context.update(title=f"Activate {preview.model_id}?", preview=preview)
        return TemplateResponse(request, "admin/model_registry_confirm.html", context)
    problems = None
    registry_pull()  # what is active on every host, not this host's last copy
    try:
        registry = Registry.load(settings.RADTRIAGE_REGISTRY)
        rows = _rows(registry)
        missing = [c.label for code, c in CONDITIONS.items() if code not in registry.active_models]
    except RadTriageError as exc:
        rows, missing, problems = [], [], str(exc)
    context.update(
        rows=rows, missing=missing, problems=problems, registry_path=str(settings.RADTRIAGE_REGISTRY)
    )
    return TemplateResponse(request, "admin/model_registry.html", context)


def operating_point_view(request: HttpRequest, model_id: str) -> HttpResponse:
    """A site's operating point for the active model `model_id`: `?target=` previews the
    threshold and the figures to expect; a POST (action=set, with the reason) confirms it,
    action=clear goes back to the registry's threshold. Admins only."""
    registry_page = reverse("admin-model-registry")
    if not can(request.user, Capability.MANAGE):
        messages.error(request, "You are not allowed to change the models' thresholds.")
        return HttpResponseRedirect(registry_page)
    here = reverse("admin-operating-point", args=[model_id])
    if request.method == "POST":
        target = request.POST.get("target", "")
        try:
            if request.POST.get("action") == "clear":
                state = site_operating_point_state(model_id=model_id)
                site_operating_point_clear(
                    condition=state.site.condition if state.site else "",
                    actor=request.user,
                    reason=request.POST.get("reason", ""),
                    ip_address=request.META.get("REMOTE_ADDR"),
                )
                messages.success(request, f"{model_id} is back at the registry's threshold.")
                return HttpResponseRedirect(registry_page)
            point = site_operating_point_set(
                model_id=model_id,
                target_sensitivity=target,
                reason=request.POST.get("reason", ""),
                actor=request.user,
                ip_address=request.META.get("REMOTE_ADDR"),
            )
        except RadTriageError as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(f"{here}?{urlencode({'target': target})}" if target else here)
        messages.success(
            request,
            f"The site threshold of {model_id} is now {point.threshold:.4f} (target sensitivity "
            f"{point.target_sensitivity:.2f}); the next results use it.",
        )
        return HttpResponseRedirect(registry_page)
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": f"Operating point of {model_id}",
        "model_id": model_id,
        "presets": PRESET_TARGETS,
        "min_target": MIN_TARGET,
        "max_target": MAX_TARGET,
        "target": request.GET.get("target") or None,
    }
    try:
        context["state"] = site_operating_point_state(model_id=model_id)
    except RadTriageError as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(registry_page)
    if context["target"] is not None:
        try:
            context["preview"] = site_operating_point_preview(
                model_id=model_id, target_sensitivity=context["target"]
            )
        except RadTriageError as exc:
            context["refused"] = str(exc)
    return TemplateResponse(request, "admin/model_operating_point.html", context)
