from django.apps import AppConfig


class EngineConfig(AppConfig):
    """Hosts the command-line entries onto core/ (analyze, train, evaluate)."""

    name = "web.engine"
    label = "engine"
    verbose_name = "RadTriage engine commands"
