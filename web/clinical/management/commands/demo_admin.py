"""Create (or reset) the demo admin account and print how to log in. For `make run` only."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Ensure a demo admin exists; print its username and password."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--credentials-file", default=str(settings.BASE_DIR / "var" / "demo-admin.txt"))

    def handle(self, *args, username: str, credentials_file: str, **options) -> None:
        path = Path(credentials_file)
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        password = None
        if user is not None and path.is_file():
            saved_user, _, saved_password = path.read_text().strip().partition(":")
            if saved_user == username and user.check_password(saved_password):
                password = saved_password
        if password is None:
            password = secrets.token_urlsafe(12)
            if user is None:
                user = User.objects.create_superuser(username, email="", password=password)
            else:
                user.set_password(password)
                user.is_staff = user.is_superuser = user.is_active = True
                user.save()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{username}:{password}\n")
            path.chmod(0o600)
        self.stdout.write(f"Demo admin: username {username}  password {password}")
