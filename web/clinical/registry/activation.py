"""The model registry as admins change it: switching the active model of a condition, after a
confirmation, a check of its artifact and (for a model not fit for triage) a typed reason; audited.

registry.json stays the source of truth (each worker's ModelManager re-reads it when it
changes), so a switch takes effect on the next analysis without restarting anything.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from core.errors import RadTriageError
from core.model_check import CHECKS
from core.registry import ModelEntry, Registry
from web.clinical.audit.records import audit_record

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
# Shown with the confirmation, in this order, when the model's test metrics have them.
TEST_FIGURES = (
    ("auc", "AUC"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("accuracy", "Accuracy"),
)


class ActivationRefused(RadTriageError):
    """The model was not switched on; the message says why."""


@dataclass(frozen=True)
class ActivationPreview:
    """What an admin confirms before switching a model on."""

    model_id: str
    condition: str
    status: str
    experimental_reason: str | None
    card_says_do_not_use: bool
    needs_reason: bool
    active_now: str | None
    test_figures: list[dict[str, Any]]  # label, value, ci95
    test_n: dict[str, Any]  # n, n_positive, n_negative (when known)
    metrics_source: str  # where the figures come from


def registry_activation_preview(*, model_id: str) -> ActivationPreview:
    registry = Registry.load(settings.RADTRIAGE_REGISTRY)
    entry = registry.entry(model_id)
    test, source = _test_metrics(registry, entry)
    do_not_use = _card_says_do_not_use(registry, entry)
    return ActivationPreview(
        model_id=entry.id,
        condition=entry.condition,
        status=entry.status,
        experimental_reason=entry.experimental_reason,
        card_says_do_not_use=do_not_use,
        needs_reason=entry.is_experimental or do_not_use,
        active_now=registry.active_models.get(entry.condition),
        test_figures=[
            {"label": label, "value": test[key], "ci95": test.get(f"{key}_ci95")}
            for key, label in TEST_FIGURES
            if test.get(key) is not None
        ],
        test_n={k: test[k] for k in ("n", "n_positive", "n_negative") if k in test},
        metrics_source=source,
    )


def registry_activate(*, model_id: str, actor: Any, reason: str = "", ip_address: str | None = None) -> str:
    """Make `model_id` the active model of its condition; returns that condition's code.

    Refused (ActivationRefused, nothing changed) when the model needs a reason and none is
    given, or when its artifact fails a check (missing, checksum, does not load, no probability
    for a probe image)."""
    preview = registry_activation_preview(model_id=model_id)
    reason = reason.strip()
    if preview.needs_reason and not reason:
        why = "its model card says not to use it" if preview.card_says_do_not_use else "it is experimental"
        raise ActivationRefused(
            f"{model_id} was not activated: {why}, so type the reason for switching it on."
        )
    steps = registry_artifact_check(model_id=model_id)
    failed = next((s for s in steps if not s["ok"]), None)
    if failed is not None or len(steps) != len(CHECKS):
        detail = failed["detail"] if failed else "the check stopped early"
        raise ActivationRefused(
            f"{model_id} was not activated: check '{failed and failed['name']}' failed: {detail}"
        )
    registry = Registry.load(settings.RADTRIAGE_REGISTRY)
    entry = registry.entry(model_id)
    previous = registry.active_models.get(entry.condition)
    registry.activate(model_id)
    registry.save()
    audit_record(
        actor=actor,
        action="model.activate",
        ip_address=ip_address,
        detail={
            "condition": entry.condition,
            "model_id": model_id,
            "previous": previous,
            "status": entry.status,
            "reason": reason,
            "checks": {s["name"]: s["detail"] for s in steps},
        },
    )
    return entry.condition


def registry_artifact_check(*, model_id: str) -> list[dict[str, Any]]:
    """core.model_check in a child process (TensorFlow stays out of the web process)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "core.model_check", str(settings.RADTRIAGE_REGISTRY), model_id],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=settings.RADTRIAGE_MODEL_CHECK_TIMEOUT,
            env=_child_env(),
        )
    except subprocess.TimeoutExpired:
        return [{"name": "loads", "ok": False, "detail": "the check took too long and was stopped"}]
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        log.error(
            "Model check of %s gave no result (exit %s): %s", model_id, done.returncode, done.stderr[-2000:]
        )
        return [{"name": "loads", "ok": False, "detail": f"the check crashed (exit {done.returncode})"}]


def _child_env() -> dict[str, str]:
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _test_metrics(registry: Registry, entry: ModelEntry) -> tuple[dict[str, Any], str]:
    test = (entry.raw.get("metrics") or {}).get("test")
    if test:
        return test, "registry.json"
    path = registry.artifact_path(entry).parent / "metrics.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}, ""
    return (document.get("metrics") or {}).get("test") or {}, str(path.name)


def _card_says_do_not_use(registry: Registry, entry: ModelEntry) -> bool:
    card = entry.raw.get("card")
    if not card:
        return False
    path = Path(card) if Path(card).is_absolute() else registry.path.parent / card
    try:
        return "do not use" in path.read_text(encoding="utf-8").lower()
    except OSError:
        return False
