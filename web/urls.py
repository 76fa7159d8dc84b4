from django.contrib import admin
from django.urls import include, path

from web.health import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz/", healthz, name="healthz"),
    path("api/", include("web.api.urls")),
    path("", include("web.ui.urls")),
]
