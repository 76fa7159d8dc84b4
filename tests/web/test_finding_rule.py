"""One finding rule: every kind of result (finding, applicable negative, not applicable,
experimental, placeholder, failed, queued) built in the database for several conditions and
studies, and every place that decides something from them checked against the same table: the
model property, core's flag, the study's AI flag, the worklist order, the row's strongest result
(page and API), each condition filter, the PDF rows, the SR, the batch summary and the verdict
counts. Then the user-visible cases, and the body-region filter."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from core.analysis import AnalysisOutcome
from core.conditions import CONDITIONS
from tests.web.fixtures import with_role
from web.clinical.models import Analysis, Annotation, Batch, Image, Patient, Study
from web.clinical.worklist.patients import patient_save
from web.clinical.worklist.states import studies_refresh

_seq = itertools.count(1)
SUCCEEDED, FAILED, QUEUED = Analysis.State.SUCCEEDED, Analysis.State.FAILED, Analysis.State.QUEUED

# Each kind of stored result, as the job leaves it (a not-applicable label is stored as None;
# "not_applicable_labelled" keeps the label, as a row written by another path might).
KINDS: dict[str, dict[str, Any]] = {
    "finding": {"state": SUCCEEDED, "positive": True, "applicable": True},
    "negative": {"state": SUCCEEDED, "positive": False, "applicable": True},
    "not_applicable": {
        "state": SUCCEEDED,
        "positive": None,
        "applicable": False,
        "not_applicable_reason": "an adult's chest film",
    },
    "not_applicable_labelled": {
        "state": SUCCEEDED,
        "positive": True,
        "applicable": False,
        "not_applicable_reason": "an adult's chest film",
    },
    "experimental": {
        "state": SUCCEEDED,
        "positive": True,
        "applicable": True,
        "experimental": True,
        "experimental_reason": "trial",
    },
    "placeholder": {
        "state": SUCCEEDED,
        "positive": True,
        "applicable": True,
        "is_placeholder": True,
        "placeholder_reason": "no artifact",
    },
    "failed": {"state": FAILED, "error_message": "the model could not load"},
    "queued": {"state": QUEUED},
}
# The kind each stored kind is by the rule (None: not finished, no result).
RULE_KIND = {
    "finding": "finding",
    "negative": "negative",
    "not_applicable": "not_applicable",
    "not_applicable_labelled": "not_applicable",
    "experimental": "experimental",
    "placeholder": "placeholder",
    "failed": None,
    "queued": None,
}
LABELS = {
    "finding": "AI flag",
    "negative": "negative",
    "experimental": "experimental, not a flag",
    "not_applicable": "not applicable to this image",
    "placeholder": "placeholder, no diagnostic value",
}


@dataclass(frozen=True)
class Case:
    """One study: its body part, hours waiting (under the 4 h cap) and, per image, its results
    [(condition, kind, probability)]."""

    mrn: str
    body_part: str
    hours: float
    images: tuple[tuple[tuple[str, str, float], ...], ...]
    flagged: bool
    strongest: tuple[str, str] | None  # (condition, kind) the row shows


CASES = (
    # Adult chests: the pneumonia model (children's) says not applicable; in the second its
    # label is kept (positive), which must not flag the study either.
    Case(
        "MRN-ADULT-FLAG",
        "CHEST",
        0.5,
        ((("pneumonia", "not_applicable", 0.97), ("cardiomegaly", "finding", 0.8)),),
        True,
        ("cardiomegaly", "finding"),
    ),
    Case(
        "MRN-ADULT-NEG",
        "CHEST",
        0.6,
        ((("pneumonia", "not_applicable_labelled", 0.97), ("cardiomegaly", "negative", 0.3)),),
        False,
        ("cardiomegaly", "negative"),
    ),
    Case(
        "MRN-CHILD",
        "CHEST",
        0.1,
        ((("pneumonia", "finding", 0.9), ("cardiomegaly", "negative", 0.4)),),
        True,
        ("pneumonia", "finding"),
    ),
    Case(
        "MRN-TRIAL",
        "CHEST",
        0.7,
        ((("pneumonia", "experimental", 0.95), ("cardiomegaly", "placeholder", 0.99)),),
        False,
        ("pneumonia", "experimental"),
    ),
    Case(
        "MRN-PH-NEG",
        "CHEST",
        0.8,
        ((("cardiomegaly", "placeholder", 0.99), ("pneumonia", "negative", 0.1)),),
        False,
        ("pneumonia", "negative"),
    ),
    Case(
        "MRN-KNEE",
        "KNEE",
        0.2,
        ((("knee_osteoarthritis", "finding", 0.7),), (("fracture", "negative", 0.45),)),
        True,
        ("knee_osteoarthritis", "finding"),
    ),
    Case(
        "MRN-HAND",
        "HAND",
        0.9,
        ((("fracture", "failed", 0.0),), (("fracture", "queued", 0.0),)),
        False,
        None,
    ),
    Case(
        "MRN-NA-ONLY",
        "CHEST",
        1.0,
        ((("pneumonia", "not_applicable", 0.97),),),
        False,
        ("pneumonia", "not_applicable"),
    ),
)
# Triage order: findings by urgency of the condition then probability, then the longest waiting.
EXPECTED_ORDER = [
    "MRN-CHILD",
    "MRN-ADULT-FLAG",
    "MRN-KNEE",
    "MRN-NA-ONLY",
    "MRN-HAND",
    "MRN-PH-NEG",
    "MRN-TRIAL",
    "MRN-ADULT-NEG",
]


def _image(study: Study, n: int) -> Image:
    return Image.objects.create(
        study=study,
        sop_instance_uid=f"1.2.826.0.9.{n}",
        file=f"images/f{n}.png",
        format="png",
        size_bytes=10,
        sha256=f"{n:064d}",
        width=8,
        height=8,
    )


def _result(image: Image, condition: str, kind: str, probability: float, **extra: Any) -> Analysis:
    fields = dict(KINDS[kind])
    if fields["state"] == SUCCEEDED:
        fields.update(probability=probability, threshold=0.5, finished_at=timezone.now())
    return Analysis.objects.create(
        image=image,
        condition=condition,
        model_id=f"{condition}-test",
        model_sha256="cd" * 32,
        **fields,
        **extra,
    )


def build(case: Case, *, batch: Batch | None = None) -> Study:
    n = next(_seq)
    patient = Patient.objects.create(patient_id=case.mrn, name="Doe^Jane")
    study = Study.objects.create(
        patient=patient,
        study_instance_uid=f"1.2.826.0.8.{n}",
        accession_number=f"ACC-{n}",
        body_part=case.body_part,
        study_date=dt.date(2026, 11, 25),
        status=Study.Status.AI_COMPLETE,
    )
    Study.objects.filter(pk=study.pk).update(created_at=timezone.now() - dt.timedelta(hours=case.hours))
    for i, results in enumerate(case.images):
        image = _image(study, n * 10 + i)
        for condition, kind, probability in results:
            _result(image, condition, kind, probability, batch=batch)
    studies_refresh(studies=[study])  # as when its analyses end: the flag and the finding's urgency
    return study


@pytest.fixture()
def radiologist_clients(db, django_user_model) -> tuple[APIClient, Client, Any]:
    user = with_role(django_user_model.objects.create_user("dr.grey"), "radiologist")
    api, browser = APIClient(), Client()
    api.force_login(user)
    browser.force_login(user)
    return api, browser, user


def _ids(api: APIClient, **params: Any) -> list[str]:
    response = api.get("/api/studies/", params)
    assert response.status_code == 200, response.content
    return [row["patient"]["patient_id"] for row in response.json()["results"]]


def _outcome_of(analysis: Analysis) -> AnalysisOutcome:
    """core's outcome with the same fields (core's label is a bool: a stored None was False)."""
    return AnalysisOutcome(
        condition=analysis.condition,
        probability=float(analysis.probability or 0.0),
        positive=bool(analysis.positive),
        threshold=0.5,
        model_id=analysis.model_id,
        model_sha256=analysis.model_sha256,
        architecture="mobilenetv2",
        is_placeholder=analysis.is_placeholder,
        placeholder_reason=analysis.placeholder_reason or None,
        experimental=analysis.experimental,
        experimental_reason=analysis.experimental_reason or None,
        gradcam_method="gradcam",
        gradcam_layer=None,
        heatmap=np.zeros((2, 2), dtype=np.float32),
        applicable=analysis.applicable is not False,
    )


def _sr_results(image: Image) -> list[tuple[str, str]]:
    """(condition label, AI result words) of each finding in the image's SR, in order."""
    from web.clinical.reporting.dicom_sr import image_structured_report

    out = []
    for item in image_structured_report(image=image).ContentSequence[1:]:
        named = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in item.ContentSequence}
        out.append((named["Condition"].TextValue, named["AI result"].TextValue))
    return out


def test_every_place_that_reads_a_result_follows_the_one_finding_rule(radiologist_clients) -> None:
    from web.clinical.analysis.findings import current_results, result_kind
    from web.clinical.batches.summary import batch_summary
    from web.clinical.reporting.pdf import report_findings
    from web.clinical.worklist.states import studies_refresh

    api, browser, user = radiologist_clients
    batch = Batch.objects.create(source=Batch.Source.FOLDER, source_name="table")
    studies = {case.mrn: build(case, batch=batch) for case in CASES}
    kinds = {a.pk: kind for case in CASES for a, kind in _stored(studies[case.mrn], case)}

    # The model property, core's flag and the rule's kind agree on every stored result.
    for analysis in Analysis.objects.all():
        kind = RULE_KIND[kinds[analysis.pk]]
        assert result_kind(analysis) == kind, kinds[analysis.pk]
        assert analysis.is_finding is (kind == "finding"), kinds[analysis.pk]
        if analysis.state == SUCCEEDED:
            assert _outcome_of(analysis).flag is analysis.is_finding, kinds[analysis.pk]

    # The study's flag, kept by the services.
    studies_refresh(studies=list(Study.objects.all()))
    flagged = {s.patient.patient_id for s in Study.objects.filter(ai_flagged=True).select_related("patient")}
    assert flagged == {c.mrn for c in CASES if c.flagged}

    # The worklist order and each row's strongest result, over the API and on the page.
    assert _ids(api) == EXPECTED_ORDER
    rows = {row["patient"]["patient_id"]: row for row in api.get("/api/studies/").json()["results"]}
    page = browser.get("/")
    page_rows = {s.patient.patient_id: s for s in page.context["studies"]}
    html = page.content.decode()
    for case in CASES:
        record = rows[case.mrn]["strongest_result"]
        assert page_rows[case.mrn].strongest_result == record, case.mrn
        row_html = html[html.index(f'data-study-id="{studies[case.mrn].pk}"') :].split("</tr>")[0]
        if case.strongest is None:
            assert record is None, case.mrn
            continue
        condition, kind = case.strongest
        assert (record["condition"], record["kind"], record["label"]) == (condition, kind, LABELS[kind]), (
            case.mrn
        )
        assert record["finding"] is (kind == "finding") and rows[case.mrn]["ai_flagged"] is case.flagged
        assert condition in row_html and LABELS[kind] in row_html, case.mrn
        if kind in ("placeholder", "not_applicable"):
            assert record["probability"] is None and record["positive"] is None
            assert "0.97" not in row_html and "0.99" not in row_html

    # Each condition filter, with and without positive; positive alone.
    all_results = [
        (case.mrn, condition, RULE_KIND[kind])
        for case in CASES
        for image in case.images
        for condition, kind, _ in image
    ]
    assert set(_ids(api, positive=1)) == {c.mrn for c in CASES if c.flagged}
    for code in CONDITIONS:
        has = {mrn for mrn, condition, _ in all_results if condition == code}
        found = {mrn for mrn, condition, kind in all_results if condition == code and kind == "finding"}
        assert set(_ids(api, condition=code)) == has, code
        assert set(_ids(api, condition=code, positive=1)) == found, code

    # The PDF rows and the SR: the same current results, the same words for each kind.
    sr_words = {"finding": "positive", "negative": "negative"}
    pdf_words = {"finding": "Positive (AI flag)", "negative": "Negative"}
    for case in CASES:
        study = studies[case.mrn]
        rows_pdf = [(f.condition, f.ai_result) for f in report_findings(study)]
        images = list(study.images.order_by("created_at", "id"))
        current = [a for image in images for a in current_results(image.analyses.all())]
        if not current:
            assert rows_pdf == []
            continue
        sr = [
            pair
            for image in images
            if image.analyses.filter(state=SUCCEEDED).exists()
            for pair in _sr_results(image)
        ]
        assert (
            [c for c, _ in rows_pdf] == [c for c, _ in sr] == [CONDITIONS[a.condition].label for a in current]
        )
        for analysis, (_, pdf_result), (_, sr_result) in zip(current, rows_pdf, sr, strict=True):
            kind = result_kind(analysis)
            assert pdf_result == pdf_words.get(kind, pdf_result) and sr_result == sr_words.get(
                kind, sr_result
            )
            assert (pdf_result == "Positive (AI flag)") is (sr_result == "positive") is analysis.is_finding
        assert any(r == "Positive (AI flag)" for _, r in rows_pdf) is case.flagged, case.mrn

    # The batch summary counts findings, nothing else.
    positives = batch_summary(batch)["positives"]
    expected = {code: 0 for _, code, _ in all_results}
    for _, code, kind in all_results:
        expected[code] += kind == "finding"
    assert positives == expected

    # Verdict counts say what the AI said, by the same rule.
    for analysis in Analysis.objects.filter(state=SUCCEEDED, is_placeholder=False):
        Annotation.objects.create(image=analysis.image, author=user, analysis=analysis, verdict="agree")
    counts = api.get("/api/verdicts/counts/").json()
    by_kind: dict[tuple[str, str], int] = {}
    for analysis in Analysis.objects.filter(state=SUCCEEDED, is_placeholder=False):
        key = (analysis.condition, result_kind(analysis) or "")
        by_kind[key] = by_kind.get(key, 0) + 1
    assert {(c["condition"], c["ai_result"]): c["count"] for c in counts} == by_kind


def _stored(study: Study, case: Case) -> list[tuple[Analysis, str]]:
    images = list(study.images.order_by("created_at", "id"))
    out = []
    for image, results in zip(images, case.images, strict=True):
        for condition, kind, _ in results:
            analysis = image.analyses.get(condition=condition, state=KINDS[kind]["state"])
            out.append((analysis, kind))
    return out


def test_the_pdf_and_the_sr_report_the_same_current_result_of_a_rerun(radiologist_clients) -> None:
    """A re-run: the earlier request finished last. Both documents report the one that finished
    last, whatever the order of the requests."""
    from web.clinical.reporting.pdf import report_findings

    study = build(Case("MRN-RERUN", "CHEST", 1, ((),), False, None))
    image = study.images.get()
    first = _result(image, "pneumonia", "finding", 0.85)
    second = _result(image, "pneumonia", "negative", 0.2)
    Analysis.objects.filter(pk=first.pk).update(finished_at=timezone.now() + dt.timedelta(minutes=5))

    assert [(f.condition, f.ai_result) for f in report_findings(study)] == [
        ("Pneumonia", "Positive (AI flag)")
    ]
    assert _sr_results(image) == [("Pneumonia", "positive")]
    assert second.pk > first.pk


@pytest.mark.parametrize(
    ("later", "stands"),
    [("negative", False), ("not_applicable", False), ("experimental", True), ("placeholder", True)],
)
def test_a_later_reading_of_a_finding_is_read_the_same_by_the_flag_the_row_the_filter_and_the_reports(
    radiologist_clients, later: str, stands: bool
) -> None:
    """A finding, then another reading of the same condition on the same image. A model in
    clinical use replaces it (negative, or not applicable); an experimental or placeholder run
    does not. Whichever it is, the flag, the row, the filter, the PDF, the SR and the batch
    summary all say the same."""
    from web.clinical.batches.summary import batch_summary
    from web.clinical.reporting.pdf import report_findings
    from web.clinical.worklist.states import studies_refresh

    api, browser, _ = radiologist_clients
    batch = Batch.objects.create(source=Batch.Source.FOLDER, source_name="rerun")
    study = build(Case(f"MRN-LATER-{later}", "CHEST", 1, ((),), False, None))
    image = study.images.get()
    first = _result(image, "pneumonia", "finding", 0.9, batch=batch)
    second = _result(image, "pneumonia", later, 0.95, batch=batch)
    Analysis.objects.filter(pk=first.pk).update(finished_at=timezone.now() - dt.timedelta(minutes=5))
    shown = "finding" if stands else later

    studies_refresh(studies=[study])
    study.refresh_from_db()
    assert study.ai_flagged is stands
    row = api.get("/api/studies/").json()["results"][0]
    assert (row["strongest_result"]["id"], row["strongest_result"]["kind"]) == (
        (first if stands else second).pk,
        shown,
    )
    assert bool(_ids(api, condition="pneumonia", positive=1)) is stands
    assert bool(_ids(api, positive=1)) is stands
    html = browser.get("/").content.decode()
    row_html = html[html.index(f'data-study-id="{study.pk}"') :].split("</tr>")[0]
    assert LABELS[shown] in row_html
    pdf = [f.ai_result for f in report_findings(study)]
    assert len(pdf) == 1 and (pdf[0] == "Positive (AI flag)") is stands
    sr = _sr_results(image)
    assert len(sr) == 1 and (sr[0][1] == "positive") is stands
    assert batch_summary(batch)["positives"] == {"pneumonia": int(stands)}


# --------------------------------------------------------------------------- what users saw


def test_an_adult_chest_shows_its_cardiomegaly_result_not_the_not_applicable_pneumonia(
    radiologist_clients,
) -> None:
    api, browser, _ = radiologist_clients
    flagged = build(CASES[0])  # cardiomegaly: a finding
    negative = build(CASES[1])  # cardiomegaly: negative

    rows = {r["id"]: r for r in api.get("/api/studies/").json()["results"]}
    for study, label in ((flagged, "AI flag"), (negative, "negative")):
        strongest = rows[study.pk]["strongest_result"]
        assert (strongest["condition"], strongest["label"]) == ("cardiomegaly", label)
        # The study page lists the applicable cardiomegaly card above the not-applicable one.
        page = browser.get(f"/studies/{study.pk}/").content.decode()
        assert page.index('data-condition="cardiomegaly"') < page.index('data-condition="pneumonia"')
    html = browser.get("/").content.decode()
    row = html[html.index(f'data-study-id="{negative.pk}"') :].split("</tr>")[0]
    assert "cardiomegaly" in row and "not applicable" not in row


def test_a_condition_with_positive_lists_only_findings_for_that_condition(radiologist_clients) -> None:
    api, browser, _ = radiologist_clients
    build(CASES[2])  # a child flagged for pneumonia, cardiomegaly negative
    build(CASES[5])  # a knee flagged for osteoarthritis, fracture negative

    assert _ids(api, condition="cardiomegaly", positive=1) == []
    assert _ids(api, condition="fracture", positive=1) == []
    assert _ids(api, condition="pneumonia", positive=1) == ["MRN-CHILD"]
    assert _ids(api, condition="knee_osteoarthritis", positive=1) == ["MRN-KNEE"]
    assert _ids(api, condition="cardiomegaly") == ["MRN-CHILD"]  # has a result for it
    page = browser.get("/", {"condition": "cardiomegaly", "positive": "1"}).content.decode()
    assert "MRN-CHILD" not in page


# --------------------------------------------------------------------------- body region


def test_the_region_filter_offers_and_matches_what_the_rows_show(radiologist_clients) -> None:
    api, browser, _ = radiologist_clients
    for mrn, body_part in (
        ("MRN-CHEST", "CHEST"),
        ("MRN-PNG-LIMB", "EXTREMITY"),
        ("MRN-HAND", "HAND"),
        ("MRN-KNEE", "KNEE"),
        ("MRN-SKULL", "SKULL"),
    ):
        build(Case(mrn, body_part, 1, ((),), False, None))

    rows = {r["patient"]["patient_id"]: r["region"] for r in api.get("/api/studies/").json()["results"]}
    assert rows == {
        "MRN-CHEST": "CHEST",
        "MRN-PNG-LIMB": "EXTREMITY",
        "MRN-HAND": "EXTREMITY",
        "MRN-KNEE": "KNEE",
        "MRN-SKULL": "OTHER",
    }
    for region in ("CHEST", "EXTREMITY", "KNEE", "OTHER"):
        assert sorted(_ids(api, region=region)) == sorted(m for m, r in rows.items() if r == region), region
    # The filter's earlier values are still understood; an unknown one is refused, saying why.
    assert sorted(_ids(api, region="limb")) == ["MRN-HAND", "MRN-PNG-LIMB"]
    assert _ids(api, region="chest") == ["MRN-CHEST"]
    refused = api.get("/api/studies/", {"region": "brain"})
    assert refused.status_code == 400
    assert (
        refused.json()["error"]
        == "region: Unknown body region 'brain'; use one of CHEST, KNEE, EXTREMITY, OTHER."
    )

    page = browser.get("/", {"region": "extremity"}).content.decode()
    options = page[page.index('<select name="region">') :].split("</select>")[0]
    assert all(f'<option value="{r}"' in options for r in ("CHEST", "EXTREMITY", "KNEE", "OTHER"))
    assert '<option value="EXTREMITY" selected>' in options
    assert "MRN-HAND" in page and "MRN-CHEST" not in page
    hand = page[page.index("MRN-HAND") :].split("</tr>")[0]
    assert "HAND" in hand and "EXTREMITY" in hand


def test_the_alert_filter_lists_open_stat_studies_and_the_most_urgent_findings(radiologist_clients) -> None:
    api, _, _ = radiologist_clients
    child = build(CASES[2])  # a pneumonia finding: the most urgent conditions
    adult = build(CASES[0])  # a cardiomegaly finding: urgent, not the most
    stat = build(Case("MRN-STAT", "CHEST", 0.2, ((("pneumonia", "negative", 0.1),),), False, None))
    done = build(Case("MRN-STAT-DONE", "CHEST", 0.3, ((("pneumonia", "finding", 0.9),),), True, None))
    Study.objects.filter(pk__in=[stat.pk, done.pk]).update(priority=Study.Priority.STAT)
    Study.objects.filter(pk=done.pk).update(status=Study.Status.REVIEWED)

    assert set(_ids(api, alert=1)) == {child.patient.patient_id, stat.patient.patient_id}
    assert adult.patient.patient_id not in _ids(api, alert=1)
    assert api.get("/api/studies/", {"alert": "sometimes"}).status_code == 400


def test_the_worklist_sorts_by_a_column_both_ways_and_refuses_an_unknown_one(radiologist_clients) -> None:
    api, browser, _ = radiologist_clients
    studies = [build(case) for case in CASES[:3]]
    ages = {
        "MRN-ADULT-FLAG": dt.date(1950, 1, 1),
        "MRN-ADULT-NEG": dt.date(1990, 1, 1),
        "MRN-CHILD": dt.date(2022, 5, 1),
    }
    for study in studies:  # a patient's fields change through their one writer (and its studies' copies)
        study.patient.birth_date = ages[study.patient.patient_id]
        patient_save(patient=study.patient)

    assert _ids(api, sort="age") == ["MRN-CHILD", "MRN-ADULT-NEG", "MRN-ADULT-FLAG"]  # youngest first
    assert _ids(api, sort="-age") == ["MRN-ADULT-FLAG", "MRN-ADULT-NEG", "MRN-CHILD"]
    refused = api.get("/api/studies/", {"sort": "password"})
    assert refused.status_code == 400 and "sort: use one of" in refused.json()["error"]
    page = browser.get("/", {"sort": "age"}).content.decode()
    child = page[page.index("MRN-CHILD") :].split("</tr>")[0]
    assert '<td class="age">4 y</td>' in child or '<td class="age">55 mo</td>' in child
    assert 'aria-sort="ascending"' in page


def test_previous_and_next_walk_the_studies_still_to_be_read(radiologist_clients) -> None:
    _, browser, _ = radiologist_clients
    _, done, _ = (build(case) for case in CASES[:3])
    Study.objects.filter(pk=done.pk).update(status=Study.Status.REVIEWED)
    order = [s for s in _ids_in_order(browser) if s != done.pk]

    assert len(order) == 2  # the child's pneumonia, then the adult's cardiomegaly; the read one last
    page = browser.get(f"/studies/{order[1]}/").content.decode()
    assert f'id="previous-study" rel="prev" href="/studies/{order[0]}/"' in page
    assert f"/studies/{done.pk}/" not in page  # read: not on the way
    assert 'id="next-study"' not in page


def _ids_in_order(browser: Client) -> list[int]:
    return [s.pk for s in browser.get("/").context["studies"]]
