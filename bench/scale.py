"""Pages at scale: a year of a busy department in a scratch PostgreSQL database, then the server
time of every worklist view, search, the study page and /api/studies/.

Seeds (COPY, in big chunks) patients, studies, one image per study, their results and the
signed reports of the reported studies: about 95% reported, about 5% reviewed, a few hundred
open studies of every state (some waiting longer than the waiting cap), STAT/urgent/routine,
chest/knee/extremity/other regions, positives per condition, names drawn from a list. Then it
measures each page in-process (Django test client, a logged-in radiologist): --runs timed runs
after one warm-up, and prints the median and p95 in ms. Figures printed, nothing asserted.

The seeded database is kept: --reuse measures it again without seeding (after a migration, say).
Another bench may share the machine's CPUs: say so beside the figures.

    .venv/bin/python bench/scale.py [--studies 1000000] [--results 2000000] [--runs 7] [--reuse]
        [--database-url postgres://postgres@127.0.0.1:5432/bench_scale] [--only worklist,search]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale_names import FAMILY, GIVEN  # noqa: E402

# (body part, share of studies, conditions analysed)
REGIONS = [
    ("CHEST", 0.55, ("pneumonia", "cardiomegaly")),
    ("KNEE", 0.12, ("knee_osteoarthritis", "knee_osteoporosis", "fracture")),
    ("HAND", 0.06, ("fracture",)),
    ("WRIST", 0.06, ("fracture",)),
    ("ANKLE", 0.06, ("fracture",)),
    ("SHOULDER", 0.04, ("fracture",)),
    ("PELVIS", 0.05, ("fracture",)),
    ("SPINE", 0.04, ("fracture",)),
    ("", 0.02, ("pneumonia",)),
]
POSITIVE_RATE = {
    "pneumonia": 0.12,
    "cardiomegaly": 0.08,
    "fracture": 0.10,
    "knee_osteoarthritis": 0.30,
    "knee_osteoporosis": 0.10,
}
# Open studies: state -> how many (the rest of the non-reported ones are reviewed).
OPEN = {"received": 300, "analysing": 300, "scheduled": 300, "ai_complete": 1500, "in_review": 300}
REPORTED_SHARE = 0.95


def _setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DEBUG", "0")
    os.environ.setdefault("SECRET_KEY", "bench-scale-not-secret-" + "x" * 40)
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    import django

    django.setup()


def _database_create(database_url: str) -> None:
    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _columns(model: Any) -> list[Any]:
    return [f for f in model._meta.concrete_fields if not f.primary_key]


def _defaults(model: Any) -> dict[str, Any]:
    """Each column's value when the seed does not set it (the model's default, as COPY text)."""
    import json

    out: dict[str, Any] = {}
    for field in _columns(model):
        value = field.get_default() if field.has_default() else None
        if isinstance(value, dict | list):
            value = json.dumps(value)
        if value is None and not field.null:
            value = "" if field.get_internal_type() in ("CharField", "TextField", "FileField") else 0
        out[field.column] = value
    return out


def _copy(cursor: Any, model: Any, rows: Iterator[dict[str, Any]], *, chunk: int = 200_000) -> int:
    """COPY rows (dicts of column -> value, the rest defaulted) into the model's table."""
    defaults = _defaults(model)
    names = list(defaults)
    table = model._meta.db_table
    n = 0
    with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row.get(c, defaults[c]) for c in names])
            n += 1
    return n


def seed(*, studies: int, results: int, seed_value: int = 7) -> None:
    from django.contrib.auth.models import Group, User
    from django.db import connection

    from core.conditions import CONDITION_URGENCY
    from web.clinical.models import Analysis, Image, Patient, Report, Study

    rng = random.Random(seed_value)
    now = dt.datetime.now(dt.UTC)
    group = Group.objects.get_or_create(name="radiologist")[0]
    readers = []
    for i in range(12):
        user = User.objects.get_or_create(username=f"reader{i}")[0]
        user.groups.add(group)
        readers.append(user.pk)
    bench_user = User.objects.get_or_create(username="bench")[0]
    bench_user.groups.add(group)
    study_columns = {f.column for f in _columns(Study)}

    n_patients = max(1, int(studies / 2.5))
    t0 = time.perf_counter()
    with connection.cursor() as django_cursor:
        cursor = django_cursor.cursor  # psycopg's own cursor, for COPY
        # The scratch database only: the study-state guard checks a signed report per row,
        # and the reports are loaded after the studies.
        cursor.execute("ALTER TABLE clinical_study DISABLE TRIGGER USER")

        # Each patient's name, birth date and sex: the studies carry copies (worklist.patients).
        people: list[tuple[str, dt.date, str]] = []

        def patients() -> Iterator[dict[str, Any]]:
            for i in range(n_patients):
                name = f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"
                born = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(33000))
                sex = rng.choice("MF")
                people.append((name, born, sex))
                yield {
                    "patient_id": f"MRN{i:08d}",
                    "name": name,
                    "birth_date": born,
                    "sex": sex,
                    "created_at": now,
                }

        _copy(cursor, Patient, patients())
        first_patient = Patient.objects.order_by("pk").values_list("pk", flat=True).first() or 1
        print(f"  patients {n_patients:,} in {time.perf_counter() - t0:.0f} s", flush=True)

        n_open = sum(OPEN.values())
        n_reported = int(studies * REPORTED_SHARE)
        open_states = [s for s, k in OPEN.items() for _ in range(k)]
        weights = [w for _, w, _ in REGIONS]
        plan: list[tuple[str, int, tuple[str, ...]]] = []  # (status, region index, conditions)
        for i in range(studies):
            # The newest studies are the open ones; then reviewed; the rest reported.
            from_newest = studies - 1 - i
            if from_newest < n_open:
                status = open_states[from_newest % len(open_states)]
            elif from_newest < studies - n_reported:
                status = "reviewed"
            else:
                status = "reported"
            region = rng.choices(range(len(REGIONS)), weights)[0]
            plan.append((status, region, REGIONS[region][2]))
        base = sum(len(c) for _, _, c in plan)
        extra = max(0, results - base)  # re-runs (a later reading of the same condition)
        rerun = set(rng.sample(range(studies), min(studies, extra))) if extra else set()

        flags: list[tuple[bool, int, float, str]] = []  # per study: flagged, urgency, probability, conditions
        analyses: list[tuple[int, str, str, float | None, bool | None, dt.datetime | None]] = []
        span = dt.timedelta(days=365).total_seconds()
        created: list[dt.datetime] = []
        for i, (status, _region, conditions) in enumerate(plan):
            from_newest = studies - 1 - i
            if from_newest < n_open:  # the last 8 hours: some past the waiting cap
                at = now - dt.timedelta(seconds=rng.uniform(60, 8 * 3600))
            else:
                at = now - dt.timedelta(seconds=span * (studies - i) / studies + 8 * 3600)
            created.append(at)
            best: tuple[bool, int, float] = (False, 0, 0.0)
            todo = [*conditions, *(conditions[:1] if i in rerun else ())]
            for k, condition in enumerate(todo):
                if status in ("received",):
                    break
                if status in ("analysing", "scheduled") and k == len(todo) - 1:
                    analyses.append((i, condition, "queued", None, None, None))
                    continue
                if rng.random() < 0.01:
                    analyses.append((i, condition, "failed", None, None, at))
                    continue
                positive = rng.random() < POSITIVE_RATE[condition]
                p = rng.uniform(0.5, 0.99) if positive else rng.uniform(0.01, 0.49)
                finished = at + dt.timedelta(seconds=30 + k)
                analyses.append((i, condition, "succeeded", p, positive, finished))
            # The current reading of each condition: the last succeeded one (re-runs come last).
            current: dict[str, tuple[float | None, bool | None]] = {}
            for j, condition, state, p, positive, _f in analyses[len(analyses) - len(todo) :]:
                if j == i and state == "succeeded":
                    current[condition] = (p, positive)
            for condition, (p, positive) in current.items():
                if positive:
                    key = (True, CONDITION_URGENCY[condition], float(p or 0))
                    best = max(best, key)
            found = sorted(c for c, (_p, positive) in current.items() if positive)
            flags.append((*best, f",{','.join(found)}," if found else ""))
        analyses = analyses[:results]
        print(f"  planned {studies:,} studies, {len(analyses):,} results", flush=True)

        def study_rows() -> Iterator[dict[str, Any]]:
            for i, (status, region, _c) in enumerate(plan):
                flagged, urgency, probability, finding_conditions = flags[i]
                person = rng.randrange(n_patients)
                row = {
                    "patient_id": first_patient + person,
                    "study_instance_uid": f"1.2.826.0.1.3680043.10.999.{i}",
                    "accession_number": f"ACC{i:09d}",
                    "study_date": created[i].date(),
                    "modality": rng.choice(("CR", "DX")),
                    "body_part": REGIONS[region][0],
                    "body_part_source": "header" if REGIONS[region][0] else "",
                    "description": "XR " + (REGIONS[region][0] or "unknown").lower(),
                    "priority": rng.choices((1, 2, 3), (0.03, 0.12, 0.85))[0],
                    "status": status,
                    "ai_flagged": flagged,
                    "created_at": created[i],
                    "updated_at": created[i],
                }
                if "finding_urgency" in study_columns:
                    row["finding_urgency"], row["finding_probability"] = urgency, probability
                if "finding_conditions" in study_columns:
                    row["finding_conditions"] = finding_conditions
                if "patient_name" in study_columns:
                    row["patient_name"], row["patient_birth_date"], row["patient_sex"] = people[person]
                if status in ("in_review", "reviewed", "reported"):
                    row["assigned_radiologist_id"] = rng.choice(readers)
                    row["claimed_at"] = created[i] + dt.timedelta(minutes=20)
                if status in ("reviewed", "reported"):
                    row["reviewed_at"] = created[i] + dt.timedelta(minutes=40)
                    row["reviewed_by_id"] = row["assigned_radiologist_id"]
                yield row

        _copy(cursor, Study, study_rows())
        first_study = Study.objects.order_by("pk").values_list("pk", flat=True).first() or 1
        print(f"  studies in {time.perf_counter() - t0:.0f} s", flush=True)

        def image_rows() -> Iterator[dict[str, Any]]:
            for i in range(studies):
                yield {
                    "study_id": first_study + i,
                    "sop_instance_uid": f"1.2.826.0.1.3680043.10.998.{i}",
                    "file": f"images/bench/{i}.dcm",
                    "format": "dicom",
                    "size_bytes": 8_000_000,
                    "sha256": f"{i:064x}",
                    "width": 2048,
                    "height": 2500,
                    "created_at": created[i],
                }

        _copy(cursor, Image, image_rows())
        first_image = Image.objects.order_by("pk").values_list("pk", flat=True).first() or 1
        print(f"  images in {time.perf_counter() - t0:.0f} s", flush=True)

        def analysis_rows() -> Iterator[dict[str, Any]]:
            for i, condition, state, p, positive, finished in analyses:
                yield {
                    "image_id": first_image + i,
                    "condition": condition,
                    "model_id": f"{condition}-densenet-v2",
                    "architecture": "densenet121",
                    "state": state,
                    "queue": "interactive",
                    "probability": p,
                    "threshold": 0.5 if p is not None else None,
                    "positive": positive,
                    "applicable": True if state == "succeeded" else None,
                    "attempts": 1,
                    "enqueued_at": created[i],
                    "finished_at": finished,
                    "created_at": created[i],
                }

        _copy(cursor, Analysis, analysis_rows())
        print(f"  results in {time.perf_counter() - t0:.0f} s", flush=True)

        def report_rows() -> Iterator[dict[str, Any]]:
            for i, (status, _r, _c) in enumerate(plan):
                if status != "reported":
                    continue
                author = rng.choice(readers)
                yield {
                    "study_id": first_study + i,
                    "version": 1,
                    "findings": "No acute abnormality.",
                    "impression": "Normal study.",
                    "state": "signed",
                    "author_id": author,
                    "signed_by_id": author,
                    "signed_at": created[i] + dt.timedelta(hours=1),
                    "created_at": created[i],
                    "updated_at": created[i],
                }

        _copy(cursor, Report, report_rows())
        cursor.execute("ALTER TABLE clinical_study ENABLE TRIGGER USER")
        print(f"  reports in {time.perf_counter() - t0:.0f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"seeded in {time.perf_counter() - t0:.0f} s", flush=True)


def _timed(client: Any, url: str, runs: int) -> tuple[float, float, int]:
    from django.db import OperationalError

    try:
        client.get(url, secure=True)  # warm-up (DEBUG=0 redirects plain http)
    except OperationalError:  # past --statement-timeout
        return float("inf"), float("inf"), 0
    times = []
    status = 0
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get(url, secure=True)
        times.append((time.perf_counter() - start) * 1000)
        status = response.status_code
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95, status


def measure(*, runs: int, only: set[str], statement_timeout: float) -> None:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    from web.clinical.models import Patient, Study
    from web.clinical.worklist.queries import WORKLIST_SORTS

    if statement_timeout:
        with connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {int(statement_timeout * 1000)}")
    import web.asgi  # noqa: F401 - the process starts as the web process does (warm-up, gc.freeze)

    client = Client()
    client.force_login(User.objects.get(username="bench"))
    reported = Study.objects.filter(status="reported").order_by("-pk").values_list("pk", flat=True)[1000]
    waiting = Study.objects.filter(status="ai_complete").order_by("pk").values_list("pk", flat=True).first()
    patient = Patient.objects.order_by("pk").values("name", "patient_id")[4000]
    family = patient["name"].split("^")[0]
    accession = Study.objects.order_by("pk").values_list("accession_number", flat=True)[5000]
    week_ago = (dt.date.today() - dt.timedelta(days=7)).isoformat()
    pages: list[tuple[str, str, str]] = [
        ("worklist", "worklist default", "/"),
        ("worklist", "status=reported", "/?status=reported"),
        ("worklist", "status=ai_complete", "/?status=ai_complete"),
        ("worklist", "status=in_review", "/?status=in_review"),
        ("worklist", "region=CHEST", "/?region=CHEST"),
        ("worklist", "region=KNEE", "/?region=KNEE"),
        ("worklist", "region=OTHER", "/?region=OTHER"),
        ("worklist", "condition=fracture", "/?condition=fracture"),
        ("worklist", "condition=pneumonia&positive", "/?condition=pneumonia&positive=1"),
        ("worklist", "condition=knee_osteoporosis&positive", "/?condition=knee_osteoporosis&positive=1"),
        ("worklist", "positive=1", "/?positive=1"),
        ("worklist", "alert=1", "/?alert=1"),
        ("worklist", "assigned=unassigned", "/?assigned=unassigned"),
        ("worklist", "assigned=mine", "/?assigned=mine"),
        ("worklist", "date_from (a week ago)", f"/?date_from={week_ago}"),
        ("worklist", "page 20", "/?page=20"),
        *[("sort", f"sort={s}", f"/?sort={s}") for s in WORKLIST_SORTS],
        *[("sort", f"sort=-{s}", f"/?sort=-{s}") for s in ("priority", "patient", "date", "waiting")],
        ("sort", "status=reported&sort=-date", "/?status=reported&sort=-date"),
        ("search", f"search name '{family}'", f"/?q={family}"),
        ("search", "search name 'given family'", f"/?q={patient['name'].split('^')[1]}+{family}"),
        ("search", "search patient ID", f"/?q={patient['patient_id']}"),
        ("search", "search accession", f"/?q={accession}"),
        ("search", "search, no match", "/?q=zzzqqq"),
        ("study", "study page (reported)", f"/studies/{reported}/"),
        ("study", "study page (waiting)", f"/studies/{waiting}/"),
        ("api", "/api/studies/", "/api/studies/"),
        ("api", "/api/studies/?status=reported", "/api/studies/?status=reported"),
        ("api", f"/api/studies/?q={family}", f"/api/studies/?q={family}"),
        ("api", "/api/studies/?q=<accession>", f"/api/studies/?q={accession}"),
    ]
    print(f"\n{'page':52} {'median ms':>10} {'p95 ms':>8}  status  (runs: {runs})")
    for group, label, url in pages:
        if only and group not in only:
            continue
        median, p95, status = _timed(client, url, runs)
        if status == 0:
            print(f"{label:52} {'> ' + f'{statement_timeout:g} s':>10} {'':8}  statement timeout", flush=True)
            continue
        mark = "" if median <= 200 else "  > 200 ms"
        print(f"{label:52} {median:10.0f} {p95:8.0f}  {status}{mark}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_scale")
    parser.add_argument("--studies", type=int, default=1_000_000)
    parser.add_argument("--results", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="measure the seeded database again")
    parser.add_argument("--only", default="", help="worklist,sort,search,study,api")
    parser.add_argument(
        "--statement-timeout", type=float, default=0, help="seconds; a page past it prints as timed out"
    )
    args = parser.parse_args()
    _database_create(args.database_url)
    _setup(args.database_url)
    from django.core.management import call_command

    from web.clinical.models import Study

    call_command("migrate", verbosity=0)
    have = Study.objects.count()
    if args.reuse and have:
        print(f"reusing {have:,} studies at {args.database_url}")
    elif have:
        sys.exit(f"{args.database_url} already holds {have:,} studies: pass --reuse, or drop it.")
    else:
        print(f"seeding {args.studies:,} studies, {args.results:,} results into {args.database_url}")
        seed(studies=args.studies, results=args.results)
    print(f"cpus: {os.cpu_count()}, load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    measure(
        runs=args.runs, only={s for s in args.only.split(",") if s}, statement_timeout=args.statement_timeout
    )
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
