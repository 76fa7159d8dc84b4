"""What the study page shows each user: their capabilities, their verdict on a result."""

from __future__ import annotations

from typing import Any

from django import template

from web.access import Capability, can
from web.clinical.models import Analysis, Annotation
from web.clinical.registry.queries import condition_models
from web.clinical.review.annotations import analysis_accepts_verdict

register = template.Library()


@register.filter(name="can")
def can_filter(user: Any, capability: str) -> bool:
    """{% if user|can:"review" %}: the page offers only what the API would allow."""
    return can(user, Capability(capability))


@register.simple_tag
def review_of(analysis: Analysis, user: Any) -> dict[str, Any]:
    """{% review_of a user as review %}: the team's verdicts on a result, the user's own, and
    whether it takes a verdict or a re-run from this user."""
    verdicts = list(analysis.annotations.exclude(verdict="").select_related("author"))
    reviewer = can(user, Capability.REVIEW)
    return {
        "verdicts": verdicts,
        "mine": next((v for v in verdicts if v.author_id == user.pk), None),
        "can_judge": reviewer and analysis_accepts_verdict(analysis),
        "models": condition_models(condition=analysis.condition) if reviewer else [],
        "reasons": Annotation.DisagreeReason.choices,
    }
