"""Files the services write beside the rows: thumbnails, heat maps; and their clean-up.

A file is written before the row that points at it, and a job never deletes a file once its
row may have committed (an exception after the commit, e.g. a task terminated on a broker
connection loss, must not take a stored result's heat map). What is left over when a process
dies between the two is removed later, once no committed row points at it: uploads through
their journals (media_remove_abandoned_uploads), heat maps and report PDFs by walking their
folders (media_remove_orphan_files)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db.models import Q
from django.db.models.fields.files import FieldFile

from web.clinical.media_storage import media_walk, media_write
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


def heatmaps_store(maps: list[tuple[Analysis, np.ndarray]]) -> dict[int, str]:
    """Each raw Grad-CAM map at the model's resolution, as an 8-bit grayscale PNG (a few KB);
    returns {analysis id: its file name}. Written before the rows; if they never commit, the
    files are orphans for media_remove_orphan_files.

    One after another: a map's PNG and file cost ~0.1 ms; a pool of threads to write them
    cost 0.7-1 ms per map in thread start-ups and GIL hand-offs (16-map batch job, local disk).
    Overlays are drawn from these maps on request (selectors.analysis_heatmap_overlay_png):
    most analyses are never opened, and a full-resolution overlay PNG costs more than the model.
    """
    from core.overlay import heatmap_png

    stored: dict[int, str] = {}
    for analysis, heatmap in maps:
        clean = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
        name = f"heatmaps/{analysis.image.study_id}/analysis-{analysis.pk}-raw.png"
        stored[analysis.pk] = default_storage.save(name, ContentFile(heatmap_png(clean)))
    return stored


# Beside the media files: one journal per upload in progress, listing the files it writes.
UPLOAD_JOURNALS = ".uploads-in-progress"


class StoredFiles(list[str]):
    """The media files one upload writes (for its caller to delete if it fails), also listed
    in a journal in the media storage until its rows are committed or its files removed: a web
    process killed half-way through leaves a journal, and media_remove_abandoned_uploads removes
    the files no row points to. Each name is journalled before its file is written."""

    def __init__(self) -> None:
        super().__init__()
        self.journal: str | None = None
        self._expected: list[str] = []

    def expect(self, name: str) -> None:
        if self.journal is None:
            self.journal = f"{UPLOAD_JOURNALS}/{uuid.uuid4().hex}.txt"
        self._expected.append(name)
        # Rewritten whole: an object store cannot append (the journal is a few names long).
        media_write(self.journal, "".join(f"{n}\n" for n in self._expected).encode())

    def append(self, name: str) -> None:
        if self.journal is not None and name not in self._expected:
            self.expect(name)  # the storage picked another name (a race for the first)
        super().append(name)

    def close(self) -> None:
        """The upload is settled (committed, or its files removed): no journal needed. Best
        effort: a journal left behind costs nothing (the sweep keeps every file a row names),
        and a failure here must never undo a committed upload."""
        if self.journal is not None:
            try:
                default_storage.delete(self.journal)
            except OSError:
                log.warning(
                    "Could not remove the upload journal %s; the sweep will", self.journal, exc_info=True
                )
            self.journal = None


def field_file_save(field_file: FieldFile, filename: str, content: File, stored: list[str]) -> None:
    """Write a FileField's file (the row is saved by the caller), its name added to `stored`;
    with StoredFiles, journalled first."""
    if isinstance(stored, StoredFiles):
        name = field_file.field.generate_filename(field_file.instance, filename)
        stored.expect(field_file.storage.get_available_name(name, max_length=field_file.field.max_length))
    field_file.save(filename, content, save=False)
    assert field_file.name
    stored.append(field_file.name)


def media_remove_abandoned_uploads(*, older_than: float) -> list[str]:
    """The files of uploads whose process died before committing or cleaning up (journals
    untouched for `older_than` seconds) that no row points to: removed, with their journals."""
    from web.clinical.models import Image, UploadConflict

    cutoff = time.time() - older_than
    removed: list[str] = []
    for journal, modified in list(media_walk(f"{UPLOAD_JOURNALS}/")):
        if modified > cutoff:
            continue  # an upload still in progress
        try:
            with default_storage.open(journal, "rb") as handle:
                names = [n for n in handle.read().decode().splitlines() if n]
        except FileNotFoundError:
            continue  # it finished meanwhile
        kept = {
            name
            for pair in Image.objects.filter(Q(file__in=names) | Q(thumbnail__in=names)).values_list(
                "file", "thumbnail"
            )
            for name in pair
        }
        kept.update(UploadConflict.objects.filter(file__in=names).values_list("file", flat=True))
        for name in names:
            if name not in kept and default_storage.exists(name):
                default_storage.delete(name)
                removed.append(name)
        default_storage.delete(journal)
    if removed:
        log.warning("Removed %d file(s) of abandoned uploads: %s", len(removed), removed[:20])
    return removed


# The result folders the orphan sweep walks: a file's name says which rows may point at it
# (heatmaps/<study>/analysis-<id>-raw*.png: that analysis; reports/study-<id>/...: that
# study's reports), so each check is a lookup by primary or foreign key, never a scan.
_HEATMAP_NAME = re.compile(r"^heatmaps/\d+/analysis-(\d+)-raw[^/]*\.png$")
_REPORT_NAME = re.compile(r"^reports/study-(\d+)/[^/]+$")


def _heatmaps_kept(names: list[str]) -> set[str]:
    ids = {int(m.group(1)) for n in names if (m := _HEATMAP_NAME.match(n))}
    return set(
        Analysis.objects.filter(pk__in=ids).exclude(heatmap_raw="").values_list("heatmap_raw", flat=True)
    )


def _reports_kept(names: list[str]) -> set[str]:
    from web.clinical.models import Report

    ids = {int(m.group(1)) for n in names if (m := _REPORT_NAME.match(n))}
    return set(Report.objects.filter(study_id__in=ids).exclude(pdf="").values_list("pdf", flat=True))


ORPHAN_FOLDERS: dict[str, tuple[re.Pattern[str], Callable[[list[str]], set[str]]]] = {
    "heatmaps": (_HEATMAP_NAME, _heatmaps_kept),
    "reports": (_REPORT_NAME, _reports_kept),
}


def _old_files(folder: str, *, cutoff: float) -> Iterator[str]:
    return (name for name, modified in media_walk(f"{folder}/") if modified < cutoff)


def _chunks(names: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for name in names:
        chunk.append(name)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def media_remove_orphan_files(*, older_than: float) -> list[str]:
    """Remove the heat maps and report PDFs older than `older_than` seconds that no committed
    row points at (a job that died after writing them and before committing, a duplicate run).
    A file whose name is not one this code writes is left alone: nothing here can tell whose
    it is. `older_than` must exceed the time from a file's write to its row's commit."""
    cutoff = time.time() - older_than
    removed: list[str] = []
    for folder, (pattern, kept_of) in ORPHAN_FOLDERS.items():
        for chunk in _chunks(_old_files(folder, cutoff=cutoff), 500):
            ours = [name for name in chunk if pattern.match(name)]
            kept = kept_of(ours)
            for name in ours:
                if name not in kept:
                    default_storage.delete(name)
                    removed.append(name)
    if removed:
        log.warning("Removed %d result file(s) no row points at: %s", len(removed), removed[:20])
    return removed
