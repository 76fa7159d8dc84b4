"""Model monitoring against the records: every count the API gives (results of every kind,
verdicts of every kind, AI-missed records) checked against the rows themselves, read with the
in-memory finding rule, for several models and two windows; drift alerts raised by a shifted
score distribution and by a flag rate outside its band and not by one inside it; an alert
audited once, shown to admins on every page, and cleared when the model or its reference
changes; the weekly summary as CSV and PDF."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from tests.web.fixtures import with_role
from web.clinical.analysis.findings import result_kind
from web.clinical.models import (
    Analysis,
    Annotation,
    AuditEvent,
    DriftAlert,
    Image,
    ModelReference,
    Patient,
    Study,
)

pytestmark = pytest.mark.django_db

_seq = itertools.count(1)
SHA_A, SHA_A2, SHA_B = "a" * 64, "c" * 64, "b" * 64
KIND_FIELDS: dict[str, dict[str, Any]] = {
    "finding": {"positive": True, "applicable": True},
    "negative": {"positive": False, "applicable": True},
    "not_applicable": {"positive": None, "applicable": False},
    "experimental": {"positive": True, "applicable": True, "experimental": True},
    "placeholder": {"positive": True, "applicable": True, "is_placeholder": True},
}


def _image(study: Study | None = None) -> Image:
    n = next(_seq)
    if study is None:
        patient = Patient.objects.create(patient_id=f"MRN-MON-{n}")
        study = Study.objects.create(patient=patient, study_instance_uid=f"1.2.3.{n}")
    return Image.objects.create(
        study=study,
        sop_instance_uid=f"1.2.4.{n}",
        file=f"images/x/{n}.dcm",
        format="dicom",
        size_bytes=1,
        sha256=f"{n:064x}",
        width=8,
        height=8,
    )


def result(
    kind: str,
    *,
    model_id: str = "pneu-a",
    sha: str = SHA_A,
    condition: str = "pneumonia",
    days_ago: float = 1,
    probability: float = 0.7,
    image: Image | None = None,
    state: str = Analysis.State.SUCCEEDED,
) -> Analysis:
    fields = dict(KIND_FIELDS.get(kind, {}))
    return Analysis.objects.create(
        image=image or _image(),
        condition=condition,
        model_id=model_id,
        model_sha256=sha,
        state=state,
        probability=probability,
        threshold=0.5,
        finished_at=timezone.now() - dt.timedelta(days=days_ago),
        **fields,
    )


@pytest.fixture()
def people(django_user_model) -> dict[str, Any]:
    return {
        "admin": with_role(django_user_model.objects.create_user("mon.admin"), "admin"),
        "radiologist": with_role(django_user_model.objects.create_user("mon.rad"), "radiologist"),
        "radiologist2": with_role(django_user_model.objects.create_user("mon.rad2"), "radiologist"),
        "technologist": with_role(django_user_model.objects.create_user("mon.tech"), "technologist"),
    }


@pytest.fixture()
def admin_client(people) -> Client:
    client = Client()
    client.force_login(people["admin"])
    return client


@pytest.fixture()
def model_files(settings, tmp_path: Path):
    """A registry folder of our own: models/<id>/scores.json and metrics.json are read there."""
    settings.RADTRIAGE_REGISTRY = tmp_path / "registry.json"

    def write(model_id: str, *, scores: list[float] | None = None, sha: str = SHA_A, flag_rate: float = 0.0):
        folder = tmp_path / "models" / model_id
        folder.mkdir(parents=True, exist_ok=True)
        if scores is not None:
            document = {"model_id": model_id, "sha256": sha, "computed_at": "2025-01-01T00:00:00Z"}
            document["splits"] = {"val": {"scores": scores, "labels": [0] * len(scores)}}
            (folder / "scores.json").write_text(json.dumps(document))
        else:
            positive = round(1000 * flag_rate)
            confusion = {"tp": positive, "fp": 0, "tn": 1000 - positive, "fn": 0}
            (folder / "metrics.json").write_text(json.dumps({"metrics": {"val": {"confusion": confusion}}}))

    return write


UNIFORM = [(i + 0.5) / 1000 for i in range(1000)]  # validation scores: flag rate 50% at 0.5


def _api(client: Client, days: int) -> dict[tuple[str, str], dict[str, Any]]:
    response = client.get(f"/api/monitoring/models/?days={days}")
    assert response.status_code == 200, response.content
    return {(m["model_id"], m["model_sha256"]): m for m in response.json()}


def _expected(days: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The numbers, from the rows one by one with the in-memory rule (result_kind)."""
    since = timezone.now() - dt.timedelta(days=days)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for a in Analysis.objects.filter(state=Analysis.State.SUCCEEDED, finished_at__gt=since):
        entry = out.setdefault(
            (a.model_id, a.model_sha256),
            {"analysed": 0, "images": set(), "condition": a.condition}
            | {k: 0 for k in KIND_FIELDS}
            | {"agree": 0, "disagree": 0, "uncertain": 0},
        )
        kind = result_kind(a)
        entry["analysed"] += 1
        entry[kind] += 1
        entry["images"].add(a.image_id)
        if kind == "finding":
            for verdict in a.annotations.exclude(verdict="").values_list("verdict", flat=True):
                entry[verdict] += 1
    for entry in out.values():
        entry["missed"] = Annotation.objects.filter(
            missed_condition=entry["condition"], image_id__in=entry["images"]
        ).count()
    return out


def _verdict(analysis: Analysis, author: Any, verdict: str) -> None:
    Annotation.objects.create(
        image=analysis.image,
        author=author,
        analysis=analysis,
        verdict=verdict,
        verdict_reason="false_positive" if verdict == "disagree" else "",
    )


def _missed(image: Image, author: Any, condition: str = "pneumonia") -> None:
    shapes = [{"type": "rect", "x": 1, "y": 1, "w": 2, "h": 2}]
    Annotation.objects.create(image=image, author=author, missed_condition=condition, shapes=shapes)


MODELS_AB = (("pneu-a", SHA_A, "pneumonia"), ("card-b", SHA_B, "cardiomegaly"))


def test_every_count_is_what_the_records_say_for_each_model_and_window(people, admin_client, model_files):
    rad, rad2 = people["radiologist"], people["radiologist2"]
    rows: dict[str, list[Analysis]] = {}
    # Model A (two checksums) and model B: every kind of result, in and out of both windows.
    for days_ago in (2, 12, 45):
        for kind in KIND_FIELDS:
            for model_id, sha, condition in MODELS_AB:
                rows.setdefault(f"{model_id}-{kind}", []).append(
                    result(kind, model_id=model_id, sha=sha, condition=condition, days_ago=days_ago)
                )
    result("finding", sha=SHA_A2, days_ago=1)
    result("negative", sha=SHA_A2, days_ago=1)
    # Unfinished and failed runs are no result.
    result("finding", days_ago=1, state=Analysis.State.FAILED)
    result("finding", days_ago=1, state=Analysis.State.QUEUED)
    # Verdicts of every kind on findings (two radiologists) and on a negative.
    for i, analysis in enumerate(rows["pneu-a-finding"]):
        _verdict(analysis, rad, ("agree", "disagree", "uncertain")[i % 3])
        _verdict(analysis, rad2, "agree")
    _verdict(rows["card-b-finding"][0], rad, "disagree")
    _verdict(rows["pneu-a-negative"][0], rad, "disagree")
    _verdict(rows["pneu-a-experimental"][0], rad, "agree")  # not a finding: no agreement count
    # AI missed: on an image model A read (in window, old), twice on one image, another condition.
    _missed(rows["pneu-a-negative"][0].image, rad)
    _missed(rows["pneu-a-negative"][0].image, rad2)
    _missed(rows["pneu-a-negative"][1].image, rad)
    _missed(rows["pneu-a-negative"][2].image, rad)  # its image was read 45 days ago only
    _missed(rows["card-b-negative"][0].image, rad, condition="pneumonia")  # B is not a pneumonia model
    _missed(_image(), rad)  # an image no model read

    for days in (7, 30):
        got, expected = _api(admin_client, days), _expected(days)
        assert set(got) == set(expected)
        for key, want in expected.items():
            m = got[key]
            assert m["condition"] == want["condition"]
            for field in ("analysed", "not_applicable", "experimental", "placeholder", "agree", "disagree"):
                assert m[field] == want[field], (days, key, field)
            assert m["uncertain"] == want["uncertain"], (days, key)
            assert m["findings"] == want["finding"], (days, key)
            assert m["missed"] == want["missed"], (days, key)
            judged = want["agree"] + want["disagree"]
            assert m["agreement"] == (want["agree"] / judged if judged else None)
            scored = want["finding"] + want["negative"] + want["experimental"]
            assert m["flag_rate"] == pytest.approx((want["finding"] + want["experimental"]) / scored)
    # Spelled out for one case, as a reader checks it: model A's first checksum, 30 days.
    a30 = _api(admin_client, 30)[("pneu-a", SHA_A)]
    assert (a30["analysed"], a30["findings"], a30["missed"]) == (10, 2, 3)
    assert (a30["agree"], a30["disagree"], a30["uncertain"]) == (3, 1, 0)
    assert a30["verdicts_on_negatives"] == {"agree": 0, "disagree": 1, "uncertain": 0}
    assert _api(admin_client, 7)[("pneu-a", SHA_A)]["missed"] == 2


def _scored_results(n: int, scores: list[float], *, model_id: str = "pneu-a", sha: str = SHA_A) -> None:
    for i in range(n):
        p = scores[i % len(scores)]
        kind = "finding" if p >= 0.5 else "negative"
        result(kind, model_id=model_id, sha=sha, probability=p, days_ago=1 + i / n)


def test_a_shifted_score_distribution_raises_a_drift_alert(admin_client, model_files):
    model_files("pneu-a", scores=UNIFORM)
    # Half the scores near 0, half near 1: the flag rate stays at 50%, the distribution does not.
    _scored_results(200, [0.02, 0.04, 0.96, 0.98])
    [m] = _api(admin_client, 30).values()
    assert m["reference"]["source"] == "validation"
    assert m["flag_rate"] == pytest.approx(0.5)
    assert m["expected_flag_rate_interval"][0] < 0.5 < m["expected_flag_rate_interval"][1]
    assert m["psi"] > 0.25 and m["psi_level"] == "major"
    assert m["drift_alert"] is True and [r["reason"] for r in m["drift_reasons"]] == ["psi"]


def test_a_flag_rate_outside_its_band_raises_a_drift_alert(admin_client, model_files):
    model_files("pneu-a", flag_rate=0.10)  # no scores.json: the validation flag rate only
    _scored_results(200, [0.3, 0.6])  # 50% flagged
    [m] = _api(admin_client, 30).values()
    assert m["reference"]["source"] == "metrics"
    assert "no validation reference" in m["reference"]["label"]
    assert m["psi"] is None
    assert m["expected_flag_rate"] == pytest.approx(0.10)
    assert m["expected_flag_rate_interval"][1] < 0.5
    assert m["drift_alert"] is True and [r["reason"] for r in m["drift_reasons"]] == ["flag_rate"]


def test_a_flag_rate_inside_its_band_and_a_steady_distribution_raise_nothing(admin_client, model_files):
    model_files("pneu-a", scores=UNIFORM)
    _scored_results(200, [(i + 0.5) / 50 for i in range(50)])  # as the validation scores
    [m] = _api(admin_client, 30).values()
    low, high = m["expected_flag_rate_interval"]
    assert low <= m["flag_rate"] <= high
    assert m["psi"] < 0.1 and m["psi_level"] == "stable"
    assert m["drift_alert"] is False and m["drift_reasons"] == []
    assert DriftAlert.objects.count() == 0


def test_without_any_reference_the_answer_says_so(admin_client, model_files):
    _scored_results(60, [0.3, 0.6])
    [m] = _api(admin_client, 30).values()
    assert m["reference"]["label"] == "no validation reference"
    assert m["expected_flag_rate"] is None and m["psi"] is None and m["drift_alert"] is False


def _alert_rows(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


def test_an_alert_is_audited_once_shown_to_admins_and_cleared_when_the_model_changes(
    people, admin_client, model_files
):
    model_files("pneu-a", scores=UNIFORM)
    _scored_results(200, [0.02, 0.98])
    _api(admin_client, 30)
    _api(admin_client, 30)
    [alert] = DriftAlert.objects.filter(cleared_at__isnull=True)
    assert (alert.model_id, alert.reason) == ("pneu-a", "psi")
    [raised] = _alert_rows("monitoring.drift_alert")
    assert raised.detail["model_id"] == "pneu-a" and raised.detail["reason"] == "psi"
    # Admins see a banner on every page; a radiologist does not.
    page = admin_client.get("/batches/").content.decode()
    assert 'id="drift-banner"' in page and "pneu-a" in page
    radiologist = Client()
    radiologist.force_login(people["radiologist"])
    assert 'id="drift-banner"' not in radiologist.get("/batches/").content.decode()

    # A new checksum of the model answers from now on: the old model's alert clears.
    _scored_results(60, [(i + 0.5) / 60 for i in range(60)], sha=SHA_A2)
    Analysis.objects.filter(model_sha256=SHA_A2).update(finished_at=timezone.now())
    got = _api(admin_client, 30)
    assert got[("pneu-a", SHA_A)]["superseded"] is True
    alert.refresh_from_db()
    assert alert.cleared_at is not None and "model changed" in alert.cleared_why
    [cleared] = _alert_rows("monitoring.drift_cleared")
    assert cleared.detail["model_id"] == "pneu-a"
    assert not DriftAlert.objects.filter(cleared_at__isnull=True).exists()
    assert len(_alert_rows("monitoring.drift_alert")) == 1
    assert 'id="drift-banner"' not in admin_client.get("/batches/").content.decode()


def test_an_alert_clears_when_the_reference_changes(admin_client, model_files, settings):
    model_files("pneu-a", scores=UNIFORM)
    _scored_results(200, [0.02, 0.98])
    _api(admin_client, 30)
    [alert] = DriftAlert.objects.filter(cleared_at__isnull=True)
    assert alert.reference.startswith("validation:")
    # The department's own first weeks become the reference (they look like today's results).
    ModelReference.objects.create(
        model_id="pneu-a",
        model_sha256=SHA_A,
        period_start=timezone.now() - dt.timedelta(days=90),
        period_end=timezone.now() - dt.timedelta(days=62),
        n=1000,
        flagged=500,
        cuts=[0.02, 0.02, 0.02, 0.02, 0.5, 0.98, 0.98, 0.98, 0.98],
        fractions=[0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5],
    )
    [m] = _api(admin_client, 30).values()
    assert m["reference"]["source"] == "department"
    alert.refresh_from_db()
    assert alert.cleared_at is not None and "reference changed" in alert.cleared_why
    assert m["drift_alert"] is False


def _first_week_result(i: int, *, days_ago: float) -> None:
    flagged = i % 5 == 0
    result("finding" if flagged else "negative", probability=0.9 if flagged else 0.1, days_ago=days_ago)


def test_the_departments_first_weeks_become_the_reference_once_they_hold_enough(
    admin_client, model_files, settings
):
    settings.RADTRIAGE_MONITORING_REFERENCE_DAYS = 7
    settings.RADTRIAGE_MONITORING_REFERENCE_MIN = 40
    model_files("pneu-a", scores=UNIFORM)
    for i in range(20):  # the first week, 45 days ago: too few yet
        _first_week_result(i, days_ago=45 - i / 10)
    result("negative", probability=0.1, days_ago=1)
    [m] = _api(admin_client, 30).values()
    assert m["reference"]["source"] == "validation"
    assert "fewer than 40" in m["reference"]["note"]
    for i in range(20):
        _first_week_result(i, days_ago=44 - i / 10)
    [m] = _api(admin_client, 30).values()
    assert m["reference"]["source"] == "department" and m["reference"]["n"] == 40
    assert m["expected_flag_rate"] == pytest.approx(0.2)
    assert ModelReference.objects.get().n == 40


def test_the_page_draws_the_charts_and_says_which_reference(admin_client, model_files):
    model_files("pneu-a", scores=UNIFORM)
    _scored_results(80, UNIFORM)
    page = admin_client.get("/monitoring/")
    text = page.content.decode()
    assert page.status_code == 200
    assert text.count("<svg") == 4  # flag rate, agreement, not applicable, scores
    assert 'class="band"' in text and "the model&#x27;s validation scores" in text


def test_the_weekly_summary_downloads_as_csv_and_pdf(admin_client, model_files, people):
    model_files("pneu-a", scores=UNIFORM)
    for days_ago in (1, 8, 9):
        result("finding", days_ago=days_ago)
    result("not_applicable", days_ago=1)
    response = admin_client.get("/monitoring/weekly.csv?weeks=4")
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 4 and {r["model_id"] for r in rows} == {"pneu-a"}
    assert sum(int(r["findings"]) for r in rows) == 3
    assert sum(int(r["not_applicable"]) for r in rows) == 1
    pdf = admin_client.get("/monitoring/weekly.pdf?weeks=4")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    radiologist = Client()
    radiologist.force_login(people["radiologist"])
    assert radiologist.get("/monitoring/weekly.csv").status_code == 403


def _both_paths(days: int, weeks: int) -> tuple[Any, Any]:
    """The window and the weeks from the days' counts, and counted live from the rows."""
    from web.clinical.monitoring.summary import monitoring_models
    from web.clinical.monitoring.weekly import monitoring_weeks

    now = timezone.now()
    answers = []
    for counted in (True, False):
        models = monitoring_models(days=days, now=now, counted=counted)
        series = monitoring_weeks(models=models, weeks=weeks, now=now, counted=counted)
        answers.append(
            (
                [m.as_dict() for m in models],
                {
                    key: [(w.start, w.analysed, w.counts, w.scored, w.flagged) for w in ws]
                    for key, ws in series.items()
                },
            )
        )
    return answers[0], answers[1]


def test_the_days_counts_add_up_to_the_live_count_even_when_a_counted_day_changes(
    people, admin_client, model_files
):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("past days are kept counted on PostgreSQL only; the embedded SQLite counts live")
    from web.clinical.models import CountedDay, ModelDay, ResultChange

    model_files("pneu-a", scores=UNIFORM)
    rad = people["radiologist"]
    rows = []
    # Every kind of result, two models, on past days (counted once) and today (live); a window
    # whose first day is partial (29.5 days back).
    for days_ago in (0.01, 0.2, 1.5, 3, 9, 29.4, 29.6, 40):
        for i, kind in enumerate(KIND_FIELDS):
            for model_id, sha, condition in MODELS_AB:
                rows.append(
                    result(
                        kind,
                        model_id=model_id,
                        sha=sha,
                        condition=condition,
                        days_ago=days_ago,
                        probability=(i + 1) / 7 + days_ago / 1000,
                    )
                )

    def aged(model_id: str, kind: str, days_ago: float) -> Analysis:
        age = dt.timedelta(days=days_ago)
        return next(
            r
            for r in rows
            if r.model_id == model_id
            and result_kind(r) == kind
            and abs(timezone.now() - r.finished_at - age) < dt.timedelta(hours=1)
        )

    _verdict(rows[0], rad, "agree")
    # A missed record on an image the model read on two counted days counts once.
    _missed(aged("pneu-a", "negative", 3).image, rad)
    result("negative", days_ago=1.5, image=aged("pneu-a", "negative", 3).image)
    _missed(aged("pneu-a", "negative", 0.2).image, rad)
    summarised, live = _both_paths(29.5, 6)
    assert summarised == live
    assert {m["model_id"]: m for m in summarised[0]}["pneu-a"]["missed"] == 2
    assert ModelDay.objects.exists() and CountedDay.objects.count() >= 28
    assert not ResultChange.objects.filter(lo__lt=timezone.now() - dt.timedelta(days=1)).exists()
    before = {m["model_id"]: m for m in summarised[0]}["pneu-a"]
    before_b = {m["model_id"]: m for m in summarised[0]}["card-b"]

    # After the days were counted: a finding of 3 days ago turns negative (an edit), a negative
    # of 9 days ago is deleted, a finding that finished 3 days ago commits only now (a late
    # finish), a radiologist disagrees with a finding of 9 days ago and marks a finding the model
    # missed on an image it read 9 days ago; then the department's reference replaces the
    # validation scores (other bins for the histograms).
    Analysis.objects.filter(pk=aged("pneu-a", "finding", 3).pk).update(positive=False)
    aged("card-b", "negative", 9).delete()
    result("finding", days_ago=3, probability=0.99)
    _verdict(aged("pneu-a", "finding", 9), rad, "disagree")  # a verdict on a counted day's result
    _missed(aged("pneu-a", "negative", 9).image, rad)  # a finding it missed, seen later
    assert ResultChange.objects.filter(lo__lt=timezone.now() - dt.timedelta(days=2)).count() == 5
    summarised, live = _both_paths(29.5, 6)
    assert summarised == live
    after = {m["model_id"]: m for m in summarised[0]}["pneu-a"]
    assert after["analysed"] == before["analysed"] + 1
    assert after["findings"] == before["findings"]  # one edited away, one finished late
    assert after["negatives"] == before["negatives"] + 1
    assert after["disagree"] == before["disagree"] + 1
    assert after["missed"] == before["missed"] + 1
    assert {m["model_id"]: m for m in summarised[0]}["card-b"]["negatives"] == before_b["negatives"] - 1

    ModelReference.objects.create(
        model_id="pneu-a",
        model_sha256=SHA_A,
        period_start=timezone.now() - dt.timedelta(days=90),
        period_end=timezone.now() - dt.timedelta(days=62),
        n=1000,
        flagged=500,
        cuts=[0.1, 0.2, 0.3, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9],  # cuts may repeat
        fractions=[0.1] * 10,
    )
    summarised, live = _both_paths(29.5, 6)
    assert summarised == live
    # The days' bins are the reference's bins, score by score (cuts[i-1] <= p < cuts[i]).
    scores = Analysis.objects.filter(
        model_id="pneu-a", finished_at__gt=timezone.now() - dt.timedelta(days=29.5)
    )
    cuts = [0.1, 0.2, 0.3, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    binned = [0] * 10
    for a in scores:
        if result_kind(a) in ("finding", "negative", "experimental"):
            binned[sum(1 for c in cuts if c <= a.probability)] += 1
    assert {m["model_id"]: m for m in summarised[0]}["pneu-a"]["histogram"] == binned
    assert {m["model_id"]: m for m in summarised[0]}["pneu-a"]["reference"]["source"] == "department"
    # The days were counted again in the new reference's bins.
    assert {tuple(c) for c in ModelDay.objects.filter(model_id="pneu-a").values_list("cuts", flat=True)} == {
        tuple(cuts)
    }
