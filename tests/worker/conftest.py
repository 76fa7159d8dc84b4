# Shared fixtures come from tests/conftest.py (tests/web/fixtures.py).
