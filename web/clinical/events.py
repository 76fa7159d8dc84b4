"""Live events: analysis queued/started/finished/failed, pushed over the channel layer.

Payloads are built inside the transaction (so they describe exactly what is being committed)
and sent only after commit, to the study's group and to the worklist group. Sending is best
effort: a Redis hiccup must never fail an upload or a job (the database is the truth and the
pages re-read it on reconnect).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.urls import reverse

from web.clinical.models import Analysis

log = logging.getLogger(__name__)

WORKLIST_GROUP = "worklist"
EVENT_TYPE = "analysis.event"  # -> LiveConsumer.analysis_event


def study_group(study_id: int) -> str:
    return f"study-{study_id}"


def analysis_payload(analysis: Analysis) -> dict[str, Any]:
    """What a page needs to redraw one analysis without asking the server again."""
    image = analysis.image
    study = image.study
    has_heatmap = bool(analysis.heatmap)
    return {
        "id": analysis.pk,
        "image_id": image.pk,
        "study_id": study.pk,
        "study_status": study.status,
        "condition": analysis.condition,
        "state": analysis.state,
        "probability": analysis.probability,
        "threshold": analysis.threshold,
        "positive": analysis.positive,
        "is_finding": analysis.is_finding,
        "model_id": analysis.model_id,
        "model_sha256": analysis.model_sha256,
        "is_placeholder": analysis.is_placeholder,
        "placeholder_reason": analysis.placeholder_reason,
        "experimental": analysis.experimental,
        "experimental_reason": analysis.experimental_reason,
        "error_message": analysis.error_message,
        "attempts": analysis.attempts,
        "heatmap_url": (reverse("api:analysis-heatmap", args=[analysis.pk])
                        if has_heatmap else None),
        "finished_at": analysis.finished_at.isoformat() if analysis.finished_at else None,
    }


def analysis_event_publish(*, analysis: Analysis, event: str) -> None:
    """Queue `event` for sending after the current transaction commits."""
    message = {"type": EVENT_TYPE, "event": event, "analysis": analysis_payload(analysis)}
    groups = [study_group(analysis.image.study_id), WORKLIST_GROUP]
    transaction.on_commit(lambda: _group_send(groups=groups, message=message))


def _group_send(*, groups: list[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
    except Exception:  # noqa: BLE001 - see module docstring: events never fail the caller
        log.warning("Could not publish %s for analysis %s", message["event"],
                    message["analysis"]["id"], exc_info=True)
