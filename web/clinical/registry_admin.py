"""Django admin page for the model registry: see every model, switch the active one.

registry.json stays the source of truth (the ModelManager in each worker re-reads it when it
changes), so switching here takes effect on the next analysis without restarting anything.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from core.conditions import CONDITIONS
from core.errors import RadTriageError
from core.registry import Registry
from web.access import Capability, can
from web.clinical.services import registry_activate


def _rows(registry: Registry) -> list[dict[str, Any]]:
    rows = []
    for code, condition in CONDITIONS.items():
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
                    "threshold": entry.threshold,
                    "test_auc": test.get("auc"),
                    "test_auc_ci": test.get("auc_ci95"),
                    "active": registry.active_models.get(code) == entry.id,
                    "population": (entry.raw.get("population") or {}).get("description", ""),
                    "check_pass_rate": _percent((entry.raw.get("applicability") or {}).get("test_pass_rate")),
                }
            )
    return rows


def _percent(share: Any) -> str | None:
    return None if share is None else f"{float(share):.1%}"


def registry_view(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if not can(request.user, Capability.MANAGE):
            messages.error(request, "You are not allowed to change the active models.")
        else:
            try:
                condition = registry_activate(
                    model_id=request.POST.get("model_id", ""),
                    actor=request.user,
                    ip_address=request.META.get("REMOTE_ADDR"),
                )
                messages.success(
                    request,
                    f"The active model for {condition} is now "
                    f"{request.POST['model_id']}; new analyses use it.",
                )
            except RadTriageError as exc:
                messages.error(request, str(exc))
        return HttpResponseRedirect(reverse("admin-model-registry"))
    problems = None
    try:
        registry = Registry.load(settings.RADTRIAGE_REGISTRY)
        rows = _rows(registry)
        missing = [c.label for code, c in CONDITIONS.items() if code not in registry.active_models]
    except RadTriageError as exc:
        rows, missing, problems = [], [], str(exc)
    context = {
        **admin.site.each_context(request),
        "title": "Model registry",
        "rows": rows,
        "missing": missing,
        "problems": problems,
        "registry_path": str(settings.RADTRIAGE_REGISTRY),
    }
    return TemplateResponse(request, "admin/model_registry.html", context)
