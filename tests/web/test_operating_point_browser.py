"""A site's operating point in a real browser (Debian's Chromium driven by Playwright, 1440x900)
against uvicorn on a copy of the tiny registry with known validation scores: the admin picks a
target, reads the preview, types a reason and confirms; the registry page then shows the site's
threshold. Screenshots in var/test-output/operating-points (or $RADTRIAGE_TEST_OUTPUT/...)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.output import output_folder
from tests.web.fixtures import (
    Service,
    free_port,
    log_in,
    new_page,
    service_env,
    uvicorn_argv,
    web_login_user,
    with_role,
)
from tests.web.test_operating_points import MODEL, write_scores

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def isolated_media(settings):
    """The web server is a subprocess: keep the session's MEDIA_ROOT."""
    return settings.MEDIA_ROOT


@pytest.fixture()
def admin_person(django_user_model) -> Any:
    # Made before the browser starts: Playwright's loop makes the ORM refuse to run after.
    user = with_role(web_login_user(django_user_model, "site.admin", "pw-admin-123"), "admin")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    return user


@pytest.fixture()
def server_url(tiny_registry: Path, tmp_path: Path, service_logs: Path) -> Iterator[str]:
    """uvicorn on a private copy of the tiny registry, with a scores.json for its pneumonia model."""
    folder = shutil.copytree(tiny_registry.parent, tmp_path / "tiny")
    write_scores(folder / "registry.json")
    port = free_port()
    env = service_env(RADTRIAGE_REGISTRY=str(folder / "registry.json"))
    server = Service("uvicorn", uvicorn_argv(port), env, service_logs)
    server.start(ready_text="Uvicorn running on", timeout=60)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def page(chromium) -> Any:
    return new_page(chromium, width=1440, height=900)


def test_an_admin_previews_and_confirms_a_site_operating_point(server_url, admin_person, page) -> None:
    from playwright.sync_api import expect

    shots = output_folder("operating-points")
    log_in(page, server_url, "site.admin", "pw-admin-123", next_path="/admin/model-registry/", admin=True)
    row = page.locator(f'#model-registry tr[data-model-id="{MODEL}"]')
    expect(row.locator("td.threshold")).to_contain_text("0.5000")
    row.locator("a.operating-point-link").click()

    page.select_option("#target-preset", "0.9")
    expect(page.locator("#target")).to_have_value("0.9")
    page.click("#operating-point-target button[type=submit]")
    preview = page.locator("#operating-point-preview")
    expect(preview.locator("h2")).to_have_text("At a target sensitivity of 0.90: threshold 0.5500")
    expect(preview.locator("tr.figure-test-sensitivity")).to_contain_text("0.800")
    expect(preview.locator("tr.figure-test-sensitivity")).to_contain_text("0.284–0.995")
    expect(preview.locator("tr.figure-test-specificity")).to_contain_text("0.900")
    expect(preview.locator("tr.figure-test-flag-rate")).to_contain_text("5 of 15 test images flagged")
    expect(preview.locator("tr.figure-val-sensitivity")).to_contain_text("0.900")
    page.screenshot(path=str(shots / "preview-1440x900.png"), full_page=True)

    # Confirming without a reason is stopped by the form; with one it goes through.
    page.click("#operating-point-confirm")
    expect(page.locator("#operating-point-preview")).to_be_visible()
    page.fill("#reason", "Emergency department: fewer missed pneumonias")
    page.click("#operating-point-confirm")
    expect(page.locator("ul.messagelist li.success")).to_contain_text(
        f"The site threshold of {MODEL} is now 0.5500 (target sensitivity 0.90)"
    )
    row = page.locator(f'#model-registry tr[data-model-id="{MODEL}"]')
    expect(row.locator("strong.site-threshold")).to_have_text("0.5500")
    expect(row.locator("td.threshold")).to_contain_text("(registry: 0.5000)")
    page.screenshot(path=str(shots / "confirmed-1440x900.png"), full_page=True)
    assert (shots / "preview-1440x900.png").stat().st_size > 10_000
