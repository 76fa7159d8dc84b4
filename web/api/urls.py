from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from web.api import dicom_views, errors, views

app_name = "api"

urlpatterns = [
    # The schema describes endpoints, never data: readable without logging in.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(url_name="api:schema", permission_classes=[AllowAny]),
        name="docs",
    ),
    path("auth/token/", views.TokenView.as_view(), name="token"),
    path("uploads/", views.UploadView.as_view(), name="upload"),
    path("uploads/batch/", views.BulkUploadView.as_view(), name="upload-batch"),
    path("studies/", views.StudyListView.as_view(), name="study-list"),
    path("studies/<int:pk>/", views.StudyDetailView.as_view(), name="study-detail"),
    path("analyses/<int:pk>/", views.AnalysisDetailView.as_view(), name="analysis-detail"),
    path("analyses/<int:pk>/heatmap/", views.AnalysisHeatmapView.as_view(), name="analysis-heatmap"),
    path("images/<int:pk>/thumbnail/", views.ImageThumbnailView.as_view(), name="image-thumbnail"),
    path("images/<int:pk>/analyses/", views.ImageAnalysesView.as_view(), name="image-analyses"),
    path("annotations/", views.AnnotationCreateView.as_view(), name="annotation-create"),
    path(
        "analyses/<int:pk>/dicom-sc/",
        dicom_views.AnalysisSecondaryCaptureView.as_view(),
        name="analysis-dicom-sc",
    ),
    path("images/<int:pk>/dicom-sr/", dicom_views.ImageStructuredReportView.as_view(), name="image-dicom-sr"),
    path("images/<int:pk>/pacs-sends/", dicom_views.ImagePacsSendsView.as_view(), name="image-pacs-sends"),
    path(
        "studies/<int:pk>/deidentified/",
        dicom_views.StudyDeidentifiedExportView.as_view(),
        name="study-deidentified",
    ),
    path("exports/deidentified/", dicom_views.DeidentifiedExportView.as_view(), name="export-deidentified"),
    re_path(r"^.*$", errors.api_not_found),
]
