from django.apps import AppConfig


class UiConfig(AppConfig):
    name = "web.ui"
    label = "ui"
    verbose_name = "Worklist and study pages"
