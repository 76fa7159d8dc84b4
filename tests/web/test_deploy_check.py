"""Production settings are secure by default: with only the required environment variables,
Django's deployment check is clean, plain HTTP is refused (redirected), cookies are secure, and
the API schema validates. RADTRIAGE_HTTPS=0 relaxes it, visibly."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

REPO = Path(__file__).resolve().parents[2]


def production_env(**extra: str) -> dict[str, str]:
    """Exactly the production variables (plus PATH/HOME to run Python): nothing inherited."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "radtriage.hospital.example",
        "REDIS_URL": os.environ["REDIS_URL"],
        # Production also refuses to start without it (SQLite is for a demo only).
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def test_the_deployment_check_is_clean_with_only_the_required_settings() -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_plain_http_must_be_asked_for_and_the_check_then_says_what_it_costs() -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(RADTRIAGE_HTTPS="0"))

    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr, warning


def test_the_api_schema_validates_without_warnings(tmp_path: Path) -> None:
    schema = tmp_path / "schema.yml"
    env = production_env()
    result = manage("spectacular", "--validate", "--fail-on-warn", "--file", str(schema), env=env)

    assert result.returncode == 0, result.stderr[-3000:]
    text = schema.read_text()
    # Each choice set has a name of its own, not a hash-suffixed one.
    assert "StudyStatusEnum" in text and "BulkUploadStatusEnum" in text
    assert "Status462Enum" not in text and "Sex521Enum" not in text


REQUESTS = """
import json, django
django.setup()
from django.test import Client
c = Client()
plain = c.get("/login/", HTTP_HOST="radtriage.hospital.example")
health = c.get("/healthz/", HTTP_HOST="radtriage.hospital.example")
tls = c.get("/login/", HTTP_HOST="radtriage.hospital.example", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({
    "plain": [plain.status_code, plain.get("Location", "")],
    "health": health.status_code,
    "tls": tls.status_code,
    "hsts": tls.get("Strict-Transport-Security", ""),
    "csrf_secure": bool(tls.cookies["csrftoken"]["secure"]) if "csrftoken" in tls.cookies else None,
}))
"""


def test_production_redirects_plain_http_and_marks_cookies_secure() -> None:
    env = production_env(DJANGO_SETTINGS_MODULE="web.settings")
    result = subprocess.run(
        [sys.executable, "-c", REQUESTS], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    assert seen["plain"] == [301, "https://radtriage.hospital.example/login/"]
    assert seen["health"] != 301  # the container's own probe over plain HTTP still works
    assert seen["tls"] == 200
    assert "max-age=31536000" in seen["hsts"] and "includeSubDomains" in seen["hsts"]
    assert seen["csrf_secure"] is True


@pytest.mark.django_db
def test_a_login_lasts_one_shift(django_user_model, settings) -> None:
    assert settings.SESSION_COOKIE_AGE == 8 * 3600
    django_user_model.objects.create_user("dr.shift", password="a-long-pass-phrase-1")
    client = Client()
    response = client.post("/login/", {"username": "dr.shift", "password": "a-long-pass-phrase-1"})

    assert response.status_code == 302
    assert response.cookies["sessionid"]["max-age"] == 8 * 3600


@pytest.mark.django_db
def test_the_admin_refuses_a_weak_password(admin_client, django_user_model) -> None:
    response = admin_client.post(
        "/admin/auth/user/add/",
        {"username": "tech.weak", "password1": "12345678", "password2": "12345678"}
        | {"usable_password": "true"},
    )

    assert response.status_code == 200  # the form again, with the reasons
    page = response.content.decode()
    assert "This password is too short" in page and "This password is entirely numeric" in page
    assert not django_user_model.objects.filter(username="tech.weak").exists()
