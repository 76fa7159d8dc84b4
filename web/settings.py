"""RadTriage settings: one module, driven by environment variables.

SQLite is the embedded default so a first run needs nothing; production sets DATABASE_URL.
With DEBUG off, a missing production setting stops start-up with a clear message.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from web.clinical.dispatch import (
    TASK_MONITORING_CHECK,
    TASK_RECOVER_ORPHANS,
    TASK_REMOVE_ABANDONED_UPLOADS,
    TASK_REMOVE_ORPHAN_FILES,
    TASK_START_OVERNIGHT_BATCHES,
    TASK_SWEEP_STUCK,
)
from web.storage_config import StorageConfigError, media_storage_setting

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Production (DEBUG=0) needs a long random SECRET_KEY in the "
            "environment, e.g. SECRET_KEY=$(python -c 'import secrets;print(secrets.token_urlsafe(50))')."
        )
    SECRET_KEY = "dev-only-insecure-key-change-me"

ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
if not ALLOWED_HOSTS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "ALLOWED_HOSTS is not set. Production (DEBUG=0) needs the host names users type, "
            "comma separated, e.g. ALLOWED_HOSTS=radtriage.hospital.example."
        )
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    # First, so `manage.py runserver` serves ASGI (websockets) too; only there: importing it
    # (twisted) cost every other command and each worker 0.2 s of start-up. uvicorn serves
    # the deployed site.
    *(["daphne"] if sys.argv[1:2] == ["runserver"] else []),
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI / ReDoc files: the API docs work offline
    "channels",
    "axes",  # login throttling on every login path
    "web.engine",
    "web.clinical",
    "web.api",
    "web.ui",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "web.request_guard.NulCharacterRefused",  # a NUL in a query or form: 400, before any view
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into its response
]

# Login throttling (django-axes) on the login page, the admin and the API token endpoint: after
# RADTRIAGE_LOGIN_FAILURE_LIMIT wrong passwords for one user from one address, that pair is
# locked out for RADTRIAGE_LOGIN_COOLOFF_MINUTES (a 429 that says so), even with the right one.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "web.access.AdminRoleBackend",  # the admin role holds every Django permission
]
AXES_FAILURE_LIMIT = int(os.environ.get("RADTRIAGE_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = dt.timedelta(minutes=float(os.environ.get("RADTRIAGE_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "web.lockout.lockout_response"
# The address counted is the one client address the whole site uses (web.access.client_ip),
# never a header the client writes itself (see RADTRIAGE_TRUSTED_PROXIES below).
AXES_CLIENT_IP_CALLABLE = "web.access.client_ip"
AXES_VERBOSE = False
# API tokens expire (a new one is issued by POST /api/auth/token/; DELETE revokes one).
RADTRIAGE_TOKEN_TTL_HOURS = float(os.environ.get("RADTRIAGE_TOKEN_TTL_HOURS", str(24 * 7)))

ROOT_URLCONF = "web.urls"
WSGI_APPLICATION = "web.wsgi.application"
ASGI_APPLICATION = "web.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "web" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "web.access.template_context",
                "web.clinical.monitoring.alerts.alerts_context",
            ],
        },
    },
]

# Under ASGI (web.asgi sets RADTRIAGE_ASGI) each request runs in a thread of its own that ends
# with it: a connection kept for reuse is never reused, only left open until garbage-collected.
# Under load the web processes would run PostgreSQL out of connections ("too many clients",
# HTTP 500; bench/load.py). So, as Django's docs say, no persistent connections under ASGI;
# the worker and the DICOM listener keep theirs.
DB_CONN_MAX_AGE = (
    0 if os.environ.get("RADTRIAGE_ASGI") == "1" else int(os.environ.get("DB_CONN_MAX_AGE", "60"))
)
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'radtriage.sqlite3'}"),
        conn_max_age=DB_CONN_MAX_AGE,
    )
}
# Behind a pooler in transaction mode (PgBouncer pool_mode=transaction) consecutive statements
# may reach different server connections, so the server-side cursor QuerySet.iterator() opens
# on PostgreSQL could be gone by its next fetch: Django then reads the rows client-side.
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env_bool("DB_DISABLE_SERVER_SIDE_CURSORS", False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default is written by the web process and the worker at once: WAL lets
    # readers go on during a write, IMMEDIATE takes the write lock up front (no upgrade
    # deadlock), and the timeout waits for it instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "var" / "static"))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "var" / "media"))
# Where stored files live (docs/storage.md): `filesystem` (MEDIA_ROOT, one machine) or `s3`
# (an S3-compatible bucket that every host reaches; MEDIA_ROOT is then never used).
MEDIA_STORAGE = os.environ.get("MEDIA_STORAGE") or "filesystem"
try:
    _MEDIA_STORAGE = media_storage_setting(os.environ)
except StorageConfigError as exc:
    raise ImproperlyConfigured(str(exc)) from None
STORAGES = {
    "default": _MEDIA_STORAGE,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Engine (core/) configuration: where the registry lives; model paths in it are relative to it.
RADTRIAGE_REGISTRY = Path(os.environ.get("RADTRIAGE_REGISTRY", BASE_DIR / "registry.json"))
# With MEDIA_STORAGE=s3: how often (seconds) a process refreshes its copy of the registry from
# the object store, so a model activated on one host runs on every host within this.
RADTRIAGE_REGISTRY_PULL_SECONDS = float(os.environ.get("RADTRIAGE_REGISTRY_PULL_SECONDS", "5"))
# The report header (signed PDF reports): the site's name and one address line.
RADTRIAGE_INSTITUTION_NAME = os.environ.get("RADTRIAGE_INSTITUTION_NAME", "RadTriage radiology department")
RADTRIAGE_INSTITUTION_ADDRESS = os.environ.get("RADTRIAGE_INSTITUTION_ADDRESS", "")
# The same person reading the same thing again within this many seconds is one action: one
# audit row (a study page reads its study twice, page then script; see services.audit).
RADTRIAGE_AUDIT_REPEAT_SECONDS = float(os.environ.get("RADTRIAGE_AUDIT_REPEAT_SECONDS", "300"))
# Switching a model on first loads it and runs a probe image, in a child process: at most this long.
RADTRIAGE_MODEL_CHECK_TIMEOUT = float(os.environ.get("RADTRIAGE_MODEL_CHECK_TIMEOUT", "180"))
RADTRIAGE_MAX_PIXELS = int(os.environ.get("RADTRIAGE_MAX_PIXELS", str(60_000_000)))

# No patient identifier in any log line. A search travels in the query string, and the web
# server logs each request line: its access loggers (uvicorn's, and runserver's) log the path
# without the query string (web.logs). Applied when Django starts in each web process, before
# it answers a request. SQL (with its parameters: names, IDs) is never logged, even at
# LOG_LEVEL=DEBUG.
_REQUEST_LOG = {"handlers": ["console"], "filters": ["query_string_dropped"], "propagate": False}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"query_string_dropped": {"()": "web.logs.QueryStringDropped"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "uvicorn.access": _REQUEST_LOG,
        "django.server": _REQUEST_LOG,
        "django.channels.server": _REQUEST_LOG,
        "django.db.backends": {"level": "INFO"},
    },
}

LOGIN_URL = "ui:login"
LOGIN_REDIRECT_URL = "ui:worklist"
LOGOUT_REDIRECT_URL = "ui:login"

# The largest X-ray file accepted (a big uncompressed multi-frame DICOM fits in 200 MiB).
RADTRIAGE_MAX_UPLOAD_BYTES = int(os.environ.get("RADTRIAGE_MAX_UPLOAD_BYTES", str(200 * 2**20)))
DATA_UPLOAD_MAX_MEMORY_SIZE = RADTRIAGE_MAX_UPLOAD_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 2**20
# One bulk upload request takes at most this many files (a browser sends bigger sets in parts).
RADTRIAGE_MAX_FILES_PER_REQUEST = int(os.environ.get("RADTRIAGE_MAX_FILES_PER_REQUEST", "100"))
# Triage: a study waiting longer than this many hours rises to the top of its priority band,
# above AI-positive studies, so that AI-negative studies are never starved.
RADTRIAGE_WAITING_CAP_HOURS = float(os.environ.get("RADTRIAGE_WAITING_CAP_HOURS", "4"))
# Django's own cap sits well above ours, so that ours (which says how many) is the one users meet.
DATA_UPLOAD_MAX_NUMBER_FILES = 4 * RADTRIAGE_MAX_FILES_PER_REQUEST

# --------------------------------------------------------------------------- Redis, Celery, Channels
# One Redis serves as Celery broker and channel layer. DEBUG may fall back to a local Redis;
# production must say where it is.
REDIS_URL = os.environ.get("REDIS_URL", "")
if not REDIS_URL:
    if not DEBUG:
        raise ImproperlyConfigured(
            "REDIS_URL is not set. Production (DEBUG=0) needs the Redis used as job queue and "
            "websocket layer, e.g. REDIS_URL=redis://redis:6379/0."
        )
    REDIS_URL = "redis://127.0.0.1:6379/0"
if not DEBUG and "DATABASE_URL" not in os.environ:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. Production (DEBUG=0) needs PostgreSQL, e.g. "
        "DATABASE_URL=postgres://radtriage:secret@db:5432/radtriage (SQLite is for a demo only)."
    )

# Prefixes keep several deployments (or test sessions) apart on one Redis.
RADTRIAGE_NAMESPACE = os.environ.get("RADTRIAGE_NAMESPACE", "radtriage")
QUEUE_INTERACTIVE = "interactive"  # single uploads: a person is waiting
QUEUE_BATCH = "batch"  # bulk imports
QUEUE_MAINTENANCE = "maintenance"  # the sweeps and PACS sends; cheap, never behind a model job
# Report PDFs (1-3 s each): after every analysis queue, so a render never delays an analysis;
# one still waiting when its PDF is downloaded is rendered then.
QUEUE_REPORTS = "reports"
# What an API client may ask for -> the broker queue (the one mapping of queue names).
ANALYSIS_QUEUES = {"interactive": QUEUE_INTERACTIVE, "batch": QUEUE_BATCH}
# Every queue, in the order a worker that serves several takes from them (its -Q list: see
# queue_order_strategy below): Procfile and docker-compose.yml list theirs in this order.
WORKER_QUEUES = [QUEUE_INTERACTIVE, QUEUE_MAINTENANCE, QUEUE_BATCH, QUEUE_REPORTS]

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("CHANNEL_REDIS_URL", REDIS_URL)],
            "prefix": f"{RADTRIAGE_NAMESPACE}.asgi",
            "capacity": 1000,
            "expiry": 60,
        },
    }
}

# Analysis job limits (seconds). The sweeper only treats a running job as lost once it is
# older than the hard limit, so a slow-but-alive job is never run twice by the sweeper.
ANALYSIS_SOFT_TIME_LIMIT = int(os.environ.get("RADTRIAGE_ANALYSIS_SOFT_TIME_LIMIT", "240"))
ANALYSIS_TIME_LIMIT = int(os.environ.get("RADTRIAGE_ANALYSIS_TIME_LIMIT", "300"))
if ANALYSIS_SOFT_TIME_LIMIT >= ANALYSIS_TIME_LIMIT:
    raise ImproperlyConfigured(
        "RADTRIAGE_ANALYSIS_SOFT_TIME_LIMIT must be smaller than RADTRIAGE_ANALYSIS_TIME_LIMIT."
    )
# Bulk uploads send jobs of this many analyses: one model call for all (~3x cheaper per image
# on a CPU than one at a time). Interactive uploads are always sent one by one.
ANALYSIS_BATCH_SIZE = max(1, int(os.environ.get("RADTRIAGE_ANALYSIS_BATCH_SIZE", "16")))
ANALYSIS_MAX_RETRIES = int(os.environ.get("RADTRIAGE_ANALYSIS_MAX_RETRIES", "5"))
STUCK_QUEUED_AFTER = int(os.environ.get("RADTRIAGE_STUCK_QUEUED_AFTER", "900"))
STUCK_RUNNING_AFTER = max(int(os.environ.get("RADTRIAGE_STUCK_RUNNING_AFTER", "0")), ANALYSIS_TIME_LIMIT + 5)
SWEEP_INTERVAL = float(os.environ.get("RADTRIAGE_SWEEP_INTERVAL", "60"))
# The orphan sweep: every ORPHAN_SWEEP_INTERVAL seconds, a job queued for ORPHAN_AFTER seconds
# with no message in the broker, or running on a worker whose heartbeat stopped ORPHAN_AFTER
# seconds ago, is sent again: lost jobs run again within ORPHAN_AFTER + ORPHAN_SWEEP_INTERVAL
# (45 s) of the fault clearing. The sweeper above remains the backstop.
ORPHAN_AFTER = float(os.environ.get("RADTRIAGE_ORPHAN_AFTER", "30"))
ORPHAN_SWEEP_INTERVAL = float(os.environ.get("RADTRIAGE_ORPHAN_SWEEP_INTERVAL", "15"))
# The files of an upload whose web process died before it committed (journals untouched this
# long) are removed by a beat task every ABANDONED_UPLOAD_CHECK_INTERVAL seconds.
ABANDONED_UPLOAD_AFTER = float(os.environ.get("RADTRIAGE_ABANDONED_UPLOAD_AFTER", "900"))
ABANDONED_UPLOAD_CHECK_INTERVAL = float(os.environ.get("RADTRIAGE_ABANDONED_UPLOAD_CHECK_INTERVAL", "300"))
# Result files (heat maps, report PDFs) are written before the rows that point at them and
# never deleted once those rows are committed. A file no committed row points at (its job died
# between writing it and committing) is removed by a beat task every ORPHAN_FILE_CHECK_INTERVAL
# seconds once it is ORPHAN_FILE_AFTER seconds old: longer than any job runs (the hard time
# limit), so a file whose row is about to be committed is never taken.
ORPHAN_FILE_AFTER = float(os.environ.get("RADTRIAGE_ORPHAN_FILE_AFTER", "3600"))
ORPHAN_FILE_CHECK_INTERVAL = float(os.environ.get("RADTRIAGE_ORPHAN_FILE_CHECK_INTERVAL", "3600"))
if ORPHAN_FILE_AFTER <= ANALYSIS_TIME_LIMIT:
    raise ImproperlyConfigured(
        f"RADTRIAGE_ORPHAN_FILE_AFTER ({ORPHAN_FILE_AFTER:g} s) must exceed the analysis hard time "
        f"limit ({ANALYSIS_TIME_LIMIT} s): a result file is committed within it."
    )

# Batches. Overnight batches run inside this window, local time (TIME_ZONE); "HH:MM-HH:MM",
# may span midnight ("22:00-05:00").
RADTRIAGE_NIGHT_WINDOW = os.environ.get("RADTRIAGE_NIGHT_WINDOW", "01:00-06:00")
if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d", RADTRIAGE_NIGHT_WINDOW):
    raise ImproperlyConfigured(
        f"RADTRIAGE_NIGHT_WINDOW must look like 01:00-06:00 (24-hour, local time), not "
        f"{RADTRIAGE_NIGHT_WINDOW!r}."
    )
if RADTRIAGE_NIGHT_WINDOW[:5] == RADTRIAGE_NIGHT_WINDOW[6:]:
    raise ImproperlyConfigured("RADTRIAGE_NIGHT_WINDOW must not start and end at the same time.")
BATCH_CHECK_INTERVAL = float(os.environ.get("RADTRIAGE_BATCH_CHECK_INTERVAL", "60"))
# Archive safety (zip bombs): members, total uncompressed bytes, and uncompressed/compressed.
RADTRIAGE_ARCHIVE_MAX_MEMBERS = int(os.environ.get("RADTRIAGE_ARCHIVE_MAX_MEMBERS", "20000"))
RADTRIAGE_ARCHIVE_MAX_BYTES = int(os.environ.get("RADTRIAGE_ARCHIVE_MAX_BYTES", str(20 * 2**30)))
RADTRIAGE_ARCHIVE_MAX_RATIO = float(os.environ.get("RADTRIAGE_ARCHIVE_MAX_RATIO", "100"))

# Model monitoring (web.clinical.monitoring, docs/monitoring.md). Drift is judged over the last
# WINDOW_DAYS of results against a reference: the department's first REFERENCE_DAYS of results
# of that model (id and checksum) once that period is over and holds REFERENCE_MIN results, else
# the model's validation scores (models/<id>/scores.json). A flag rate outside its Wilson
# BAND_CONFIDENCE band, or a PSI above PSI_ALERT, raises an alert (PSI_MODERATE: shown, no
# alert); fewer than MIN_RESULTS scored results in the window are too few to judge.
RADTRIAGE_MONITORING_WINDOW_DAYS = int(os.environ.get("RADTRIAGE_MONITORING_WINDOW_DAYS", "30"))
RADTRIAGE_MONITORING_REFERENCE_DAYS = int(os.environ.get("RADTRIAGE_MONITORING_REFERENCE_DAYS", "28"))
RADTRIAGE_MONITORING_REFERENCE_MIN = int(os.environ.get("RADTRIAGE_MONITORING_REFERENCE_MIN", "500"))
RADTRIAGE_MONITORING_MIN_RESULTS = int(os.environ.get("RADTRIAGE_MONITORING_MIN_RESULTS", "50"))
RADTRIAGE_MONITORING_BAND_CONFIDENCE = float(os.environ.get("RADTRIAGE_MONITORING_BAND_CONFIDENCE", "0.99"))
RADTRIAGE_MONITORING_PSI_ALERT = float(os.environ.get("RADTRIAGE_MONITORING_PSI_ALERT", "0.25"))
RADTRIAGE_MONITORING_PSI_MODERATE = float(os.environ.get("RADTRIAGE_MONITORING_PSI_MODERATE", "0.1"))
RADTRIAGE_MONITORING_CHECK_INTERVAL = float(os.environ.get("RADTRIAGE_MONITORING_CHECK_INTERVAL", "3600"))
if not 0 < RADTRIAGE_MONITORING_BAND_CONFIDENCE < 1:
    raise ImproperlyConfigured("RADTRIAGE_MONITORING_BAND_CONFIDENCE must lie between 0 and 1 (e.g. 0.99).")
if min(RADTRIAGE_MONITORING_WINDOW_DAYS, RADTRIAGE_MONITORING_REFERENCE_DAYS) < 1:
    raise ImproperlyConfigured(
        "RADTRIAGE_MONITORING_WINDOW_DAYS and RADTRIAGE_MONITORING_REFERENCE_DAYS must be at least 1."
    )

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True  # the database row is the result
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = QUEUE_MAINTENANCE
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # An unacknowledged job (its worker vanished) comes back after this long; it must exceed
    # the hard time limit or a live job would be delivered twice.
    "visibility_timeout": ANALYSIS_TIME_LIMIT + 60,
    # Every broker key (queues, unacked set) lives under the namespace.
    "global_keyprefix": f"{RADTRIAGE_NAMESPACE}.",
    # A worker takes jobs from its queues in the order given (-Q, as WORKER_QUEUES): a person's
    # single upload never waits behind an overnight bulk import, only behind the job in hand
    # (one batch of ANALYSIS_BATCH_SIZE images, well under a second on a CPU), and a report
    # render waits for every analysis.
    "queue_order_strategy": "priority",
}
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-analyses": {
        "task": TASK_SWEEP_STUCK,
        "schedule": SWEEP_INTERVAL,
        "options": {"queue": QUEUE_MAINTENANCE, "expires": max(SWEEP_INTERVAL, 1.0)},
    },
    "requeue-orphaned-analyses": {
        "task": TASK_RECOVER_ORPHANS,
        "schedule": ORPHAN_SWEEP_INTERVAL,
        "options": {"queue": QUEUE_MAINTENANCE, "expires": max(ORPHAN_SWEEP_INTERVAL, 1.0)},
    },
    "remove-abandoned-uploads": {
        "task": TASK_REMOVE_ABANDONED_UPLOADS,
        "schedule": ABANDONED_UPLOAD_CHECK_INTERVAL,
        "options": {"queue": QUEUE_MAINTENANCE, "expires": max(ABANDONED_UPLOAD_CHECK_INTERVAL, 1.0)},
    },
    "remove-orphan-files": {
        "task": TASK_REMOVE_ORPHAN_FILES,
        "schedule": ORPHAN_FILE_CHECK_INTERVAL,
        "options": {"queue": QUEUE_MAINTENANCE, "expires": max(ORPHAN_FILE_CHECK_INTERVAL, 1.0)},
    },
    "check-model-drift": {
        "task": TASK_MONITORING_CHECK,
        "schedule": RADTRIAGE_MONITORING_CHECK_INTERVAL,
        "options": {"queue": QUEUE_MAINTENANCE, "expires": max(RADTRIAGE_MONITORING_CHECK_INTERVAL, 1.0)},
    },
    # Starts the overnight batches once inside the night window (their jobs go on the batch
    # queue) and says of those still running at its end that they went on past it.
    "start-overnight-batches": {
        "task": TASK_START_OVERNIGHT_BATCHES,
        "schedule": BATCH_CHECK_INTERVAL,
        "options": {"queue": QUEUE_MAINTENANCE, "expires": max(BATCH_CHECK_INTERVAL, 1.0)},
    },
}

# --------------------------------------------------------------------------- DICOM
# The Storage SCP (`manage.py dicom_listener`): where it listens, its AE title, and which
# calling AE titles may connect (comma-separated; empty: any). An association's analyses are
# sent to the workers every RADTRIAGE_DICOM_BATCH_SIZE instances and when it ends.
RADTRIAGE_DICOM_HOST = os.environ.get("RADTRIAGE_DICOM_HOST", "0.0.0.0")
RADTRIAGE_DICOM_PORT = int(os.environ.get("RADTRIAGE_DICOM_PORT", "11112"))
RADTRIAGE_DICOM_AE_TITLE = os.environ.get("RADTRIAGE_DICOM_AE_TITLE", "RADTRIAGE")
# The called AE titles the listener answers to (comma-separated; default its own AE title): an
# association addressed to any other is rejected (A-ASSOCIATE-RJ, called AE title not
# recognised), so a device configured for another node never files images here by mistake.
RADTRIAGE_DICOM_CALLED_AE_TITLES = [
    t.strip() for t in os.environ.get("RADTRIAGE_DICOM_CALLED_AE_TITLES", "").split(",") if t.strip()
] or [RADTRIAGE_DICOM_AE_TITLE]
RADTRIAGE_DICOM_ALLOWED_AE_TITLES = [
    t.strip() for t in os.environ.get("RADTRIAGE_DICOM_ALLOWED_AE_TITLES", "").split(",") if t.strip()
]
RADTRIAGE_DICOM_BATCH_SIZE = max(
    1, int(os.environ.get("RADTRIAGE_DICOM_BATCH_SIZE", str(ANALYSIS_BATCH_SIZE)))
)
for _title in [
    RADTRIAGE_DICOM_AE_TITLE,
    *RADTRIAGE_DICOM_CALLED_AE_TITLES,
    *RADTRIAGE_DICOM_ALLOWED_AE_TITLES,
]:
    if not 0 < len(_title) <= 16:
        raise ImproperlyConfigured(f"DICOM AE title {_title!r} must be 1 to 16 characters.")
# A PACS node to C-STORE the AI results to (Secondary Capture + Comprehensive SR) once all of
# an image's analyses are done. Unset RADTRIAGE_PACS_HOST: nothing is sent automatically.
RADTRIAGE_PACS_HOST = os.environ.get("RADTRIAGE_PACS_HOST", "")
RADTRIAGE_PACS_PORT = int(os.environ.get("RADTRIAGE_PACS_PORT", "104"))
RADTRIAGE_PACS_AE_TITLE = os.environ.get("RADTRIAGE_PACS_AE_TITLE", "PACS")
RADTRIAGE_PACS_MAX_RETRIES = int(os.environ.get("RADTRIAGE_PACS_MAX_RETRIES", "5"))
RADTRIAGE_PACS_RETRY_DELAY = float(os.environ.get("RADTRIAGE_PACS_RETRY_DELAY", "30"))  # doubles each try

# --------------------------------------------------------------------------- REST API
REST_FRAMEWORK = {
    # Token first, so an anonymous call gets 401 + WWW-Authenticate rather than 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "web.api.authentication.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Reading patient data needs a role (web.access): a new endpoint is protected by default.
    "DEFAULT_PERMISSION_CLASSES": ["web.access.CanViewStudies"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "web.api.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "web.api.errors.json_exception_handler",
    # JSON with a depth limit; JSON and multipart refuse a NUL; too many files is a JSON 400.
    "DEFAULT_PARSER_CLASSES": [
        "web.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "web.api.parsers.MultiPartParser",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "RadTriage API",
    "DESCRIPTION": "Upload X-rays, follow asynchronous AI analyses, download Grad-CAM heat maps.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    # No call to swagger.io's online validator: the docs page talks to this server only.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Requests and responses described apart: a file field is a binary upload in a request (not
    # a URL), and a required text field says it may not be blank (minLength 1).
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "web.api.schema.error_responses",
    ],
    # Two choice sets share a field name ("status"), and one set (the result kinds) is used by
    # two fields: each set gets one enum name of its own in the schema.
    "ENUM_NAME_OVERRIDES": {
        "ResultKindEnum": "web.clinical.analysis.findings.RESULT_KIND_KEYS",
        "DisagreeReasonEnum": "web.clinical.models.Annotation.DisagreeReason",
        "StudyStatusEnum": "web.clinical.models.Study.Status",
        "BulkUploadStatusEnum": "web.api.serializers.BULK_UPLOAD_STATUSES",
        "ReportTemplateRegionEnum": "web.clinical.reporting.models.ReportTemplate.Region",
        "WorklistRegionEnum": "web.clinical.worklist.queries.WORKLIST_REGIONS",
    },
}

# --------------------------------------------------------------------------- behind a proxy
# RADTRIAGE_TRUSTED_PROXIES: the reverse proxies (IP addresses or networks, comma separated,
# e.g. "172.19.0.10" or "10.0.0.0/24") whose X-Forwarded-For / X-Forwarded-Proto headers are
# believed. Empty (the default): none, and every request's client address is the address that
# connected. The login lockout and every audit row take the client address from here and
# nowhere else (web.access.client_ip); a header from anyone else is ignored, so a client cannot
# pick a fresh address per guess or write a false one into the audit log. The ASGI application
# (web.asgi) applies it; uvicorn's own handling, which believes 127.0.0.1 and FORWARDED_ALLOW_IPS
# by default, is switched off on every command line that starts it (--no-proxy-headers).


def _trusted_proxies(raw: str) -> list[str]:
    proxies = [p.strip() for p in raw.split(",") if p.strip()]
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"RADTRIAGE_TRUSTED_PROXIES: {proxy!r} is not an IP address or network; list "
                "the proxies in front of RadTriage, e.g. RADTRIAGE_TRUSTED_PROXIES=172.19.0.10."
            ) from None
    return proxies


RADTRIAGE_TRUSTED_PROXIES = _trusted_proxies(os.environ.get("RADTRIAGE_TRUSTED_PROXIES", ""))

# --------------------------------------------------------------------------- behind HTTPS
# Secure by default when DEBUG is off: the site is served over HTTPS (a TLS-terminating proxy in
# front must set X-Forwarded-Proto), plain HTTP is redirected to it (/healthz/ excepted, for the
# container's own health probe), browsers are told to stay on HTTPS (HSTS) and cookies never
# travel over plain HTTP. RADTRIAGE_HTTPS=0 relaxes all of it, explicitly, for a plain-HTTP
# trial on localhost; RADTRIAGE_HTTPS=1 turns it on under DEBUG too.
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]
RADTRIAGE_HTTPS = env_bool("RADTRIAGE_HTTPS", not DEBUG)
if RADTRIAGE_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

# A login lasts at most this long (seconds; default one 8-hour shift), then the user logs in again.
SESSION_COOKIE_AGE = int(os.environ.get("SESSION_COOKIE_AGE", str(8 * 3600)))
if SESSION_COOKIE_AGE <= 0:
    raise ImproperlyConfigured("SESSION_COOKIE_AGE must be a positive number of seconds.")

# Passwords set through Django (admin, `manage.py changepassword`, createsuperuser) are checked.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": int(os.environ.get("RADTRIAGE_PASSWORD_MIN_LENGTH", "12"))},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
