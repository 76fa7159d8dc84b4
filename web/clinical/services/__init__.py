"""Services: every change to clinical data goes through one of these functions, one module per
topic (audit, uploads and their parts, upload conflicts, analyses, studies, storage).

Upload validation decodes with core.imaging (numpy/pydicom only). The analysis itself runs in
a worker process: `analyses_run` imports core.model_manager/core.analysis inside the function so
that TensorFlow is only ever imported by workers, never by the web process.
"""

from web.clinical.services.analyses import (
    analyses_dispatch,
    analyses_requeue_orphans,
    analyses_requeue_stuck,
    analyses_run,
    analysis_enqueue,
    analysis_fail,
    analysis_mark_retrying,
    image_analyses_request,
)
from web.clinical.services.audit import audit_event, audit_record, audit_record_read
from web.clinical.services.models_registry import (
    ActivationRefused,
    registry_activate,
    registry_activation_preview,
)
from web.clinical.services.studies import studies_refresh
from web.clinical.services.upload_conflicts import UploadConflictError
from web.clinical.services.upload_parts import (
    BulkUploadItem,
    UploadFields,
    UploadRejected,
    UploadResult,
    upload_outcome,
)
from web.clinical.services.uploads import image_upload, images_upload_many

__all__ = [
    "BulkUploadItem",
    "UploadConflictError",
    "UploadFields",
    "UploadRejected",
    "UploadResult",
    "analyses_dispatch",
    "analyses_requeue_orphans",
    "analyses_requeue_stuck",
    "analyses_run",
    "analysis_enqueue",
    "analysis_fail",
    "analysis_mark_retrying",
    "audit_event",
    "audit_record",
    "audit_record_read",
    "image_analyses_request",
    "image_upload",
    "images_upload_many",
    "registry_activate",
    "registry_activation_preview",
    "ActivationRefused",
    "studies_refresh",
    "upload_outcome",
]
