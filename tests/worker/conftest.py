from tests.web.fixtures import *  # noqa: F403 - shared fixtures (users, registry, worker)
