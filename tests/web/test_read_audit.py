"""Reading patient data is audited on every route, one row per read, by one layer
(web.clinical.audit.reads), not by each view.

The routes come from tests/web/test_roles.py's table (itself checked against the URLconf): every
GET a radiologist may make either reads patient data (AUDITED, with the action its row records)
or is listed in NO_PATIENT_DATA with why. A new route that returns patient data and is in
neither set fails `test_every_read_route_is_audited_or_says_why_not`; one that is listed but
writes no row (or two) fails `test_each_read_writes_one_audit_row_naming_the_patient`.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.web.test_roles import ROUTE_RULES, objects, people  # noqa: F401 - fixtures
from web.clinical.audit.reads import READ_ACTIONS, RECORDED_ELSEWHERE, Read
from web.clinical.models import AuditEvent

AUDITED: dict[str, str] = {
    "ui:worklist": Read.WORKLIST,
    "ui:study": Read.STUDY,
    "ui:analysis-card": Read.ANALYSIS,
    "ui:report": Read.REPORTS,
    "api:study-list": Read.WORKLIST,
    "api:study-detail": Read.STUDY,
    "api:study-reports": Read.REPORTS,
    "api:report-pdf": "report.download",
    "api:analysis-detail": Read.ANALYSIS,
    "api:analysis-heatmap": Read.HEATMAP,
    "api:analysis-verdict": Read.VERDICTS,
    "api:analysis-dicom-sc": Read.DICOM_SC,
    "api:image-thumbnail": Read.THUMBNAIL,
    "api:image-display": Read.DISPLAY,
    "api:image-pixels": Read.PIXELS,
    "api:image-annotations": Read.ANNOTATIONS,
    "api:annotation-detail": Read.ANNOTATIONS,
    "api:image-dicom-sr": Read.DICOM_SR,
    "api:image-pacs-sends": Read.PACS_SENDS,
    "dicomweb:studies": Read.DICOMWEB_QUERY,
    "dicomweb:series": Read.DICOMWEB_QUERY,
    "dicomweb:instances": Read.DICOMWEB_QUERY,
    "dicomweb:study-series": Read.DICOMWEB_QUERY,
    "dicomweb:study-instances": Read.DICOMWEB_QUERY,
    "dicomweb:series-instances": Read.DICOMWEB_QUERY,
    "dicomweb:study": Read.DICOMWEB_RETRIEVE,
    "dicomweb:series-files": Read.DICOMWEB_RETRIEVE,
    "dicomweb:instance": Read.DICOMWEB_RETRIEVE,
    "dicomweb:study-metadata": Read.DICOMWEB_RETRIEVE,
    "dicomweb:series-metadata": Read.DICOMWEB_RETRIEVE,
    "dicomweb:instance-metadata": Read.DICOMWEB_RETRIEVE,
    "dicomweb:instance-rendered": Read.DICOMWEB_RETRIEVE,
}
NO_PATIENT_DATA: dict[str, str] = {
    "healthz": "the service's health",
    "favicon": "an icon",
    "api:schema": "the API's description, no data",
    "api:docs": "the API's description, no data",
    "api:redoc": "the API's description, no data",
    "ui:batches": "batches: counts, sources, who imported them",
    "ui:batch": "one batch: counts, file names, study ids; no patient fields",
    "api:batch-list": "batches: counts, sources, who imported them",
    "api:batch-detail": "one batch: counts, file names, study ids; no patient fields",
    "api:report-templates": "report templates: the department's wording, no patient data",
    "ui:model-card": "a model's card: its training and test figures, no patient data",
    "ui:model-card-figure": "a model card's figure (ROC, calibration, confusion), no patient data",
    "api:verdict-counts": "verdicts counted per model and condition, across all patients",
}

# Reads only an admin may make (Capability.MANAGE) that show no patient data: they are not in
# the radiologist's table above, so they are listed, and checked, here.
ADMIN_READS_WITHOUT_PATIENT_DATA: dict[str, str] = {
    "ui:monitoring": "each model's counts, rates and score histogram, across all patients",
    "ui:monitoring-csv": "each model's weekly counts and rates, across all patients",
    "ui:monitoring-pdf": "each model's weekly counts, rates and charts, across all patients",
    "api:monitoring-models": "each model's counts, rates, PSI and drift, across all patients",
}


def _reads_of_a_radiologist() -> dict[str, str]:
    """rule key -> path of every GET the table lets a radiologist make."""
    return {
        key: check.path
        for key, checks in ROUTE_RULES.items()
        for check in checks
        if check.method == "get" and check.expect.get("radiologist") == 200
    }


def test_every_read_route_is_audited_or_says_why_not() -> None:
    readable = set(_reads_of_a_radiologist())
    unclassified = sorted(readable - AUDITED.keys() - NO_PATIENT_DATA.keys())
    assert not unclassified, (
        "Routes a radiologist reads that are neither audited nor said to hold no patient data: "
        f"{unclassified}. Fetch the data through web.clinical.audit.reads and add the route to AUDITED "
        "(or, if it truly shows no patient data, to NO_PATIENT_DATA with why)."
    )
    gone = sorted((AUDITED.keys() | NO_PATIENT_DATA.keys()) - readable)
    assert not gone, f"Entries for routes that are gone or no longer readable: {gone}"
    assert not AUDITED.keys() & NO_PATIENT_DATA.keys()
    assert set(AUDITED.values()) <= READ_ACTIONS


def _read_rows() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action__in=READ_ACTIONS).select_related("patient"))


@pytest.mark.django_db
@pytest.mark.parametrize("key", sorted(AUDITED))
def test_each_read_writes_one_audit_row_naming_the_patient(key: str, people, objects) -> None:  # noqa: F811
    client = Client()
    client.force_login(people["radiologist"])
    path = _reads_of_a_radiologist()[key].format(**objects)
    before = {e.pk for e in _read_rows()}

    assert client.get(path).status_code == 200
    new = [e for e in _read_rows() if e.pk not in before]

    assert [e.action for e in new] == [AUDITED[key]], f"GET {path}"
    [event] = new
    assert event.actor_label == "dr.rad"
    assert event.patient is not None and event.patient.patient_id == "MRN-ROLES"
    assert event.study_id == objects["study"]
    if AUDITED[key] not in RECORDED_ELSEWHERE:  # a download is a copy each time
        assert client.get(path).status_code == 200
        assert len(_read_rows()) == len(before) + 1, f"GET {path} again: the same action, no new row"


def test_a_person_without_the_right_leaves_no_read_row(people: dict[str, Any], objects) -> None:  # noqa: F811
    client = Client()
    client.force_login(people["no_role"])
    for key, path in _reads_of_a_radiologist().items():
        if key in AUDITED:
            assert client.get(path.format(**objects)).status_code == 403, path
    assert _read_rows() == []


def test_admin_reads_of_counts_name_no_patient_and_write_no_read_row(people, objects) -> None:  # noqa: F811
    client = Client()
    client.force_login(people["admin"])
    for key in ADMIN_READS_WITHOUT_PATIENT_DATA:
        [check] = [c for c in ROUTE_RULES[key] if c.method == "get"]
        assert (check.expect["admin"], check.expect["radiologist"]) == (200, 403), key
        response = client.get(check.path.format(**objects))
        assert response.status_code == 200, key
        assert b"MRN-ROLES" not in response.content, key
    assert _read_rows() == []
