"""Cost of storing one upload (the web side, before any model runs), vs the raw work it must do.

raw: decoding the file, the image recogniser and the thumbnail (upload_decode + upload_plan +
thumbnail_jpeg), in this process; path: web.clinical.services.image_upload end to end (the
same work plus the queries, the file writes and the audit row), on a scratch PostgreSQL
database and media folder, with jobs sent to a Redis database no worker reads (flushed at
the end). Prints per-image medians and the ratio; asserts nothing.

    .venv/bin/python bench/upload_path.py [--n 40] [--database-url postgres://...]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def png(seed: int, size: int = 1024) -> bytes:
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    body = 120 + 80 * np.exp(-(((x - size / 2) / (size / 3)) ** 2 + ((y - size / 2) / (size / 2.5)) ** 2))
    pixels = np.clip(body + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_upload")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["REDIS_URL"] = args.redis_url  # no worker listens there: jobs just wait
    os.environ["MEDIA_ROOT"] = tempfile.mkdtemp(prefix="bench-upload-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from web.clinical.files import thumbnail_jpeg
    from web.clinical.ingest.parts import UploadFields, upload_decode, upload_plan
    from web.clinical.ingest.uploads import image_upload
    from web.clinical.models import Image

    Image.objects.all().delete()
    files = [png(seed) for seed in range(args.n + 3)]
    fields = UploadFields(patient_id="BENCH-1", body_part="CHEST")
    raw, path = [], []
    for index, data in enumerate(files):
        started = time.perf_counter()
        decoded = upload_decode(data, f"{index}.png")
        upload_plan(decoded, fields, None)
        thumbnail_jpeg(decoded.xray.pixels)
        raw.append(time.perf_counter() - started)
    for index, data in enumerate(files):
        started = time.perf_counter()
        image_upload(data=data, filename=f"{index}.png", fields=fields, conditions=["cardiomegaly"])
        path.append(time.perf_counter() - started)
    raw_ms, path_ms = statistics.median(raw[3:]) * 1000, statistics.median(path[3:]) * 1000
    print(f"images: {args.n} PNG 1024x1024, one per request")
    print(f"raw decode + recognise + thumbnail: median {raw_ms:.1f} ms")
    print(f"image_upload end to end:            median {path_ms:.1f} ms")
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    print(f"ratio path / raw: {path_ms / raw_ms:.2f}  (overhead {path_ms - raw_ms:.1f} ms per image)")


if __name__ == "__main__":
    main()
