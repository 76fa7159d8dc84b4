"""Model cards, readable from each result and from the admin: models/<id>/card.md rendered to
HTML, and the figures beside it (roc.png, confusion.png, reliability.png).

A card is found only through its registry entry (the id must be registered), and a figure only
by a plain file name in that card's own folder: no path from a request ever reaches the disk.
The markdown is rendered with raw HTML off (markdown-it-py, CommonMark plus tables), so a card
can hold headings, paragraphs, lists, tables, emphasis, code and its figures, never a script.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils.html import escape
from markdown_it import MarkdownIt

from core.conditions import CONDITIONS
from core.errors import RadTriageError
from core.registry import ModelEntry, Registry
from web.clinical.registry.operating_points import OperatingPointState, site_operating_point_state

CARD_FILE = "card.md"
# The figures every trained model has beside its card, in the order a reader wants them.
FIGURES = (
    ("roc.png", "ROC curve on the test split"),
    ("reliability.png", "Reliability (calibration) on the test split"),
    ("confusion.png", "Confusion matrix at the operating threshold"),
)
# A figure is named by a plain file name: letters, digits, '-', '_', then .png. Nothing else
# (no folder, no '..', no other kind of file) is ever served.
FIGURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.png")


class ModelUnknown(Exception):
    """No such model in the registry (or the registry cannot be read); str() says which."""


@dataclass(frozen=True)
class ModelCard:
    model_id: str
    condition: str  # the condition's label ("Pneumonia")
    status: str
    html: str  # the card rendered; "" when the card file is missing
    missing: str = ""  # why there is no card to show, in words; "" when there is one
    figures: list[tuple[str, str, str]] = field(default_factory=list)  # (name, caption, url)
    # The threshold results are judged at here: the registry's, or the site's operating point.
    operating: OperatingPointState | None = None


def model_card_read(*, model_id: str) -> ModelCard:
    """The card of a registered model, rendered. ModelUnknown for an unregistered id."""
    entry, folder = _card_folder(model_id)
    label = CONDITIONS[entry.condition].label if entry.condition in CONDITIONS else entry.condition
    figures = [
        (name, caption, _figure_url(model_id, name)) for name, caption in FIGURES if (folder / name).is_file()
    ]
    operating = site_operating_point_state(model_id=model_id)
    card = folder / CARD_FILE
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ModelCard(
            model_id=model_id,
            condition=label,
            status=entry.status,
            html="",
            missing=f"The model card of {model_id} is missing: no readable {CARD_FILE} in its folder.",
            figures=figures,
            operating=operating,
        )
    html = card_markdown_render(text, figure_url=lambda name: _figure_if_present(folder, model_id, name))
    return ModelCard(
        model_id=model_id,
        condition=label,
        status=entry.status,
        html=html,
        figures=figures,
        operating=operating,
    )


def model_card_figure(*, model_id: str, name: str) -> Path:
    """The file of one figure beside a registered model's card. ModelUnknown for an
    unregistered id; FileNotFoundError for a name that is not a figure of that folder."""
    _, folder = _card_folder(model_id)
    if not FIGURE_NAME.fullmatch(name):
        raise FileNotFoundError(name)
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or not path.is_file():
        raise FileNotFoundError(name)
    return path


def model_card_url(model_id: str) -> str:
    """The card page's address, "" for an id no address can carry (a placeholder's)."""
    if not model_id or model_id.startswith("placeholder:"):
        return ""
    try:
        return reverse("ui:model-card", args=[model_id])
    except NoReverseMatch:
        return ""


def _card_folder(model_id: str) -> tuple[ModelEntry, Path]:
    try:
        registry = Registry.load(settings.RADTRIAGE_REGISTRY)
    except RadTriageError as exc:
        raise ModelUnknown(f"The model registry cannot be read: {exc}") from None
    entry = registry.models.get(model_id)
    if entry is None:
        raise ModelUnknown(f"There is no model '{model_id}' in the registry.")
    root = registry.path.parent.resolve()
    card = Path(str(entry.raw.get("card") or f"models/{model_id}/{CARD_FILE}"))
    folder = (card if card.is_absolute() else root / card).parent.resolve()
    if not folder.is_relative_to(root):  # a registry entry pointing outside its own tree
        raise ModelUnknown(f"The card of model '{model_id}' is outside the registry's folder.")
    return entry, folder


def _figure_url(model_id: str, name: str) -> str:
    return reverse("ui:model-card-figure", args=[model_id, name])


def _figure_if_present(folder: Path, model_id: str, name: str) -> str | None:
    if FIGURE_NAME.fullmatch(name) and (folder / name).is_file():
        return _figure_url(model_id, name)
    return None


def card_markdown_render(text: str, *, figure_url: Callable[[str], str | None]) -> str:
    """Markdown -> HTML with raw HTML escaped, never passed through. An image is shown only
    when it names a figure beside the card (figure_url gives its address, None otherwise);
    any other image becomes its alt text."""
    md = MarkdownIt("commonmark", {"html": False, "typographer": False}).enable("table")

    def image(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        alt = escape(token.content or "")
        src = str(token.attrGet("src") or "")
        url = figure_url(src) if FIGURE_NAME.fullmatch(src) else None
        if url is None:
            return f'<span class="missing-figure">[{alt or escape(src)}]</span>'
        return f'<img src="{escape(url)}" alt="{alt}" loading="lazy">'

    md.add_render_rule("image", image)
    return md.render(text)
