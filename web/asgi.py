"""ASGI entry (uvicorn; daphne for `manage.py runserver`): HTTP through Django, websockets through Channels.

Websockets need a logged-in session (AuthMiddlewareStack) and an allowed Origin. Forwarded
headers are believed only from the proxies in RADTRIAGE_TRUSTED_PROXIES (settings): this module
applies them, so uvicorn runs with --no-proxy-headers (its default believes 127.0.0.1).
"""

import gc
import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
os.environ["RADTRIAGE_ASGI"] = "1"  # settings: no persistent database connections here
django_asgi_app = get_asgi_application()
os.environ.pop("RADTRIAGE_ASGI")  # read; not for processes this one starts

# Imported after Django is set up: they touch models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware  # noqa: E402

from web.clinical.routing import websocket_urlpatterns  # noqa: E402

_router = ProtocolTypeRouter(
    {
        # Static files (CSS/JS of the pages) are served by the app itself: one process to run.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
# The client address (scope["client"], Django's REMOTE_ADDR) and scheme: from X-Forwarded-For /
# -Proto only when the connection comes from a trusted proxy; an empty list trusts none.
application = ProxyHeadersMiddleware(_router, trusted_hosts=list(settings.RADTRIAGE_TRUSTED_PROXIES))


def _warm_up() -> None:
    """Load now, at start-up, what the first requests need (every view module, the DICOM and
    image libraries: ~0.5 s of CPU), so that the first upload a person makes after a restart
    is as fast as the next ones. No TensorFlow: the web process never loads a model."""
    import cv2  # noqa: F401
    import pydicom.pixels  # noqa: F401
    from django.urls import get_resolver
    from PIL import Image  # noqa: F401

    get_resolver().url_patterns  # noqa: B018 - imports every view and what it imports
    _recogniser_load()


def _recogniser_load() -> None:
    """The image recogniser (numpy arrays, no TensorFlow) every PNG/JPEG upload consults. A
    missing file is not fatal here: uploads say so and the analyses are not applicable."""
    from core.errors import RadTriageError
    from core.recognition import default_recogniser

    try:
        default_recogniser()
    except RadTriageError as exc:
        logging.getLogger(__name__).error("Image recogniser unavailable: %s", exc)


_warm_up()
# What start-up loaded (the modules, the URL tree, the recogniser) lives as long as the process:
# kept out of the collector's full passes, which would otherwise walk it again every few pages
# (about 70 ms of one page in five to seven at 1M studies, measured in-process as bench/scale.py runs).
gc.freeze()
