"""Schemathesis against /api/schema/, in-process over WSGI, as a radiologist with a token:
generated requests (bounded) never get a 5xx, every response matches the schema (its 409s
included), a request the schema calls invalid is refused, one it calls valid is accepted unless
the operation's acceptance rests on what a schema cannot say (BUSINESS_RULES), and no error
message names a server path. Real PostgreSQL; the jobs an upload sends go to a broker no
worker reads."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.web.fixtures import dicom_bytes, upload, with_role

SERVER_TEXT = ("/tmp", "/work", "/home", "site-packages", "Traceback", "object at 0x")
# Operations a schema-valid request may rightly be refused by (400), and why. Everything else
# the schema calls valid must be answered 2xx, or 401/403/404/409 (positive_data_acceptance).
BUSINESS_RULES = {
    "POST /api/uploads/": "the file must be a readable radiograph of a known patient",
    "POST /api/uploads/batch/": "each file must be a readable radiograph",
    "POST /api/uploads/recognise/": "the file must be a readable radiograph",
    "POST /api/batches/": "the archive must be a readable .zip of radiographs",
    "POST /api/annotations/": "the image and analysis named in the body must exist",
    "POST /api/auth/token/": "the username and password must be an account's",
    "POST /api/images/{id}/analyses/": "each condition must be known and fit the image's body part",
    "POST /api/exports/deidentified/": "the studies named in the body must exist",
    "POST /api/studies/{id}/reports/": "a report template named in the body must exist and be active",
}


@pytest.fixture()
def token(transactional_db: Any, django_user_model: Any, private_redis: Any, broker_switch: Any) -> str:
    # Committed: each request runs as a real one, closing its database connection after.
    from rest_framework.authtoken.models import Token

    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")  # a broker no worker reads
    from rest_framework.test import APIClient

    user = with_role(django_user_model.objects.create_user("dr.schema", password="pw-schema"), "radiologist")
    client = APIClient()
    client.force_login(user)
    # Something to find: a patient, a study, an image and its queued analyses (ids 1.. exist).
    assert upload(client, dicom_bytes(patient_id="MRN-SCHEMA")).status_code == 201
    return Token.objects.create(user=user).key


# Loaded at collection: the schema view reads no database. (schemathesis' from_fixture fails
# under pytest 9: "'Function' object has no attribute '_nodeid'".)
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_generated_requests_as_its_schema_says(case: Any, token: str) -> None:
    business = case.operation.label in BUSINESS_RULES
    response = case.call_and_validate(
        headers={"Authorization": f"Token {token}"},
        excluded_checks=[positive_data_acceptance] if business else [],
    )

    assert response.status_code < 500
    if response.status_code >= 400 and "json" in response.headers.get("Content-Type", [""])[0]:
        text = response.text
        assert not any(t in text for t in SERVER_TEXT), text[:500]
