from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from web.access import AdminLoginForm, Role, admin_site_permission, client_ip
from web.clinical.audit.queries import BadAuditFilter, audit_event_filter
from web.clinical.models import (
    Analysis,
    Annotation,
    AuditEvent,
    Image,
    Patient,
    ReportTemplate,
    Study,
    UploadConflict,
)
from web.clinical.reporting.report_templates import report_template_delete, report_template_save
from web.clinical.worklist.patients import patient_save, studies_patient_refresh


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ["patient_id", "name", "birth_date", "sex"]
    search_fields = ["patient_id", "name"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        patient_save(patient=obj)  # and its studies' copies of the name, birth date and sex


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
    # The state and its holder change only through the state machine and the claim actions
    # (web.clinical.worklist), which audit and announce them: never by editing the row.
    readonly_fields = ["status", "assigned_radiologist", "claimed_at", "reviewed_at", "reviewed_by"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if "patient" in form.changed_data or not change:  # the new patient's name, birth date, sex
            studies_patient_refresh(study_ids=[obj.pk])


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


class AuditTextFilter(admin.SimpleListFilter):
    """A typed-in filter (username, patient ID, study, date) whose query parameter is the one
    the CSV export reads (selectors.AUDIT_FILTERS)."""

    template = "admin/audit_text_filter.html"
    input_type = "text"
    placeholder = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    # A text box, not a list of links: its one "choice" carries what the box needs.
    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        keep = [(k, v) for k, v in changelist.get_filters_params().items() if k != self.parameter_name]
        yield {
            "name": self.parameter_name,
            "value": self.value() or "",
            "input_type": self.input_type,
            "placeholder": self.placeholder,
            "keep": [(k, v[-1] if isinstance(v, list) else v) for k, v in keep],
            "clear": changelist.get_query_string(remove=[self.parameter_name]),
        }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if not self.value():
            return queryset
        try:
            return audit_event_filter(queryset, **{str(self.parameter_name): str(self.value())})
        except BadAuditFilter as exc:
            raise ValidationError(str(exc)) from exc


class AuditUserFilter(AuditTextFilter):
    title = "user"
    parameter_name = "user"
    placeholder = "username"


class AuditPatientFilter(AuditTextFilter):
    title = "patient"
    parameter_name = "patient"
    placeholder = "patient ID (MRN)"


class AuditStudyFilter(AuditTextFilter):
    title = "study"
    parameter_name = "study"
    placeholder = "id, accession or UID"


class AuditSinceFilter(AuditTextFilter):
    title = "date from"
    parameter_name = "since"
    input_type = "date"


class AuditUntilFilter(AuditTextFilter):
    title = "date to"
    parameter_name = "until"
    input_type = "date"


class AuditActionFilter(admin.SimpleListFilter):
    title = "action"
    parameter_name = "action"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        actions = AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()
        return [(a, a) for a in actions]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return audit_event_filter(queryset, action=self.value() or "")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log: read-only for everyone (admins and superusers included), filterable, and
    exported as CSV with the same filters (/admin/audit/export.csv)."""

    list_display = [
        "at",
        "actor_label",
        "action",
        "patient",
        "study",
        "object_type",
        "object_id",
        "ip_address",
    ]
    list_filter = [
        AuditUserFilter,
        AuditActionFilter,
        AuditPatientFilter,
        AuditStudyFilter,
        AuditSinceFilter,
        AuditUntilFilter,
    ]
    list_select_related = ["patient", "study"]
    actions = None  # no bulk "delete selected"
    show_facets = admin.ShowFacets.NEVER

    def has_add_permission(self, request: HttpRequest) -> bool:  # append-only
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
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


@admin.register(ReportTemplate)
class ReportTemplateAdmin(admin.ModelAdmin):
    """Report templates per body region: radiologists apply them while drafting. Each edit names
    its admin and is audited (web.clinical.reporting.report_templates)."""

    list_display = ["name", "region", "active", "updated_by", "updated_at"]
    list_filter = ["region", "active"]
    search_fields = ["name"]
    fields = ["name", "region", "clinical_information", "findings", "impression", "active"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        report_template_save(template=obj, actor=request.user, ip_address=client_ip(request))

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        report_template_delete(template=obj, actor=request.user, ip_address=client_ip(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for template in queryset:
            report_template_delete(template=template, actor=request.user, ip_address=client_ip(request))


# The admin home links to the model registry page (web/clinical/registry_admin.py).
admin.site.index_template = "admin/radtriage_index.html"
admin.site.site_header = "RadTriage administration"
# Only the admin role enters the admin (web.access), not any is_staff account.
admin.site.has_permission = admin_site_permission  # type: ignore[method-assign]
admin.site.login_form = AdminLoginForm


# --------------------------------------------------------------------------- accounts

_User = get_user_model()
if admin.site.is_registered(_User):
    admin.site.unregister(_User)


@admin.register(_User)
class AccountAdmin(UserAdmin):
    """Django's user admin with each account's RadTriage roles in the list: an account without
    one sees no patient data, and the list says so."""

    list_display = ("username", "roles", "first_name", "last_name", "email", "is_active", "last_login")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="Roles")
    def roles(self, user: Any) -> str:
        known = {role.value for role in Role}
        names = sorted(g.name for g in user.groups.all() if g.name in known)
        if user.is_superuser:
            names = ["admin (superuser)", *[n for n in names if n != "admin"]]
        return ", ".join(names) or "no role (sees no patient data)"
