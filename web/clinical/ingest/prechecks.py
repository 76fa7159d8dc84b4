"""What an upload can be refused for from its first bytes or its header alone, checked before
the whole file is read into memory: not an image RadTriage reads (or empty), or more pixels
than RADTRIAGE_MAX_PIXELS. A multi-file upload of 150 MB files that will be refused then costs
the web process a few kilobytes per file, not the file twice over (bench/upload_memory.py).

The rules and messages are the engine's (core.imaging): the same file is refused with the same
words whether this check or the full decode finds it. Anything this check cannot read (a
damaged header) is left to the full decode, which says what is wrong.
"""

from __future__ import annotations

from typing import IO

from django.conf import settings

from core.imaging import JPEG_MAGIC, PNG_MAGIC, _check_size, load_xray

DICOM_MAGIC_AT = slice(128, 132)


def upload_precheck(source: IO[bytes]) -> None:
    """Raise core's XRayDecodeError for a file decoding would refuse on its format or size.
    Reads the first bytes and, for DICOM, PNG and JPEG, the header; leaves `source` at 0."""
    try:
        source.seek(0)
        head = source.read(132)
        source.seek(0)
        if head[DICOM_MAGIC_AT] == b"DICM":
            size = _dicom_size(source)
        elif head.startswith((PNG_MAGIC, JPEG_MAGIC)):
            size = _raster_size(source)
        else:
            load_xray(head)  # empty, or no image format it reads: the engine's own refusal
            return
        if size is not None:
            _check_size(*size, max_pixels=settings.RADTRIAGE_MAX_PIXELS)
    finally:
        source.seek(0)


def _dicom_size(source: IO[bytes]) -> tuple[int, int] | None:
    """(columns, rows) from the header, the pixel data unread; None if it cannot be read."""
    import pydicom

    try:
        header = pydicom.dcmread(source, stop_before_pixels=True)
        return int(header.Columns), int(header.Rows)
    except Exception:  # noqa: BLE001 - a damaged header: the full decode says what is wrong
        return None


def _raster_size(source: IO[bytes]) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(source) as image:  # reads the header only
            return int(image.width), int(image.height)
    except Exception:  # noqa: BLE001 - damaged or a decompression bomb: the full decode says so
        return None
