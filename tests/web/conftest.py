import pytest


@pytest.fixture(autouse=True)
def isolated_media(settings, tmp_path):
    """Each web test gets its own MEDIA_ROOT, so 'no orphan files' can be checked exactly."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT
