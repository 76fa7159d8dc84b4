from django.contrib import admin

from web.access import AdminLoginForm, admin_site_permission
from web.clinical.models import (
    Analysis,
    Annotation,
    AuditEvent,
    Image,
    Patient,
    Study,
    UploadConflict,
)


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ["patient_id", "name", "birth_date", "sex"]
    search_fields = ["patient_id", "name"]


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = [
        "study_instance_uid",
        "patient",
        "accession_number",
        "body_part",
        "priority",
        "status",
        "assigned_radiologist",
    ]
    list_filter = ["status", "priority", "modality"]
    search_fields = ["study_instance_uid", "accession_number", "patient__patient_id"]
    raw_id_fields = ["patient"]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["sop_instance_uid", "study", "format", "width", "height", "created_at"]
    search_fields = ["sop_instance_uid", "sha256"]
    raw_id_fields = ["study"]


@admin.register(Analysis)
class AnalysisAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "condition",
        "state",
        "probability",
        "model_id",
        "is_placeholder",
        "attempts",
        "finished_at",
    ]
    list_filter = ["state", "condition", "is_placeholder", "experimental"]
    raw_id_fields = ["image"]


@admin.register(Annotation)
class AnnotationAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "author", "verdict", "created_at"]
    raw_id_fields = ["image", "analysis"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["at", "actor_label", "action", "patient", "object_type", "object_id"]
    list_filter = ["action"]
    search_fields = ["actor_label", "patient__patient_id"]

    def has_add_permission(self, request):  # append-only
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UploadConflict)
class UploadConflictAdmin(admin.ModelAdmin):
    """Refused uploads that clashed with another patient's image: reviewed here, never
    merged automatically. Only the review fields can be changed."""

    list_display = [
        "id",
        "created_at",
        "kind",
        "claimed_patient_id",
        "existing_image",
        "attempts",
        "reviewed",
    ]
    list_filter = ["kind", "reviewed"]
    search_fields = ["claimed_patient_id", "sop_instance_uid", "sha256"]
    readonly_fields = [
        "kind",
        "message",
        "file",
        "original_filename",
        "sha256",
        "sop_instance_uid",
        "claimed_patient_id",
        "claimed_fields",
        "existing_image",
        "uploaded_by",
        "ip_address",
        "attempts",
        "created_at",
    ]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# The admin home links to the model registry page (web/clinical/registry_admin.py).
admin.site.index_template = "admin/radtriage_index.html"
admin.site.site_header = "RadTriage administration"
# Only the admin role enters the admin (web.access), not any is_staff account.
admin.site.has_permission = admin_site_permission  # type: ignore[method-assign]
admin.site.login_form = AdminLoginForm
