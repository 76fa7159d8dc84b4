from django.contrib import admin
from django.urls import include, path

from web.clinical.audit.export import audit_export_view
from web.clinical.registry.admin_views import operating_point_view, registry_view
from web.health import healthz
from web.ui.views import favicon

# Under /api/ these answer JSON, as every API error does (web.api.errors).
handler400 = "web.api.errors.bad_request"
handler500 = "web.api.errors.server_error"
handler403 = "web.access.permission_denied"

urlpatterns = [
    path("admin/model-registry/", admin.site.admin_view(registry_view), name="admin-model-registry"),
    path(
        "admin/model-registry/<str:model_id>/operating-point/",
        admin.site.admin_view(operating_point_view),
        name="admin-operating-point",
    ),
    path("admin/audit/export.csv", admin.site.admin_view(audit_export_view), name="admin-audit-export"),
    path("admin/", admin.site.urls),
    path("healthz/", healthz, name="healthz"),
    path("favicon.ico", favicon, name="favicon"),
    path("api/", include("web.api.urls")),
    path("dicom-web/", include("web.api.dicomweb_urls")),
    path("", include("web.ui.urls")),
]
