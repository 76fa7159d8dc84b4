"""Model monitoring at a year's volume: the server time of /api/monitoring/models/ and of the
/monitoring/ page over a scratch PostgreSQL database seeded with a year of results.

Seeds (bulk INSERT ... SELECT generate_series, in the database itself): 100,000 patients,
400,000 studies and images, --analyses results (default 1,000,000) spread over 365 days across
six models (one changes checksum half-way; one is experimental; one drifts in the last 30
days), every kind of result (findings, negatives, not applicable, placeholders, experimental),
verdicts on a quarter of the findings and a twentieth of the negatives, and 5,000 AI-missed
records. Then VACUUM ANALYZE, as autovacuum would have done on a live system.

Times each request in-process (Django's test client: the whole server path, no network), after
two warm-up calls (the first computes each model's department reference once and counts every
past day not counted yet: its time is printed), and prints the median and p95. Figures printed,
nothing asserted.

    .venv/bin/python bench/monitoring.py [--analyses 1000000] [--runs 20] [--reuse] [--drop]
        [--database-url postgres://postgres@127.0.0.1:5432/bench_monitoring]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bench_monitoring"

# slot (analysis id % 10) -> condition, model id, checksum, threshold, experimental
MODELS = [
    (0, "pneumonia", "pneumonia-bench-v1", "1" * 64, 0.42, False),
    (1, "pneumonia", "pneumonia-bench-v1", "1" * 64, 0.42, False),
    (2, "pneumonia", "pneumonia-bench-v1", "1" * 64, 0.42, False),
    (3, "cardiomegaly", "cardiomegaly-bench-v1", "3" * 64, 0.30, False),
    (4, "cardiomegaly", "cardiomegaly-bench-v1", "3" * 64, 0.30, False),
    (5, "fracture", "fracture-bench-v2", "5" * 64, 0.35, False),
    (6, "fracture", "fracture-bench-v2", "5" * 64, 0.35, False),
    (7, "fracture", "fracture-bench-v2", "5" * 64, 0.35, False),
    (8, "knee_osteoarthritis", "knee-bench-v1", "8" * 64, 0.50, False),
    (9, "pneumonia", "pneumonia-bench-trial", "9" * 64, 0.50, True),
]
NEW_PNEUMONIA_SHA = "2" * 64  # the pneumonia model's checksum for the last half-year

SEED_SQL = """
INSERT INTO clinical_patient (patient_id, name, sex, created_at)
SELECT 'BENCH-' || g, '', '', now() FROM generate_series(1, 100000) g;

INSERT INTO clinical_study (study_instance_uid, accession_number, modality, body_part, description,
    priority, status, created_at, updated_at, patient_id, ai_flagged, body_part_source)
SELECT '1.2.826.0.1.' || g, '', 'DX', '', '', 3, 'reviewed', now(), now(),
    (SELECT min(id) FROM clinical_patient) + (g % 100000), false, ''
FROM generate_series(1, 400000) g;

INSERT INTO clinical_image (sop_instance_uid, series_instance_uid, file, original_filename, format,
    dicom_header, decode_notes, thumbnail, size_bytes, sha256, width, height, view_position,
    created_at, study_id, recognition)
SELECT '1.2.826.0.2.' || s.id, '', 'images/bench/' || s.id || '.dcm', '', 'dicom', '{{}}', '[]', '',
    1, lpad(to_hex(s.id), 64, '0'), 512, 512, '', now(), s.id, '{{}}'
FROM clinical_study s;

CREATE TEMP TABLE bench_models (slot int, condition text, model_id text, sha text, threshold float,
    experimental bool);
INSERT INTO bench_models VALUES {models};

INSERT INTO clinical_analysis (condition, requested_model_id, model_id, model_sha256, architecture,
    state, queue, probability, threshold, positive, is_placeholder, placeholder_reason, experimental,
    experimental_reason, applicable, not_applicable_reason, applicability, gradcam_method,
    gradcam_layer, notes, heatmap_raw, error_message, attempts, requeues, worker, enqueued_at,
    started_at, finished_at, created_at, image_id)
SELECT m.condition, '', m.model_id,
    CASE WHEN m.model_id = 'pneumonia-bench-v1' AND s.age < 182 THEN '{new_sha}' ELSE m.sha END,
    'mobilenetv2', 'succeeded', 'batch', s.p, m.threshold,
    CASE WHEN s.na THEN NULL ELSE s.p >= m.threshold END,
    s.ph, CASE WHEN s.ph THEN 'no artifact' ELSE '' END,
    m.experimental, CASE WHEN m.experimental THEN 'trial' ELSE '' END,
    NOT s.na, CASE WHEN s.na THEN 'outside the population' ELSE '' END, '{{}}', '', '', '[]', '', '',
    1, 0, '', s.fin, s.fin, s.fin, s.fin, s.image_id
FROM (
    SELECT g, g % 10 AS slot, r.age, now() - r.age * interval '1 day' AS fin,
        CASE WHEN g % 10 IN (5, 6, 7) AND r.age < 30 THEN sqrt(r.u) ELSE r.u * r.u END AS p,
        r.v < 0.07 AS na, (g % 10 = 8 AND r.w < 0.05) AS ph,
        (SELECT min(id) FROM clinical_image) + (g % 400000) AS image_id
    FROM generate_series(1, {analyses}) g,
        LATERAL (SELECT random() * 365 + g * 0 AS age, random() + g * 0 AS u, random() + g * 0 AS v,
                 random() + g * 0 AS w) r
) s JOIN bench_models m ON m.slot = s.slot
ORDER BY s.fin;  -- rows arrive in time order, as results do

INSERT INTO clinical_annotation (shapes, note, verdict, verdict_reason, missed_condition, created_at,
    updated_at, author_id, image_id, analysis_id)
SELECT '[]', '', v.verdict, CASE WHEN v.verdict = 'disagree' THEN 'false_positive' ELSE '' END, '',
    now(), now(), {author}, a.image_id, a.id
FROM clinical_analysis a,
    LATERAL (SELECT CASE WHEN r < 0.7 THEN 'agree' WHEN r < 0.9 THEN 'disagree' ELSE 'uncertain' END
             AS verdict FROM (SELECT random() + a.id * 0 AS r) x) v
WHERE a.applicable AND NOT a.is_placeholder
  AND ((a.positive AND random() < 0.25) OR (NOT a.positive AND random() < 0.05));

INSERT INTO clinical_annotation (shapes, note, verdict, verdict_reason, missed_condition, created_at,
    updated_at, author_id, image_id, analysis_id)
SELECT '[{{"type": "rect", "x": 1, "y": 1, "w": 5, "h": 5}}]', '', '', '',
    (ARRAY['pneumonia', 'cardiomegaly', 'fracture', 'knee_osteoarthritis'])[1 + g % 4],
    now(), now(), {author}, (SELECT min(id) FROM clinical_image) + (g * 79) % 400000, NULL
FROM generate_series(1, 5000) g;
"""


def _database(url: str, *, reuse: bool) -> bool:
    """Create the scratch database (True: it must be seeded)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and reuse:
            return False
        if exists:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return True


def _drop(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _seed(analyses: int) -> dict[str, int]:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    author = get_user_model().objects.create_user("bench.radiologist")
    models = ", ".join(
        f"({slot}, '{cond}', '{mid}', '{sha}', {thr}, {str(exp).lower()})"
        for slot, cond, mid, sha, thr, exp in MODELS
    )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            SEED_SQL.format(models=models, new_sha=NEW_PNEUMONIA_SHA, analyses=analyses, author=author.pk)
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"seeded in {time.perf_counter() - started:.0f} s")
    return _sizes()


def _sizes() -> dict[str, int]:
    from web.clinical.models import Analysis, Annotation

    return {
        "analyses": Analysis.objects.count(),
        "verdicts": Annotation.objects.exclude(verdict="").count(),
        "missed": Annotation.objects.exclude(missed_condition="").count(),
    }


def _timed(client: Any, path: str, runs: int) -> list[float]:
    started = time.perf_counter()
    assert client.get(path).status_code == 200, path
    print(f"  first call {path}: {(time.perf_counter() - started) * 1000:.0f} ms")
    assert client.get(path).status_code == 200, path
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, path
    return times


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--analyses", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep an already seeded database")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    args = parser.parse_args()

    fresh = _database(args.database_url, reuse=args.reuse)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import setup_test_environment

    from tests.web.fixtures import with_role

    setup_test_environment()
    if not fresh:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
    sizes = _seed(args.analyses) if fresh else _sizes()
    print(f"rows: {sizes}")
    admin, _ = get_user_model().objects.get_or_create(username="bench.admin")
    with_role(admin, "admin")
    client = Client()
    client.force_login(admin)
    try:
        for label, path in (
            ("API /api/monitoring/models/?days=30", "/api/monitoring/models/?days=30"),
            ("page /monitoring/ (30 days, 12 weeks)", "/monitoring/"),
        ):
            times = _timed(client, path, args.runs)
            print(
                f"{label}: median {statistics.median(times):.0f} ms, p95 {_p95(times):.0f} ms "
                f"({args.runs} runs, min {min(times):.0f} ms, max {max(times):.0f} ms)"
            )
        models = client.get("/api/monitoring/models/?days=30").json()
        for m in models:
            print(
                f"  {m['model_id']} {m['model_sha256'][:6]}: {m['analysed']} results, flag rate "
                f"{m['flag_rate']:.3f}, reference {m['reference']['source']}, psi "
                f"{m['psi'] if m['psi'] is None else round(m['psi'], 3)}, alert {m['drift_alert']}"
            )
    finally:
        if args.drop:
            from django.db import connections

            connections.close_all()
            _drop(args.database_url)


if __name__ == "__main__":
    main()
