"""A corpus of hostile (and awkward but valid) inputs, generated, never committed.

`hostile_files()` returns the cases for any entry point that takes one X-ray file (the upload
page, the API, `manage.py analyze`, a batch folder, the DICOM listener to come);
`hostile_members()` adds what only an archive can carry (zip-slip, zip bomb, nested zip).
Each case says what a user must see: `accept` (a radiograph that is stored / analysed) or a
fragment of the refusal message. No case depends on Django: feed them anywhere.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

# A file name that is not UTF-8: Latin-1 bytes, as a Linux folder or an old client sends them.
# As `str` it carries them as surrogates (os.fsdecode); raw_name gives the bytes back.
NON_UTF8_NAME = b"r\xe9sum\xe9-thorax.png".decode("utf-8", "surrogateescape")
LONG_NAME = "x" * 296 + ".png"  # 300 characters: longer than any file system allows for one name


@dataclass(frozen=True)
class Case:
    """One input. expect: "accept" or "refuse"; message: a fragment of the refusal (lower case
    match), or of a note an accepted file must carry ('' for none)."""

    id: str
    name: str
    data: bytes
    expect: str
    message: str = ""
    needs_patient_id: bool = False  # PNG/JPEG carry no patient: a form or patients.csv gives it

    @property
    def raw_name(self) -> bytes:
        return self.name.encode("utf-8", "surrogateescape")

    @property
    def accepted(self) -> bool:
        return self.expect == "accept"


def dicom(
    *,
    rows: int = 64,
    cols: int = 64,
    frames: int = 1,
    seed: int = 0,
    pixel_data: bool = True,
    transfer_syntax: str | None = None,
    **header: Any,
) -> bytes:
    """A small uncompressed DICOM radiograph (DX chest), header fields overridable."""
    from pydicom import config
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rng = np.random.default_rng(seed)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = FileDataset("corpus.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    values: dict[str, Any] = {
        "SOPClassUID": meta.MediaStorageSOPClassUID,
        "SOPInstanceUID": meta.MediaStorageSOPInstanceUID,
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "PatientID": f"MRN-HOSTILE-{seed}",
        "PatientName": "Hostile^Corpus",
        "PatientSex": "O",
        "StudyDate": "20261201",
        "Modality": "DX",
        "BodyPartExamined": "CHEST",
        "ViewPosition": "PA",
        **header,
    }
    with config.disable_value_validation():  # the corpus writes what a hostile sender would
        for key, value in values.items():
            setattr(ds, key, value)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if pixel_data:
            pixels = rng.integers(0, 4096, size=(frames, rows, cols), dtype=np.uint16)
            if transfer_syntax:
                from pydicom.encaps import encapsulate

                ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60] * frames)
            else:
                ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def raster(mode: str, *, size: int = 64, fmt: str = "PNG", seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 4096, size=(size, size), dtype=np.uint16))
    elif mode == "RGBA":
        image = Image.fromarray(rng.integers(0, 255, size=(size, size, 4), dtype=np.uint8), "RGBA")
    else:
        image = Image.fromarray(rng.integers(0, 255, size=(size, size), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose data is a few bytes: a
    decompression bomb as far as any decoder that trusts the header is concerned."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def hostile_files(*, max_upload_bytes: int | None = None) -> list[Case]:
    """Every single-file case. max_upload_bytes: add a file one byte over that limit."""
    good = dicom(seed=1)
    huge = "A" * 5000
    cases = [
        Case("empty", "empty.dcm", b"", "refuse", "empty"),
        Case("random-dcm", "noise.dcm", _random(4096, 1), "refuse", "not an x-ray image"),
        Case("random-png", "noise.png", _random(4096, 2), "refuse", "not an x-ray image"),
        Case("random-jpg", "noise.jpg", _random(4096, 3), "refuse", "not an x-ray image"),
        Case("png-magic-garbage", "broken.png", b"\x89PNG\r\n\x1a\n" + _random(2048, 4), "refuse", "damaged"),
        Case("truncated-dicom", "truncated.dcm", good[: len(good) // 2], "refuse", "truncated or corrupt"),
        Case("truncated-dicom-header", "cut.dcm", good[:300], "refuse", "dicom"),
        Case("dicom-no-pixels", "sr.dcm", dicom(seed=2, pixel_data=False), "refuse", "no pixel data"),
        Case(
            "dicom-mpeg2",
            "video.dcm",
            dicom(seed=3, transfer_syntax="1.2.840.10008.1.2.4.100"),
            "refuse",
            "transfer syntax",
        ),
        Case("pdf-as-dcm", "report.dcm", b"%PDF-1.7\n" + _random(2048, 5), "refuse", "not an x-ray image"),
        Case("zip-as-file", "archive.zip", _zip([("a.dcm", good)]), "refuse", "not an x-ray image"),
        Case("png-bomb-30000", "bomb.png", png_header_only(30000, 30000), "refuse", "too large"),
        Case("one-pixel", "pixel.png", raster("L", size=1), "refuse", "too small", needs_patient_id=True),
        Case("png-16bit", "sixteen.png", raster("I;16", seed=6), "accept", needs_patient_id=True),
        Case("png-rgba", "rgba.png", raster("RGBA", seed=7), "accept", needs_patient_id=True),
        Case("jpeg-cmyk", "cmyk.jpg", raster("CMYK", fmt="JPEG", seed=8), "accept", needs_patient_id=True),
        Case("dicom-multiframe", "cine.dcm", dicom(seed=9, frames=3), "accept", "multi-frame"),
        Case(
            # Long text fields are cut to fit; nothing of this is used as a name or path.
            "dicom-huge-text",
            "huge-text.dcm",
            dicom(seed=10, PatientName=huge, StudyDescription=huge, AccessionNumber=huge, ViewPosition=huge),
            "accept",
        ),
        Case(
            "dicom-huge-uid",
            "huge-uid.dcm",
            dicom(seed=11, SOPInstanceUID="1." * 2500 + "1"),
            "refuse",
            "uid",
        ),
        Case(
            "dicom-path-uid", "path-uid.dcm", dicom(seed=12, StudyInstanceUID="../../../etc"), "refuse", "uid"
        ),
        Case("dicom-huge-patient-id", "huge-id.dcm", dicom(seed=13, PatientID=huge), "refuse", "patient id"),
        Case("name-not-utf8", NON_UTF8_NAME, raster("L", seed=14), "accept", needs_patient_id=True),
        Case("name-300-chars", LONG_NAME, raster("L", seed=15), "accept", needs_patient_id=True),
    ]
    if max_upload_bytes is not None:
        big = dicom(seed=16, rows=64, cols=64)
        big += b"\0" * (max_upload_bytes + 1 - len(big))
        cases.append(Case("over-size-limit", "big.dcm", big, "refuse", "bytes"))
    return cases


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def hostile_members() -> list[Case]:
    """What only an archive (or a folder) can carry. The reasons are archive_safety's."""
    return [
        Case("zip-slip", "../../escaped.dcm", dicom(seed=20), "refuse", "zip-slip"),
        Case("absolute-path", "/tmp/absolute.dcm", dicom(seed=21), "refuse", "absolute"),
        Case("zip-bomb", "bomb.dcm", b"\0" * (3 * 2**19), "refuse", "zip bomb"),  # 1.5 MiB, ~1000:1
        Case("nested-zip", "inner.zip", _zip([("x.dcm", dicom(seed=22))]), "refuse", "nested"),
    ]


def hostile_archive(cases: list[Case]) -> bytes:
    """One .zip holding every case under its own name (names that are not UTF-8 become
    U+FFFD: a zip member name is text)."""
    return _zip(
        [(c.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), c.data) for c in cases]
    )
