"""{{ value|percent }}: a share (0..1) as "12.3%", or "-" when there is none."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def percent(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return f"{float(value):.1%}"
