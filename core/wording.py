"""The one wording of each warning a result can carry (CLI, API, pages and events share it)."""

from __future__ import annotations

PLACEHOLDER = "PLACEHOLDER MODEL: NO DIAGNOSTIC VALUE, must not be read as a finding."
NOT_APPLICABLE = "NOT APPLICABLE, never flagged."
EXPERIMENTAL = "EXPERIMENTAL MODEL, not used for triage."
EXPERIMENTAL_DEFAULT_REASON = "Not validated for clinical use."


def result_warnings(
    *,
    is_placeholder: bool,
    placeholder_reason: str | None,
    applicable: bool | None,
    not_applicable_reason: str | None,
    experimental: bool,
    experimental_reason: str | None,
) -> list[dict[str, str]]:
    """What must be shown beside a result, most serious first: [{"kind", "text"}]."""
    shown = []
    if is_placeholder:
        shown.append({"kind": "placeholder", "text": f"{PLACEHOLDER} {placeholder_reason or ''}".strip()})
    if applicable is False:
        shown.append(
            {"kind": "not_applicable", "text": f"{NOT_APPLICABLE} {not_applicable_reason or ''}".strip()}
        )
    if experimental:
        shown.append(
            {
                "kind": "experimental",
                "text": f"{EXPERIMENTAL} {experimental_reason or EXPERIMENTAL_DEFAULT_REASON}",
            }
        )
    return shown
