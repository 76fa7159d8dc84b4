"""/dicom-web/: the DICOMweb routes (PS3.18 resource paths, as Orthanc and dcm4chee serve them)."""

from django.urls import path, register_converter

from web.api.dicomweb_views import MetadataView, QueryView, RenderedView, RetrieveView, StudiesView, StudyView

app_name = "dicomweb"


class UidConverter:
    """A DICOM UID: digits and dots, at most 64 characters."""

    regex = r"[0-9.]{1,64}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UidConverter, "uid")

S = "studies/<uid:study>"
SE = f"{S}/series/<uid:series>"
INSTANCE = f"{SE}/instances/<uid:instance>"

urlpatterns = [
    # QIDO-RS (GET) and STOW-RS (POST) share the studies resource.
    path("studies", StudiesView.as_view(), name="studies"),
    path("series", QueryView.as_view(level="series"), name="series"),
    path("instances", QueryView.as_view(level="instances"), name="instances"),
    path(f"{S}/series", QueryView.as_view(level="series"), name="study-series"),
    path(f"{S}/instances", QueryView.as_view(level="instances"), name="study-instances"),
    path(f"{SE}/instances", QueryView.as_view(level="instances"), name="series-instances"),
    # WADO-RS
    path(S, StudyView.as_view(), name="study"),
    path(SE, RetrieveView.as_view(), name="series-files"),
    path(INSTANCE, RetrieveView.as_view(), name="instance"),
    path(f"{S}/metadata", MetadataView.as_view(), name="study-metadata"),
    path(f"{SE}/metadata", MetadataView.as_view(), name="series-metadata"),
    path(f"{INSTANCE}/metadata", MetadataView.as_view(), name="instance-metadata"),
    path(f"{INSTANCE}/rendered", RenderedView.as_view(), name="instance-rendered"),
]
