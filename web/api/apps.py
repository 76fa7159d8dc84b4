from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "web.api"
    label = "api"
    verbose_name = "REST API"

    def ready(self) -> None:
        from web.access import access_signals_connect

        access_signals_connect()  # a password change, deactivation or role removal ends tokens
