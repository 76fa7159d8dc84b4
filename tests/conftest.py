"""Test-wide environment: real PostgreSQL and Redis on 127.0.0.1, isolated from other users.

Set before Django's settings are read (pytest-django sets Django up after conftests load).
Override any of these from the environment (e.g. .ci/run exports DATABASE_URL).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
# A Redis database index of its own, and a namespace (queue keys, channel-layer prefix) per
# test session, so parallel runs and a developer's `make run` never see each other's jobs.
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/5")
os.environ.setdefault("RADTRIAGE_NAMESPACE", f"rtt{uuid.uuid4().hex[:8]}")
if "MEDIA_ROOT" not in os.environ:
    _SCRATCH_MEDIA = tempfile.mkdtemp(prefix="radtriage-media-")
    os.environ["MEDIA_ROOT"] = _SCRATCH_MEDIA
else:
    _SCRATCH_MEDIA = None


def pytest_configure(config) -> None:
    # Load the settings module now, so pytest-django (whose own hook runs last) sets Django up
    # even though DJANGO_SETTINGS_MODULE only appeared above.
    from django.conf import settings

    assert settings.DATABASES
    # Every test user gets a password; PBKDF2's 1M rounds cost ~0.2 s each (the role table alone
    # makes ~300). MD5 is acceptable for throwaway test accounts and nowhere else; PBKDF2 stays
    # listed so any hash a real setting made still verifies.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *[h for h in settings.PASSWORD_HASHERS if "MD5" not in h],
    ]


def pytest_unconfigure(config) -> None:
    # Stored uploads and heat maps of this session: nothing left behind in /tmp.
    if _SCRATCH_MEDIA:
        shutil.rmtree(_SCRATCH_MEDIA, ignore_errors=True)


# Shared fixtures (users, tiny registry, worker/beat/redis processes) live in one place so
# their session-scoped instances are shared by tests/web and tests/worker (one worker).
from tests.web.fixtures import *  # noqa: E402, F403
from tests.web.fixtures import SHARED_WORKER_NODES, drain_shared_worker  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets its own channel-layer object. channels_redis binds the lock its receive
    holds to the event loop that first waits on it; a test whose loop ended while a consumer
    was still receiving leaves that lock held by a dead loop, and the next test's websocket
    then fails ("bound to a different event loop"). One web process runs one loop, so only
    tests meet this."""
    from channels.layers import channel_layers

    channel_layers.backends = {}
    yield


@pytest.fixture(autouse=True)
def _no_job_in_flight_at_database_reset(request):
    """A transactional test's database is reset (TRUNCATE) after it; the session's shared
    worker may still be running a job the test sent and did not wait for (an analysis, a
    report render, a PACS send), and the two deadlock. Before the reset: queued analyses are
    ended (a worker's claim of one then finds nothing to do), the session's queues are
    emptied, and the shared worker is waited for until it holds no job."""
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(
        marker and marker.kwargs.get("transaction")
    )
    if not transactional:
        yield
        return
    request.getfixturevalue("transactional_db")  # set up first, so reset after this ends
    yield
    from web.clinical.models import Analysis

    Analysis.objects.filter(state=Analysis.State.QUEUED).update(state=Analysis.State.FAILED)
    if SHARED_WORKER_NODES:
        drain_shared_worker(SHARED_WORKER_NODES)
