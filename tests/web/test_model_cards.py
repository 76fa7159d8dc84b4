"""Model cards read from each result and from the admin: the card's markdown rendered safely,
its figures served only from the model's own folder, a clear page for an unknown model or a
missing card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.test import Client

from tests.web.fixtures import dicom_bytes, upload, with_role
from web.clinical.models import Analysis
from web.clinical.registry.cards import ModelUnknown, card_markdown_render, model_card_figure

REPO = Path(__file__).resolve().parents[2]
MODEL = "fracture-mobilenetv2-384-boxed-v2"  # a real model of models/, with its card and figures
CARD = f"/models/{MODEL}/card/"


@pytest.fixture(autouse=True)
def shipped_registry(settings) -> Path:
    settings.RADTRIAGE_REGISTRY = REPO / "registry.json"
    return settings.RADTRIAGE_REGISTRY


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_radiologist_reads_a_model_card_with_its_headings_table_and_figures(radiologist) -> None:
    client = _client(radiologist)
    page = client.get(CARD)
    html = page.content.decode()

    assert page.status_code == 200
    assert f"<h1>Model card: {MODEL}</h1>" in html
    assert "<h2>Intended use</h2>" in html and "<h2>Limitations</h2>" in html
    assert "<table>" in html and "<th>AUC</th>" in html  # the performance table, as a table
    assert "<strong>fracture</strong>" in html and "<code>" in html and "<li>" in html
    for name in ("roc.png", "reliability.png", "confusion.png"):
        assert f'src="{CARD}{name}"' in html
        figure = client.get(f"{CARD}{name}")
        assert figure.status_code == 200 and figure["Content-Type"] == "image/png"
        assert b"".join(figure.streaming_content).startswith(b"\x89PNG")


def test_every_role_that_sees_results_may_read_a_card_and_nobody_else(db, django_user_model) -> None:
    technologist = with_role(django_user_model.objects.create_user("tech.t"), "technologist")
    outsider = django_user_model.objects.create_user("someone")

    assert _client(technologist).get(CARD).status_code == 200
    assert _client(outsider).get(CARD).status_code == 403
    anonymous = Client().get(CARD)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")
    assert Client().get(f"{CARD}roc.png").status_code == 302


@pytest.mark.parametrize(
    "path",
    [
        f"{CARD}..%2Fcard.md",
        f"{CARD}..%2F..%2Fregistry.json",
        f"{CARD}%2E%2E%2Fpneumonia-mobilenetv2-224-border-v1%2Froc.png",
        f"{CARD}model.keras",
        f"{CARD}card.md",
        f"{CARD}population.npz",
        f"{CARD}missing.png",
        "/models/..%2F..%2Fweb/card/settings.py",
        "/models/%2E%2E/card/registry.json",
    ],
)
def test_nothing_but_a_figure_beside_the_card_is_ever_served(radiologist, path: str) -> None:
    assert _client(radiologist).get(path).status_code == 404


def test_a_figure_name_that_leaves_the_folder_is_refused_by_the_service(db) -> None:
    for name in ("../pneumonia-mobilenetv2-224-border-v1/roc.png", "/etc/passwd", "roc.png/..", "x.PNG.sh"):
        with pytest.raises(FileNotFoundError):
            model_card_figure(model_id=MODEL, name=name)
    with pytest.raises(ModelUnknown):
        model_card_figure(model_id="../models", name="roc.png")
    assert model_card_figure(model_id=MODEL, name="roc.png") == REPO / "models" / MODEL / "roc.png"


def test_an_unknown_model_is_a_clear_404_page(radiologist) -> None:
    page = _client(radiologist).get("/models/no-such-model-v9/card/")

    assert page.status_code == 404
    assert "There is no model &#x27;no-such-model-v9&#x27; in the registry." in page.content.decode()


def test_a_registered_model_without_its_card_says_the_card_is_missing(
    radiologist, settings, tmp_path
) -> None:
    entry = {
        "id": "nocard-v1",
        "condition": "pneumonia",
        "architecture": "mobilenetv2",
        "input_size": [64, 64],
        "class_labels": ["normal", "pneumonia"],
        "threshold": 0.5,
        "artifact": "models/nocard-v1/model.keras",
    }
    (tmp_path / "registry.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    settings.RADTRIAGE_REGISTRY = tmp_path / "registry.json"

    page = _client(radiologist).get("/models/nocard-v1/card/")

    assert page.status_code == 200
    assert "Model card missing" in page.content.decode()
    assert "The model card of nocard-v1 is missing" in page.content.decode()


def test_the_markdown_is_rendered_without_raw_html_scripts_or_foreign_images() -> None:
    html = card_markdown_render(
        "# Card\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n"
        "[click](javascript:alert(3))\n\n![ROC](roc.png) ![far](http://example.com/x.png) "
        "![up](../secret.png)\n\n| a | b |\n|---|---|\n| *1* | `2` |\n",
        figure_url=lambda name: f"/fig/{name}" if name == "roc.png" else None,
    )

    assert "<h1>Card</h1>" in html and "<td><em>1</em></td>" in html and "<code>2</code>" in html
    assert "<script" not in html and "<img src=x" not in html and "&lt;script&gt;" in html
    assert "<a " not in html  # the javascript: link stays text
    assert '<img src="/fig/roc.png" alt="ROC"' in html
    assert "example.com" not in html and "secret.png" not in html
    assert html.count("<img") == 1


def test_a_result_card_and_the_admin_registry_link_to_the_model_card(api, radiologist, admin_client) -> None:
    body = upload(api, dicom_bytes(patient_id="MRN-CARD"), conditions="pneumonia").json()
    analysis = Analysis.objects.get(pk=body["image"]["analyses"][0]["id"])
    analysis.state, analysis.probability, analysis.threshold = "succeeded", 0.2, 0.5
    analysis.positive, analysis.model_id = False, "pneumonia-mobilenetv2-224-border-v1"
    analysis.save()

    study = _client(radiologist).get(f"/studies/{body['study']['id']}/").content.decode()
    registry = admin_client.get("/admin/model-registry/").content.decode()

    assert 'class="model-card-link" href="/models/pneumonia-mobilenetv2-224-border-v1/card/"' in study
    assert f'href="/models/{MODEL}/card/"' in registry


def test_a_placeholder_result_has_no_model_card_link(api, radiologist) -> None:
    body = upload(api, dicom_bytes(patient_id="MRN-PHC"), conditions="cardiomegaly").json()
    analysis = Analysis.objects.get(pk=body["image"]["analyses"][0]["id"])
    analysis.state, analysis.is_placeholder, analysis.model_id = "succeeded", True, "placeholder:cardiomegaly"
    analysis.save()

    card = _client(radiologist).get(f"/analyses/{analysis.pk}/card/").content.decode()

    assert "model-card-link" not in card
