"""The deployment files describe what the issue promises (checked without a Docker daemon)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.web.fixtures import REPO


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_runs_every_service_with_a_health_check() -> None:
    services = _compose()["services"]

    assert {"postgres", "redis", "web", "worker", "worker-cpu", "beat"} <= set(services)
    assert all("healthcheck" in spec for spec in services.values())
    assert {"media", "models"} <= set(_compose()["volumes"])


def test_the_worker_reserves_nvidia_gpus_and_the_cpu_worker_is_a_profile() -> None:
    services = _compose()["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]

    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker"]["build"]["args"]["TF_BUILD"] == "gpu"
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert "--concurrency ${GPU_COUNT:-1}" in services["worker"]["command"]


@pytest.mark.parametrize("tool", ["docker-compose", "docker"])
def test_compose_config_is_valid(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    if tool == "docker" and subprocess.run([tool, "compose", "version"],
                                           capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    argv = [tool, "config", "-q"] if tool == "docker-compose" else [tool, "compose", "config",
                                                                     "-q"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
