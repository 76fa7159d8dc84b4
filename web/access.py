"""Who may do what: three roles (Django groups, created by a migration) and what each may do.

Every page, API endpoint and websocket asks `can(user, Capability.X)`; nothing checks
`is_staff` or a group name directly, so the rules live here and nowhere else. An account in
none of the groups sees no patient data. Superusers are admins.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import Group
from django.contrib.auth.views import redirect_to_login
from django.contrib.sessions.models import Session
from django.db.models.signals import m2m_changed, pre_delete, pre_save
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from rest_framework.permissions import BasePermission


class Role(enum.StrEnum):
    TECHNOLOGIST = "technologist"
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


class Capability(enum.StrEnum):
    VIEW_STUDIES = "view_studies"  # worklist, study page, images, results (patient data)
    UPLOAD = "upload"  # send images, queue their analyses
    REVIEW = "review"  # claim, take over, annotate, verdicts, re-run, mark reviewed, reports (drafts)
    MANAGE = "manage"  # users, models, audit log


CAPABILITIES: dict[Role, frozenset[Capability]] = {
    Role.TECHNOLOGIST: frozenset({Capability.VIEW_STUDIES, Capability.UPLOAD}),
    Role.RADIOLOGIST: frozenset({Capability.VIEW_STUDIES, Capability.UPLOAD, Capability.REVIEW}),
    Role.ADMIN: frozenset(Capability),
}

_CACHE_ATTRIBUTE = "_radtriage_roles"


def roles_of(user: Any) -> frozenset[Role]:
    """The user's roles (cached on the user object for the request)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    cached = getattr(user, _CACHE_ATTRIBUTE, None)
    if cached is None:
        if user.is_superuser:
            cached = frozenset(Role)
        else:
            names = set(user.groups.values_list("name", flat=True))
            cached = frozenset(role for role in Role if role.value in names)
        setattr(user, _CACHE_ATTRIBUTE, cached)
    return cached


def can(user: Any, capability: Capability) -> bool:
    return any(capability in CAPABILITIES[role] for role in roles_of(user))


def capabilities_of(user: Any) -> frozenset[Capability]:
    return frozenset(c for c in Capability if can(user, c))


def requires(
    capability: Capability,
) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """Page views: anonymous -> login page; logged in without the capability -> 403."""

    def decorate(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @wraps(view)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not can(request.user, capability):
                # A page that says what is missing, not an exception: a refused page is an
                # answer, logged as one line, never as a traceback.
                return forbidden_page(request, capability)
            return view(request, *args, **kwargs)

        checked.required_capability = capability  # type: ignore[attr-defined]
        return checked

    return decorate


# What each capability lets a person do, in the words of the 403 page.
CAPABILITY_WORDS: dict[Capability, str] = {
    Capability.VIEW_STUDIES: "see studies and their AI results",
    Capability.UPLOAD: "send images",
    Capability.REVIEW: "review studies and write reports",
    Capability.MANAGE: "manage accounts, models and the audit log",
}


def forbidden_page(request: HttpRequest, capability: Capability | None, reason: str = "") -> HttpResponse:
    """The 403 page: who is logged in, the roles the account has (or that it has none), what
    the page needs and which roles give it, and a way to log out."""
    from django.shortcuts import render

    needed_by = [r.value for r in Role if capability is not None and capability in CAPABILITIES[r]]
    context = {
        "roles": sorted(r.value for r in roles_of(request.user)),
        "needs": CAPABILITY_WORDS.get(capability, "") if capability is not None else "",
        "needed_by": needed_by,
        "reason": reason,
        "can_view": can(request.user, Capability.VIEW_STUDIES),
    }
    return render(request, "ui/forbidden.html", context, status=403)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403 (web.urls): JSON under /api/, the 403 page elsewhere."""
    reason = str(exception) if exception is not None and str(exception) else ""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": reason or "You do not have permission to do this."}, status=403)
    return forbidden_page(request, None, reason)


class _Requires(BasePermission):
    capability: Capability = Capability.VIEW_STUDIES

    def has_permission(self, request: Any, view: Any) -> bool:
        return can(request.user, self.capability)


def api_requires(capability: Capability) -> type[BasePermission]:
    """DRF permission class: `permission_classes = [api_requires(Capability.REVIEW)]`.
    Anonymous -> 401, logged in without the capability -> 403."""
    return type(
        f"Requires{capability.name.title().replace('_', '')}",
        (_Requires,),
        {"capability": capability, "message": f"Your account may not {capability.value.replace('_', ' ')}."},
    )


CanViewStudies = api_requires(Capability.VIEW_STUDIES)  # the API's default (settings)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, for the login lockout and the audit log: the address that
    connected, or, behind a proxy named in RADTRIAGE_TRUSTED_PROXIES, the one it forwarded
    (web.asgi resolves it before Django sees the request; a header from anyone else is ignored)."""
    return request.META.get("REMOTE_ADDR") or None


def template_context(request: HttpRequest) -> dict[str, Any]:
    """Context processor: `may.upload`, `may.review`, ... so pages hide what the user cannot do
    (the server checks again: hiding is a courtesy, never the protection)."""
    return {"may": {c.value: can(getattr(request, "user", None), c) for c in Capability}}


class AdminRoleBackend:
    """Django permissions for the admin role: all of them, as for a superuser, so members of the
    admin group manage users, models and the audit log in the Django admin. Authenticates no one."""

    def authenticate(self, request: Any, **credentials: Any) -> None:
        return None

    def get_user(self, user_id: Any) -> None:
        return None

    def has_perm(self, user: Any, perm: str, obj: Any = None) -> bool:
        return can(user, Capability.MANAGE)

    def has_module_perms(self, user: Any, app_label: str) -> bool:
        return can(user, Capability.MANAGE)


def admin_site_permission(request: HttpRequest) -> bool:
    """Who may enter the Django admin: the admin role (is_staff alone is not enough)."""
    return can(request.user, Capability.MANAGE)


class AdminLoginForm(AdminAuthenticationForm):
    """The admin's login form, asking for the admin role instead of is_staff."""

    def confirm_login_allowed(self, user: Any) -> None:
        AuthenticationForm.confirm_login_allowed(self, user)
        if not can(user, Capability.MANAGE):
            raise self.get_invalid_login_error()


# --------------------------------------------------------------------------- access that ends
# A changed or reset password, a deactivated account and a removed role (or superuser flag) end
# the account's API tokens and login sessions, and close its open live pages: whoever held
# them logs in again and gets only what the account may now do. (Django alone ends sessions on a
# password change, but not tokens, and neither on a role removed.) Connected once at start-up
# (web.api's AppConfig.ready), for every way an account changes: admin, API, manage.py, code.


def user_access_end(*, user_ids: set[int]) -> None:
    """End every API token and login session of these accounts, and close their websockets
    (after commit). Sessions are found by reading the unexpired ones: this runs on rare admin
    actions, and a session row does not say whose it is."""
    from rest_framework.authtoken.models import Token

    from web.clinical.events import access_ended_publish

    if not user_ids:
        return
    Token.objects.filter(user_id__in=user_ids).delete()
    owners = {str(pk) for pk in user_ids}
    ended = [
        session.session_key
        for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator()
        if str(session.get_decoded().get(SESSION_KEY)) in owners
    ]
    Session.objects.filter(session_key__in=ended).delete()
    access_ended_publish(user_ids=user_ids)


def _account_changed(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """pre_save of a user: compared with the stored row, did the password change, or the
    account lose its activity or its superuser flag?"""
    watched = {"password", "is_active", "is_superuser"}
    if instance.pk is None or (update_fields is not None and not watched & set(update_fields)):
        return  # a new account, or a save of other fields (last_login at each login)
    stored = sender.objects.filter(pk=instance.pk).values("password", "is_active", "is_superuser").first()
    if stored is None:
        return
    if (
        stored["password"] != instance.password
        or (stored["is_active"] and not instance.is_active)
        or (stored["is_superuser"] and not instance.is_superuser)
    ):
        user_access_end(user_ids={instance.pk})


def _roles_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """m2m_changed of User.groups, from either side: a user taken out of a group (a role)."""
    if action == "pre_clear":
        # The members are gone after the clear: note them now.
        instance._radtriage_cleared = (
            set(instance.user_set.values_list("pk", flat=True)) if reverse else {instance.pk}
        )
    elif action == "post_clear":
        user_access_end(user_ids=getattr(instance, "_radtriage_cleared", set()))
    elif action == "post_remove":
        user_access_end(user_ids=set(pk_set or ()) if reverse else {instance.pk})


def _group_deleted(sender: Any, instance: Group, **kwargs: Any) -> None:
    user_access_end(user_ids=set(instance.user_set.values_list("pk", flat=True)))


def access_signals_connect() -> None:
    user_model = get_user_model()
    pre_save.connect(_account_changed, sender=user_model, dispatch_uid="radtriage-account-changed")
    m2m_changed.connect(
        _roles_changed, sender=user_model.groups.through, dispatch_uid="radtriage-roles-changed"
    )
    pre_delete.connect(_group_deleted, sender=Group, dispatch_uid="radtriage-group-deleted")
