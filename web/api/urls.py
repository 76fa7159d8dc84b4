from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from web.api import (
    batch_views,
    dicom_views,
    errors,
    monitoring_views,
    report_views,
    review_views,
    views,
    worklist_views,
)

app_name = "api"

urlpatterns = [
    # The schema describes endpoints, never data: readable without logging in. Its pages (Swagger
    # UI, ReDoc) come from drf-spectacular-sidecar's static files: no CDN, they work offline.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(url_name="api:schema", permission_classes=[AllowAny]),
        name="docs",
    ),
    path(
        "redoc/",
        SpectacularRedocView.as_view(
            url_name="api:schema", permission_classes=[AllowAny], template_name="api/redoc.html"
        ),
        name="redoc",
    ),
    path("auth/token/", views.TokenView.as_view(), name="token"),
    path("uploads/", views.UploadView.as_view(), name="upload"),
    path("uploads/batch/", views.BulkUploadView.as_view(), name="upload-batch"),
    path("uploads/recognise/", views.RecogniseView.as_view(), name="upload-recognise"),
    path("batches/", batch_views.BatchListView.as_view(), name="batch-list"),
    path("batches/<int:pk>/", batch_views.BatchDetailView.as_view(), name="batch-detail"),
    path("studies/", views.StudyListView.as_view(), name="study-list"),
    path("studies/<int:pk>/", views.StudyDetailView.as_view(), name="study-detail"),
    path("studies/<int:pk>/claim/", worklist_views.StudyClaimView.as_view(), name="study-claim"),
    path("studies/<int:pk>/release/", worklist_views.StudyReleaseView.as_view(), name="study-release"),
    path("studies/<int:pk>/reviewed/", worklist_views.StudyReviewedView.as_view(), name="study-reviewed"),
    path("studies/<int:pk>/take-over/", worklist_views.StudyTakeOverView.as_view(), name="study-take-over"),
    path("analyses/<int:pk>/", views.AnalysisDetailView.as_view(), name="analysis-detail"),
    path("analyses/<int:pk>/heatmap/", views.AnalysisHeatmapView.as_view(), name="analysis-heatmap"),
    path("images/<int:pk>/thumbnail/", views.ImageThumbnailView.as_view(), name="image-thumbnail"),
    path("images/<int:pk>/analyses/", views.ImageAnalysesView.as_view(), name="image-analyses"),
    path("annotations/", views.AnnotationCreateView.as_view(), name="annotation-create"),
    path("studies/<int:pk>/reports/", report_views.StudyReportsView.as_view(), name="study-reports"),
    path("reports/<int:pk>/sign/", report_views.ReportSignView.as_view(), name="report-sign"),
    path("reports/<int:pk>/pdf/", report_views.ReportPdfView.as_view(), name="report-pdf"),
    path("report-templates/", report_views.ReportTemplatesView.as_view(), name="report-templates"),
    # The reading room (web.api.review_views): viewing needs VIEW_STUDIES, changes need REVIEW.
    path("images/<int:pk>/display/", review_views.ImageDisplayView.as_view(), name="image-display"),
    path("images/<int:pk>/pixels/", review_views.ImagePixelsView.as_view(), name="image-pixels"),
    path(
        "images/<int:pk>/annotations/",
        review_views.ImageAnnotationsView.as_view(),
        name="image-annotations",
    ),
    path("annotations/<int:pk>/", review_views.AnnotationDetailView.as_view(), name="annotation-detail"),
    path("analyses/<int:pk>/verdict/", review_views.AnalysisVerdictView.as_view(), name="analysis-verdict"),
    path("verdicts/counts/", review_views.VerdictCountsView.as_view(), name="verdict-counts"),
    path("monitoring/models/", monitoring_views.MonitoringModelsView.as_view(), name="monitoring-models"),
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
    re_path(r"^[\s\S]*$", errors.api_not_found),  # not ".*": a path may hold an encoded newline
]
