"""The deployment files describe what the issue promises (checked without a Docker daemon)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

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
    if tool == "docker" and subprocess.run([tool, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    argv = [tool, "config", "-q"] if tool == "docker-compose" else [tool, "compose", "config", "-q"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_container_reads_one_shared_registry_kept_in_step_with_the_image() -> None:
    # The web container (where admins switch models) and the workers must read the same file.
    compose = _compose()
    registry = compose["x-app-env"]["RADTRIAGE_REGISTRY"]
    assert registry.startswith("/app/var/registry/") and "registry" in compose["volumes"]
    for name in ("web", "worker", "worker-cpu", "beat"):
        spec = compose["services"][name]
        assert "registry:/app/var/registry" in spec["volumes"], name
        assert spec["environment"]["RADTRIAGE_REGISTRY"] == registry, name
    for name in ("web", "worker", "worker-cpu"):
        command = compose["services"][name]["command"]
        assert command.index("manage.py registry_sync") < command.index(
            "uvicorn" if name == "web" else "celery"
        ), name


def test_the_registry_sync_command_creates_the_deployment_registry(tmp_path) -> None:
    import os
    import sys

    target = tmp_path / "registry.json"
    env = {**os.environ, "RADTRIAGE_REGISTRY": str(target)}
    first = subprocess.run(
        [sys.executable, "manage.py", "registry_sync"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    shipped = json.loads((REPO / "registry.json").read_text())["active_models"]["pneumonia"]
    assert f"pneumonia: active model {shipped}" in first.stdout
    shipped = json.loads((REPO / "registry.json").read_text())
    deployed = json.loads(target.read_text())
    assert deployed["active_models"] == shipped["active_models"]
    assert all(Path(m["artifact"]).is_absolute() and Path(m["artifact"]).exists() for m in deployed["models"])
    again = subprocess.run(
        [sys.executable, "manage.py", "registry_sync"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "is up to date" in again.stdout


def test_the_base_image_is_a_build_argument_defaulting_to_the_official_python_image() -> None:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))

    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in lines[:first_from]
    assert lines[first_from] == "FROM ${BASE_IMAGE}"


def test_the_ca_bundle_reaches_pip_only_as_a_build_secret() -> None:
    # A bundle copied into a layer would ship to every user of the image.
    text = (REPO / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]

    assert not any(".crt" in line or ".pem" in line for line in instructions)
    assert "RUN --mount=type=secret,id=ca_bundle" in text
    assert "PIP_CERT=/run/secrets/ca_bundle" in text
    assert not any(line.startswith(("ENV", "ARG")) and "PIP_CERT" in line for line in instructions)


@pytest.mark.parametrize("tool", ["docker-compose", "docker"])
def test_the_smoke_override_runs_the_locally_built_images(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    if tool == "docker" and subprocess.run([tool, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    files = ["-f", "docker-compose.yml", "-f", "docker/compose.smoke.yml", "--profile", "cpu"]
    argv = [tool, *files, "config"] if tool == "docker-compose" else [tool, "compose", *files, "config"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["postgres"]["image"] == "radtriage-smoke/postgres:15"
    assert services["redis"]["image"] == "radtriage-smoke/redis:7"
    assert {services[name]["image"] for name in ("web", "worker-cpu", "beat")} == {"radtriage-smoke/app:cpu"}
    assert services["worker"]["image"] == "radtriage-smoke/app:gpu"


def test_every_shell_command_is_one_line_so_no_option_is_dropped() -> None:
    # In a folded YAML scalar a more-indented line keeps its newline; inside `sh -c` that newline
    # ends the command, so `-n cpu@%h` (the health check's node name) was silently never passed.
    for name, spec in _compose()["services"].items():
        command = spec.get("command")
        if isinstance(command, str):
            assert "\n" not in command, name
