"""The monitoring page in a real browser (Debian's Chromium driven by Playwright) against
uvicorn: an admin sees each model's charts drawn as SVG (flag rate with its band, agreement,
not-applicable rate, scores against the reference) at 1440x900 and 1920x1080. Screenshots go to
var/test-output/monitoring (or $RADTRIAGE_TEST_OUTPUT/monitoring)."""

from __future__ import annotations

import json
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
from tests.web.test_monitoring import UNIFORM, _scored_results, result

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SIZES = ((1440, 900), (1920, 1080))


@pytest.fixture()
def registry_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "pneu-a"
    folder.mkdir(parents=True)
    document = {"model_id": "pneu-a", "sha256": "a" * 64, "computed_at": "2025-01-01T00:00:00Z"}
    document["splits"] = {"val": {"scores": UNIFORM, "labels": [0] * len(UNIFORM)}}
    (folder / "scores.json").write_text(json.dumps(document))
    return tmp_path


@pytest.fixture()
def admin(django_user_model, registry_folder, settings) -> Any:
    # Made before the browser starts: Playwright's loop makes the ORM refuse to run after.
    settings.RADTRIAGE_REGISTRY = registry_folder / "registry.json"
    _scored_results(150, [0.02, 0.98])  # drifts: the banner and a red panel
    for _ in range(5):
        result("not_applicable", days_ago=9)
    return with_role(web_login_user(django_user_model, "mon.browser", "pw-monitor-123"), "admin")


@pytest.fixture()
def server(admin, registry_folder, service_logs) -> Iterator[str]:
    port = free_port()
    env = service_env(RADTRIAGE_REGISTRY=str(registry_folder / "registry.json"))
    web = Service("uvicorn-monitoring", uvicorn_argv(port), env, service_logs)
    web.start(ready_text="Uvicorn running on", timeout=60)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def test_an_admin_sees_each_models_charts_as_svg_at_two_sizes(server, chromium) -> None:
    from playwright.sync_api import expect

    for width, height in SIZES:
        page = new_page(chromium, width=width, height=height)
        log_in(page, server, "mon.browser", "pw-monitor-123", next_path="/monitoring/")

        panel = page.locator("section.monitor-panel").first
        expect(panel).to_be_visible()
        expect(panel.locator("h2")).to_contain_text("pneu-a")
        expect(panel.locator("p.reference")).to_contain_text("validation scores")
        charts = panel.locator("svg.chart")
        expect(charts).to_have_count(4)
        for i in range(4):
            box = charts.nth(i).bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 80
        assert panel.locator("svg.chart circle.point").count() > 0
        assert panel.locator("svg.chart rect.band").count() > 0
        assert panel.locator("svg.chart rect.bar").count() == 10
        expect(page.locator("#drift-banner")).to_contain_text("pneu-a")
        # The charts sit side by side at these widths: the first two share a row.
        first, second = charts.nth(0).bounding_box(), charts.nth(1).bounding_box()
        assert first and second and abs(first["y"] - second["y"]) < 2
        shot = output_folder("monitoring") / f"monitoring-{width}x{height}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"monitoring screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        page.context.close()
