"""The one way to switch a model on: a check of its artifact, a reason where one is due, an
audit row. The admin's registry page and the manage.py commands (train, train_boxed,
activate_model) all call registry_activate; core's Registry.set_active is only its last step.

A reason is due for a model not fit for triage (experimental, or its card says not to use it)
and for every activation from the command line, where no confirmation page stands in for it.
registry.json stays the source of truth (each worker's ModelManager re-reads it when it
changes), so a switch takes effect on the next analysis without restarting anything.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
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
from web.clinical.registry.operating_points import site_operating_point_clear_stale
from web.clinical.registry.shared import registry_changing, registry_pull

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


COMMAND_NEEDS_REASON = (
    'from the command line a reason is required (--reason "why this model goes live"); '
    "it is written to the audit log"
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


def registry_activation_preview(*, model_id: str, registry_path: Path | None = None) -> ActivationPreview:
    registry_pull(registry_path)
    registry = Registry.load(registry_path or settings.RADTRIAGE_REGISTRY)
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


def registry_activate(
    *,
    model_id: str,
    actor: Any,
    reason: str = "",
    ip_address: str | None = None,
    registry_path: Path | None = None,
    command: str = "",
) -> str:
    """Make `model_id` the active model of its condition; returns that condition's code.

    `actor` is the admin, or None for a manage.py command (then `command` names it and the
    audit row records the OS user). Refused (ActivationRefused, nothing changed) when a reason
    is due and none is given, or when its artifact fails a check (missing, checksum, does not
    load, no probability for a probe image)."""
    # Absolute: the artifact check runs in a child process from the repository's folder.
    path = Path(registry_path or settings.RADTRIAGE_REGISTRY).resolve()
    preview = registry_activation_preview(model_id=model_id, registry_path=path)
    reason = reason.strip()
    if actor is None and not reason:
        raise ActivationRefused(f"{model_id} was not activated: {COMMAND_NEEDS_REASON}")
    if preview.needs_reason and not reason:
        why = "its model card says not to use it" if preview.card_says_do_not_use else "it is experimental"
        raise ActivationRefused(
            f"{model_id} was not activated: {why}, so type the reason for switching it on."
        )
    steps = registry_artifact_check(model_id=model_id, registry_path=path)
    failed = next((s for s in steps if not s["ok"]), None)
    if failed is not None or len(steps) != len(CHECKS):
        detail = failed["detail"] if failed else "the check stopped early"
        raise ActivationRefused(
            f"{model_id} was not activated: check '{failed and failed['name']}' failed: {detail}"
        )
    # One change at a time, on the deployment's latest copy, published and audited together.
    with registry_changing(path):
        registry = Registry.load(path)
        entry = registry.entry(model_id)
        previous = registry.active_models.get(entry.condition)
        registry.set_active(model_id)
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
                **({"command": command, "os_user": _os_user()} if actor is None else {}),
            },
        )
        # A site threshold was chosen for the model that ran until now: it ends here.
        site_operating_point_clear_stale(
            registry=registry, condition=entry.condition, actor=actor, ip_address=ip_address
        )
    return entry.condition


def registry_activation_reason_check(*, reason: str | None) -> None:
    """A command that will activate what it trains says so before hours of training: refused
    at once when no reason is given (registry_activate's rule for the command line)."""
    if not (reason or "").strip():
        raise ActivationRefused(f"Not started: {COMMAND_NEEDS_REASON}")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers) and no LOGNAME/USER
        return f"uid {os.getuid()}"


def registry_artifact_check(*, model_id: str, registry_path: Path | None = None) -> list[dict[str, Any]]:
    """core.model_check in a child process (TensorFlow stays out of the web process)."""
    path = registry_path or settings.RADTRIAGE_REGISTRY
    try:
        done = subprocess.run(
            [sys.executable, "-m", "core.model_check", str(path), model_id],
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
