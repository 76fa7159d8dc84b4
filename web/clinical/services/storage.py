"""Files the services write beside the rows: thumbnails, heat maps; and their clean-up."""

from __future__ import annotations

import logging

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from web.clinical.models import Analysis

log = logging.getLogger(__name__)


THUMBNAIL_SIZE = 256


def thumbnail_jpeg(pixels: np.ndarray) -> bytes:
    """A preview for the worklist and the study page's heat-map view (never for reading).
    OpenCV area averaging and JPEG: a fraction of a millisecond on every upload."""
    import cv2

    height, width = pixels.shape[:2]
    scale = min(1.0, THUMBNAIL_SIZE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = pixels if scale == 1.0 else cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("JPEG encoding of the thumbnail failed")
    return buffer.tobytes()


def files_delete(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            log.warning("Could not remove %s after a failed upload", name, exc_info=True)


def heatmaps_store(maps: list[tuple[Analysis, np.ndarray]], stored: dict[int, str]) -> None:
    """Each raw Grad-CAM map at the model's resolution, as an 8-bit grayscale PNG (a few KB);
    stored[analysis id] = its file name, also for the caller to delete on a later failure.

    Written by a few threads at once: a file's creation mostly waits on the disk, and one
    batch job writes one per image. Overlays are drawn from these maps on request
    (selectors.analysis_heatmap_overlay_png): most analyses are never opened, and a
    full-resolution overlay PNG costs more than the model.
    """
    from concurrent.futures import ThreadPoolExecutor

    from core.overlay import heatmap_png

    def save(analysis: Analysis, heatmap: np.ndarray) -> None:
        clean = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
        name = f"heatmaps/{analysis.image.study_id}/analysis-{analysis.pk}-raw.png"
        stored[analysis.pk] = default_storage.save(name, ContentFile(heatmap_png(clean)))

    with ThreadPoolExecutor(max_workers=min(8, len(maps)) or 1) as pool:
        futures = [pool.submit(save, analysis, heatmap) for analysis, heatmap in maps]
    for future in futures:
        future.result()  # the first failure, if any, after every write has ended
