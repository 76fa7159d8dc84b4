"""Who may reach what: every route Django resolves, for an outsider (not logged in), an account
with no role, a technologist, a radiologist and an admin, through real requests.

ROUTE_RULES is the table: one entry per route (by name, or by pattern when unnamed). A new
route without an entry fails `test_every_route_has_a_rule`, naming it: add its rule here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.web.fixtures import WS_ORIGIN, dicom_bytes, png_bytes, session_cookie_header, upload, with_role
from web.clinical.models import Analysis, Annotation, Batch, Image, Patient, Report, Study

PERSONAS = ("anonymous", "no_role", "technologist", "radiologist", "admin")
ADMIN_FAMILY = "admin:*"  # Django admin's own routes: one rule for all of them


@dataclass(frozen=True)
class Check:
    """One request and the status each persona gets. `path` and `data` may use the objects
    (`{study}`, `{image}`, `{analysis}`) made for the test."""

    method: str
    path: str
    expect: dict[str, int]
    data: Callable[[dict[str, int]], dict[str, Any]] | None = None
    json: bool = False
    location: str | None = None  # where a refusal's 302 must point (the right login page)
    refused: tuple[str, ...] = PERSONAS[:4]  # the personas `location` applies to


def per_persona(
    anonymous: int, no_role: int, technologist: int, radiologist: int, admin: int
) -> dict[str, int]:
    return dict(zip(PERSONAS, (anonymous, no_role, technologist, radiologist, admin), strict=True))


# Common shapes of the table's rows.
PUBLIC = per_persona(200, 200, 200, 200, 200)
PAGE_STUDIES = per_persona(302, 403, 200, 200, 200)  # pages with patient data
API_STUDIES = per_persona(401, 403, 200, 200, 200)  # API reads of patient data
API_UPLOAD = per_persona(401, 403, 201, 201, 201)
API_REVIEW = per_persona(401, 403, 403, 201, 201)  # annotate, re-run analyses
ADMIN_ONLY = per_persona(302, 302, 302, 302, 200)  # anyone else -> the admin login page
PAGE_MANAGE = per_persona(302, 403, 403, 403, 200)  # product pages for admins (monitoring)


def _dicom_upload(ids: dict[str, int]) -> dict[str, Any]:
    return {"file": SimpleUploadedFile("x.dcm", dicom_bytes(patient_id=f"MRN-R{ids['n']}", seed=ids["n"]))}


def _bulk_upload(ids: dict[str, int]) -> dict[str, Any]:
    return {"files": [SimpleUploadedFile("b.png", png_bytes(seed=100 + ids["n"]))], "patient_id": "MRN-BULK"}


ROUTE_RULES: dict[str, list[Check]] = {
    # pages
    "ui:login": [Check("get", "/login/", per_persona(200, 302, 302, 302, 302))],
    "ui:logout": [Check("post", "/logout/", per_persona(302, 302, 302, 302, 302))],
    "ui:worklist": [Check("get", "/", PAGE_STUDIES, location="/login/")],
    "ui:study": [Check("get", "/studies/{study}/", PAGE_STUDIES, location="/login/")],
    "ui:analysis-card": [Check("get", "/analyses/{analysis}/card/", PAGE_STUDIES, location="/login/")],
    "ui:batches": [Check("get", "/batches/", PAGE_STUDIES, location="/login/")],
    "ui:batch": [Check("get", "/batches/{batch}/", PAGE_STUDIES, location="/login/")],
    "ui:report": [Check("get", "/studies/{study}/report/", PAGE_STUDIES, location="/login/")],
    # Model monitoring (Capability.MANAGE): the admin's page and its weekly downloads.
    "ui:monitoring": [Check("get", "/monitoring/", PAGE_MANAGE, location="/login/")],
    "ui:monitoring-csv": [Check("get", "/monitoring/weekly.csv", PAGE_MANAGE, location="/login/")],
    "ui:monitoring-pdf": [Check("get", "/monitoring/weekly.pdf?weeks=2", PAGE_MANAGE, location="/login/")],
    "ui:model-card": [
        Check("get", "/models/fracture-mobilenetv2-384-boxed-v2/card/", PAGE_STUDIES, location="/login/")
    ],
    "ui:model-card-figure": [
        Check(
            "get", "/models/fracture-mobilenetv2-384-boxed-v2/card/roc.png", PAGE_STUDIES, location="/login/"
        )
    ],
    "healthz": [Check("get", "/healthz/", PUBLIC)],
    "favicon": [Check("get", "/favicon.ico", PUBLIC)],
    # Django admin: the model registry page and admin's own routes (index, every model list)
    "admin-model-registry": [
        Check("get", "/admin/model-registry/", ADMIN_ONLY, location="/admin/login/"),
        Check(
            "post",
            "/admin/model-registry/",
            per_persona(302, 302, 302, 302, 302),  # the admin: back to the page, with a message
            data=lambda ids: {},
            location="/admin/login/",
        ),
    ],
    # A site's operating point for the active model (Capability.MANAGE): a POST without a
    # target goes back to the form with the refusal.
    "admin-operating-point": [
        Check(
            "get",
            "/admin/model-registry/fracture-mobilenetv2-384-boxed-v2/operating-point/",
            ADMIN_ONLY,
            location="/admin/login/",
        ),
        Check(
            "post",
            "/admin/model-registry/fracture-mobilenetv2-384-boxed-v2/operating-point/",
            per_persona(302, 302, 302, 302, 302),
            data=lambda ids: {},
            location="/admin/login/",
        ),
    ],
    # The audit log as CSV (Capability.MANAGE): the admin login page for anyone else.
    "admin-audit-export": [Check("get", "/admin/audit/export.csv", ADMIN_ONLY, location="/admin/login/")],
    ADMIN_FAMILY: [
        Check("get", "/admin/", ADMIN_ONLY, location="/admin/login/"),
        Check("get", "/admin/auth/user/", ADMIN_ONLY, location="/admin/login/"),
        Check("get", "/admin/clinical/patient/", ADMIN_ONLY, location="/admin/login/"),
        Check("get", "/admin/clinical/auditevent/", ADMIN_ONLY, location="/admin/login/"),
    ],
    # API: the schema and its docs describe endpoints, never data
    "api:schema": [Check("get", "/api/schema/", PUBLIC)],
    "api:docs": [Check("get", "/api/docs/", PUBLIC)],
    "api:redoc": [Check("get", "/api/redoc/", PUBLIC)],
    "api:token": [
        Check("post", "/api/auth/token/", per_persona(400, 400, 400, 400, 400), data=lambda ids: {}),
        Check("delete", "/api/auth/token/", per_persona(401, 204, 204, 204, 204)),
    ],
    "api:upload": [Check("post", "/api/uploads/", API_UPLOAD, data=_dicom_upload)],
    "api:upload-recognise": [
        Check(
            "post",
            "/api/uploads/recognise/",
            per_persona(401, 403, 200, 200, 200),
            data=lambda ids: {"file": SimpleUploadedFile("p.png", png_bytes(seed=7))},
        )
    ],
    "api:upload-batch": [Check("post", "/api/uploads/batch/", API_UPLOAD, data=_bulk_upload)],
    # DICOMweb (/dicom-web/): the API's rules. A POST that is not multipart/related: 415.
    "dicomweb:studies": [
        Check("get", "/dicom-web/studies", API_STUDIES),
        Check("post", "/dicom-web/studies", per_persona(401, 403, 415, 415, 415), data=lambda ids: {}),
    ],
    "dicomweb:series": [Check("get", "/dicom-web/series", API_STUDIES)],
    "dicomweb:instances": [Check("get", "/dicom-web/instances", API_STUDIES)],
    "dicomweb:study-series": [Check("get", "/dicom-web/studies/{study_uid}/series", API_STUDIES)],
    "dicomweb:study-instances": [Check("get", "/dicom-web/studies/{study_uid}/instances", API_STUDIES)],
    "dicomweb:series-instances": [
        Check("get", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances", API_STUDIES)
    ],
    "dicomweb:study": [
        Check("get", "/dicom-web/studies/{study_uid}", API_STUDIES),
        Check(
            "post",
            "/dicom-web/studies/{study_uid}",
            per_persona(401, 403, 415, 415, 415),
            data=lambda ids: {},
        ),
    ],
    "dicomweb:series-files": [
        Check("get", "/dicom-web/studies/{study_uid}/series/{series_uid}", API_STUDIES)
    ],
    "dicomweb:instance": [
        Check("get", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", API_STUDIES)
    ],
    "dicomweb:study-metadata": [Check("get", "/dicom-web/studies/{study_uid}/metadata", API_STUDIES)],
    "dicomweb:series-metadata": [
        Check("get", "/dicom-web/studies/{study_uid}/series/{series_uid}/metadata", API_STUDIES)
    ],
    "dicomweb:instance-metadata": [
        Check(
            "get",
            "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata",
            API_STUDIES,
        )
    ],
    "dicomweb:instance-rendered": [
        Check(
            "get",
            "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered",
            API_STUDIES,
        )
    ],
    "api:study-list": [Check("get", "/api/studies/", API_STUDIES)],
    "api:study-detail": [Check("get", "/api/studies/{study}/", API_STUDIES)],
    "api:analysis-detail": [Check("get", "/api/analyses/{analysis}/", API_STUDIES)],
    "api:analysis-heatmap": [Check("get", "/api/analyses/{analysis}/heatmap/?kind=raw", API_STUDIES)],
    "api:image-thumbnail": [Check("get", "/api/images/{image}/thumbnail/", API_STUDIES)],
    "api:image-analyses": [
        Check(
            "post",
            "/api/images/{image}/analyses/",
            API_REVIEW,
            data=lambda ids: {"conditions": ["pneumonia"]},
            json=True,
        )
    ],
    "api:annotation-create": [
        Check(
            "post",
            "/api/annotations/",
            API_REVIEW,
            data=lambda ids: {"image": ids["image"], "note": "left lower lobe", "shapes": []},
            json=True,
        )
    ],
    "api:study-reports": [
        Check("get", "/api/studies/{study}/reports/", API_STUDIES),
        # The radiologist's own draft (the study is then theirs); the admin, a colleague, is
        # refused: only the study's holder writes its report.
        Check(
            "post",
            "/api/studies/{study}/reports/",
            per_persona(401, 403, 403, 200, 409),
            data=lambda ids: {"impression": "No acute findings."},
            json=True,
        ),
    ],
    # The radiologist signs the draft; the admin, next, finds it signed (allowed, but final).
    "api:report-sign": [Check("post", "/api/reports/{report}/sign/", per_persona(401, 403, 403, 200, 409))],
    # A draft is the radiologists' working copy: a technologist does not see it exists.
    "api:report-pdf": [Check("get", "/api/reports/{report}/pdf/", per_persona(401, 403, 404, 200, 200))],
    # The templates offered while drafting: radiologists (who write reports) read them; admins
    # edit them in the Django admin, never over the API.
    "api:report-templates": [
        Check("get", "/api/report-templates/?study={study}", per_persona(401, 403, 403, 200, 200)),
        Check("post", "/api/report-templates/", per_persona(401, 403, 403, 405, 405), data=lambda ids: {}),
    ],
    # Claim, release, mark reviewed: reviewers only. The radiologist claims first, so the
    # admin then finds it claimed (409); release/reviewed are the assignee's (the admin is not).
    "api:study-claim": [Check("post", "/api/studies/{study}/claim/", per_persona(401, 403, 403, 200, 409))],
    "api:study-release": [
        Check("post", "/api/studies/{study}/release/", per_persona(401, 403, 403, 409, 409))
    ],
    "api:study-reviewed": [
        Check("post", "/api/studies/{study}/reviewed/", per_persona(401, 403, 403, 409, 409))
    ],
    # Taking over: nothing to take for the radiologist (nobody holds it; the draft is theirs),
    # the admin takes over the radiologist's draft.
    "api:study-take-over": [
        Check("post", "/api/studies/{study}/take-over/", per_persona(401, 403, 403, 409, 200))
    ],
    # The viewer: reading needs VIEW_STUDIES; drawing and verdicts REVIEW; changing an
    # annotation only its author (the radiologist here, so the admin is refused).
    "api:image-display": [Check("get", "/api/images/{image}/display/", API_STUDIES)],
    "api:image-pixels": [Check("get", "/api/images/{image}/pixels/", API_STUDIES)],
    "api:image-annotations": [
        Check("get", "/api/images/{image}/annotations/", API_STUDIES),
        Check(
            "post",
            "/api/images/{image}/annotations/",
            API_REVIEW,
            data=lambda ids: {"shapes": [{"type": "rect", "x": 1, "y": 2, "w": 3, "h": 4}], "note": "n"},
            json=True,
        ),
    ],
    "api:annotation-detail": [
        Check("get", "/api/annotations/{annotation}/", API_STUDIES),
        Check(
            "patch",
            "/api/annotations/{annotation}/",
            per_persona(401, 403, 403, 200, 403),
            data=lambda ids: {"note": "edited"},
            json=True,
        ),
    ],
    "api:analysis-verdict": [
        Check("get", "/api/analyses/{analysis}/verdict/", API_STUDIES),
        Check(
            "put",
            "/api/analyses/{analysis}/verdict/",
            per_persona(401, 403, 403, 201, 201),  # each a first verdict of its own
            data=lambda ids: {"verdict": "agree", "comment": ""},
            json=True,
        ),
    ],
    "api:verdict-counts": [Check("get", "/api/verdicts/counts/", API_STUDIES)],
    "api:monitoring-models": [
        Check("get", "/api/monitoring/models/?days=30", per_persona(401, 403, 403, 403, 200))
    ],
    "api:batch-list": [
        Check("get", "/api/batches/", API_STUDIES),
        Check(
            "post",
            "/api/batches/",
            API_UPLOAD,
            data=lambda ids: {"files": [SimpleUploadedFile("b.png", png_bytes(seed=300 + ids["n"]))]},
        ),
    ],
    "api:batch-detail": [Check("get", "/api/batches/{batch}/", API_STUDIES)],
    # DICOM results and exports: reading the results needs VIEW_STUDIES; sending again REVIEW
    # (409 here: no PACS is configured); de-identified research exports the admin only.
    "api:image-dicom-sr": [Check("get", "/api/images/{image}/dicom-sr/", API_STUDIES)],
    "api:analysis-dicom-sc": [Check("get", "/api/analyses/{analysis}/dicom-sc/", API_STUDIES)],
    "api:image-pacs-sends": [
        Check("get", "/api/images/{image}/pacs-sends/", API_STUDIES),
        Check("post", "/api/images/{image}/pacs-sends/", per_persona(401, 403, 403, 409, 409)),
    ],
    "api:study-deidentified": [
        Check("get", "/api/studies/{study}/deidentified/", per_persona(401, 403, 403, 403, 200))
    ],
    "api:export-deidentified": [
        Check(
            "post",
            "/api/exports/deidentified/",
            per_persona(401, 403, 403, 403, 200),
            data=lambda ids: {"study_ids": [ids["study"]]},
            json=True,
        )
    ],
    r"api/^[\s\S]*$": [Check("get", "/api/no-such-endpoint/", per_persona(404, 404, 404, 404, 404))],
}


def _walk(patterns: list[Any], prefix: str = "", namespace: str = "") -> Iterator[tuple[str, str]]:
    """(rule key, route) for every URL pattern: the namespaced name, else the full pattern."""
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, route, inner)
        elif isinstance(entry, URLPattern):
            key = f"{namespace}{entry.name}" if entry.name else route
            if route.startswith("admin/") and not key.startswith("admin-"):
                key = ADMIN_FAMILY
            yield key, route


def test_every_route_has_a_rule() -> None:
    routes = _walk(get_resolver().url_patterns)
    missing = sorted({f"{key}  ({route})" for key, route in routes if key not in ROUTE_RULES})
    assert not missing, (
        "Routes without an access rule in tests/web/test_roles.py ROUTE_RULES (say what an outsider, "
        "a no-role account, a technologist, a radiologist and an admin get):\n  " + "\n  ".join(missing)
    )


def test_no_rule_is_left_for_a_route_that_is_gone() -> None:
    keys = {key for key, _ in _walk(get_resolver().url_patterns)}
    assert set(ROUTE_RULES) <= keys, (
        f"Rules for routes that no longer exist: {sorted(set(ROUTE_RULES) - keys)}"
    )


# --------------------------------------------------------------------------- the requests


@pytest.fixture()
def people(db: Any, django_user_model: Any) -> dict[str, Any]:
    make = django_user_model.objects.create_user
    return {
        "no_role": make("outsider", password="pw-outsider-1"),
        "technologist": with_role(make("tech.tom", password="pw-tech-1"), "technologist"),
        "radiologist": with_role(make("dr.rad", password="pw-rad-1"), "radiologist"),
        # A member of the admin group, not a superuser: the group alone gives the rights.
        "admin": with_role(make("ada.admin", password="pw-admin-1"), "admin"),
    }


@pytest.fixture()
def objects(people: dict[str, Any]) -> dict[str, int]:
    """A study with an image, a thumbnail and an analysis with a stored heat map."""
    client = Client()
    client.force_login(people["radiologist"])
    body = upload(client, dicom_bytes(patient_id="MRN-ROLES", patient_name="Roles^Rita")).json()
    image = Image.objects.get(pk=body["image"]["id"])
    analysis = Analysis.objects.filter(image=image).first()
    analysis.heatmap_raw.save("heat.png", ContentFile(png_bytes(size=32)), save=False)
    analysis.state = Analysis.State.SUCCEEDED
    analysis.probability, analysis.threshold, analysis.positive = 0.3, 0.5, False
    analysis.model_id, analysis.model_sha256 = "pneumonia-test", "0" * 64
    analysis.save()
    annotation = Annotation.objects.create(image=image, author=people["radiologist"], note="mine")
    batch = Batch.objects.create(created_by=people["technologist"], source=Batch.Source.BROWSER)
    report = Report.objects.create(
        study=image.study, version=1, author=people["radiologist"], impression="Draft reading."
    )
    return {
        "study": image.study_id,
        "image": image.pk,
        "analysis": analysis.pk,
        "report": report.pk,
        "annotation": annotation.pk,
        "batch": batch.pk,
        "study_uid": image.study.study_instance_uid,
        "series_uid": image.series_instance_uid,
        "sop_uid": image.sop_instance_uid,
        "n": 0,
    }


def _client_for(persona: str, people: dict[str, Any]) -> Client:
    client = Client()
    if persona != "anonymous":
        client.force_login(people[persona])
    return client


def _cases() -> list[Any]:
    return [
        pytest.param(key, index, id=f"{key}#{index}")
        for key, checks in ROUTE_RULES.items()
        for index in range(len(checks))
    ]


@pytest.mark.parametrize("key,index", _cases())
def test_each_role_gets_what_the_rule_says(key: str, index: int, people, objects) -> None:
    check = ROUTE_RULES[key][index]
    got: dict[str, int] = {}
    for n, persona in enumerate(PERSONAS, start=1):
        ids = {**objects, "n": n}
        path = check.path.format(**ids)
        kwargs: dict[str, Any] = {}
        if check.data is not None:
            kwargs["data"] = check.data(ids)
            if check.json:
                kwargs["content_type"] = "application/json"
        response = getattr(_client_for(persona, people), check.method)(path, **kwargs)
        got[persona] = response.status_code
        if check.location and persona in check.refused and response.status_code == 302:
            assert response["Location"].startswith(check.location), (persona, response["Location"])
    assert got == check.expect, f"{check.method.upper()} {check.path}: expected {check.expect}, got {got}"


# --------------------------------------------------------------------------- what each role sees


def test_an_account_without_a_role_sees_no_patient_data(people, objects) -> None:
    client = _client_for("no_role", people)
    for path in ("/", f"/studies/{objects['study']}/", "/api/studies/", f"/api/studies/{objects['study']}/"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert b"Roles" not in response.content and b"MRN-ROLES" not in response.content, path


def test_a_technologist_may_upload_but_not_annotate_or_rerun(people, objects) -> None:
    client = _client_for("technologist", people)
    worklist = client.get("/").content.decode()
    assert 'id="upload-form"' in worklist and "MRN-ROLES" in worklist
    notes_before = Annotation.objects.count()
    refused = client.post(
        "/api/annotations/", {"image": objects["image"], "note": "x"}, content_type="application/json"
    )
    assert refused.status_code == 403 and "may not review" in refused.json()["error"]
    assert Annotation.objects.count() == notes_before
    before = Analysis.objects.count()
    rerun = client.post(
        f"/api/images/{objects['image']}/analyses/",
        {"conditions": ["pneumonia"]},
        content_type="application/json",
    )
    assert rerun.status_code == 403 and Analysis.objects.count() == before


def test_is_staff_alone_does_not_open_the_admin(people) -> None:
    """A staff account without the admin role does not get into the admin (no patient data)."""
    staff = people["no_role"]
    staff.is_staff = True
    staff.save()
    client = _client_for("no_role", people)
    response = client.get("/admin/clinical/patient/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_an_admin_group_member_logs_in_to_the_admin_with_a_password(people) -> None:
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "ada.admin", "password": "pw-admin-1"}, follow=True
    )
    assert response.status_code == 200 and "Model registry" in response.content.decode()
    outsider = Client().post("/admin/login/", {"username": "tech.tom", "password": "pw-tech-1"})
    assert outsider.status_code == 200 and "Please enter the correct" in outsider.content.decode()


def test_the_upload_form_is_shown_only_to_who_may_upload(people, objects) -> None:
    for persona in ("technologist", "radiologist", "admin"):
        assert 'id="upload-form"' in _client_for(persona, people).get("/").content.decode(), persona


# --------------------------------------------------------------------------- websockets


def _ws_connect(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    from web.asgi import application

    async def attempt() -> tuple[bool, int | None]:
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=5)
        if connected:
            await communicator.disconnect()
        return connected, code

    return async_to_sync(attempt)()


@pytest.fixture()
def ws_people(transactional_db: Any, django_user_model: Any) -> dict[str, Client]:
    make = django_user_model.objects.create_user
    clients = {}
    for persona, user in (
        ("no_role", make("ws.outsider", password="pw-1")),
        ("technologist", with_role(make("ws.tech", password="pw-2"), "technologist")),
    ):
        client = Client()
        client.force_login(user)
        clients[persona] = client
    return clients


def test_a_websocket_from_an_account_without_a_role_is_refused(ws_people) -> None:
    patient = Patient.objects.create(patient_id="MRN-WS")
    study = Study.objects.create(patient=patient, study_instance_uid="1.2.3.4")
    outsider = [session_cookie_header(ws_people["no_role"]), WS_ORIGIN]
    assert _ws_connect("/ws/worklist/", outsider) == (False, 4403)
    assert _ws_connect(f"/ws/studies/{study.pk}/", outsider) == (False, 4403)
    tech = [session_cookie_header(ws_people["technologist"]), WS_ORIGIN]
    assert _ws_connect("/ws/worklist/", tech)[0] is True
    assert _ws_connect(f"/ws/studies/{study.pk}/", tech)[0] is True


# Every websocket route (web/clinical/routing.py) and what each persona gets: True (opened) or
# the close code. A new route without a rule fails test_every_websocket_route_has_a_rule.
OPEN = True
WS_SOCKETS_FOR_STAFF = per_persona(4401, 4403, OPEN, OPEN, OPEN)
WS_RULES: dict[str, tuple[str, dict[str, Any]]] = {
    "ws/worklist/": ("/ws/worklist/", WS_SOCKETS_FOR_STAFF),
    "ws/studies/<int:study_id>/": ("/ws/studies/{study}/", WS_SOCKETS_FOR_STAFF),
    "ws/batches/<int:batch_id>/": ("/ws/batches/{batch}/", WS_SOCKETS_FOR_STAFF),
    "": ("/ws/no-such-socket/", per_persona(4404, 4404, 4404, 4404, 4404)),
}


def test_every_websocket_route_has_a_rule() -> None:
    from web.clinical.routing import websocket_urlpatterns

    routes = {str(p.pattern) for p in websocket_urlpatterns}
    assert routes - WS_RULES.keys() == set(), f"websocket routes without a rule: {routes - WS_RULES.keys()}"
    assert WS_RULES.keys() - routes == set(), (
        f"rules for websocket routes that are gone: {WS_RULES.keys() - routes}"
    )


@pytest.fixture()
def ws_everyone(transactional_db: Any, django_user_model: Any) -> tuple[dict[str, Any], dict[str, int]]:
    make = django_user_model.objects.create_user
    headers: dict[str, Any] = {"anonymous": [WS_ORIGIN]}
    for persona in PERSONAS[1:]:
        user = make(f"ws.{persona}", password="pw-ws-1")
        if persona != "no_role":
            with_role(user, persona)
        client = Client()
        client.force_login(user)
        headers[persona] = [session_cookie_header(client), WS_ORIGIN]
    study = Study.objects.create(
        patient=Patient.objects.create(patient_id="MRN-WS2"), study_instance_uid="1.2.9"
    )
    batch = Batch.objects.create(source=Batch.Source.BROWSER)
    return headers, {"study": study.pk, "batch": batch.pk}


@pytest.mark.parametrize("route", list(WS_RULES))
def test_each_role_gets_what_the_websocket_rule_says(route: str, ws_everyone) -> None:
    headers, ids = ws_everyone
    path, expected = WS_RULES[route]
    got = {}
    for persona in PERSONAS:
        connected, code = _ws_connect(path.format(**ids), headers[persona])
        got[persona] = OPEN if connected else code
    assert got == expected, f"{path}: expected {expected}, got {got}"
