from django.apps import AppConfig


class ClinicalConfig(AppConfig):
    """The domain: patients, studies, images, AI analyses, annotations and the audit log."""

    name = "web.clinical"
    label = "clinical"
    verbose_name = "Clinical data"
