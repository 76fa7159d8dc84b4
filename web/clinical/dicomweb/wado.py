"""WADO-RS (PS3.18 10.4): a study, a series or an instance as DICOM files (multipart/related,
byte-faithful to what was stored), its metadata in DICOM JSON, and an instance rendered."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from web.clinical.dicomweb.catalogue import Instance, instance_bytes, instance_dataset, study_instances
from web.clinical.models import Image, Study

DICOM = "application/dicom"
RENDERED_TYPES = ("image/jpeg", "image/png")


class NotFound(LookupError):
    """Nothing under these UIDs (`str()` names what is missing)."""


class NotAcceptable(ValueError):
    """The client asked for a representation the service does not give (`str()` says which)."""


def instances_find(
    study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> tuple[Study, list[Instance]]:
    """The instances under the given UIDs (a study, one of its series, one instance)."""
    study = Study.objects.select_related("patient").filter(study_instance_uid=study_uid).first()
    if study is None:
        raise NotFound(f"No study with StudyInstanceUID {study_uid}.")
    found = [
        i
        for i in study_instances(study)
        if (series_uid is None or i.series_uid == series_uid) and (sop_uid is None or i.sop_uid == sop_uid)
    ]
    if not found:
        what = f"instance {sop_uid}" if sop_uid else f"series {series_uid}"
        raise NotFound(f"No {what} in study {study_uid}.")
    return study, found


@dataclass(frozen=True)
class Multipart:
    """A multipart/related answer: its Content-Type and its body, a part at a time."""

    content_type: str
    parts: Iterator[bytes]


def dicom_multipart(instances: Sequence[Instance], accept: str) -> Multipart:
    """The instances as application/dicom parts, each exactly as stored (its own transfer
    syntax, said on the part). An Accept that names another transfer syntax is refused."""
    wanted = accepted_transfer_syntax(accept)
    boundary = uuid.uuid4().hex
    files = [(instance, instance_bytes(instance)) for instance in instances]
    syntaxes = [_transfer_syntax(data) for _, data in files]
    if wanted not in (None, "*") and any(s != wanted for s in syntaxes):
        raise NotAcceptable(
            f"The instances are kept as stored ({', '.join(sorted(set(syntaxes)))}) and are not "
            f"transcoded to {wanted}: ask for transfer-syntax=* to receive them as stored."
        )

    def parts() -> Iterator[bytes]:
        for (_, data), syntax in zip(files, syntaxes, strict=True):
            head = f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={syntax}\r\n\r\n"
            yield head.encode("ascii") + data + b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    return Multipart(f'multipart/related; type="{DICOM}"; boundary={boundary}', parts())


def accepted_transfer_syntax(accept: str) -> str | None:
    """The transfer syntax an Accept header asks for (None: any; '*': as stored). Raises
    NotAcceptable when it asks for neither DICOM files nor anything."""
    if not accept.strip():
        return None
    for media_range in accept.split(","):
        kind, *params = [p.strip() for p in media_range.split(";")]
        values = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)}
        if kind in ("*/*", "multipart/*") or (
            kind == "multipart/related" and values.get("type", DICOM) in (DICOM, "application/*", "*/*")
        ):
            return values.get("transfer-syntax")
    raise NotAcceptable(f'Ask for multipart/related; type="{DICOM}" (the service cannot give {accept}).')


def _transfer_syntax(data: bytes) -> str:
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(dataset.file_meta.TransferSyntaxUID)


def metadata_json(instances: Sequence[Instance], *, base_url: str) -> list[dict[str, object]]:
    """Each instance's data set in DICOM JSON, its pixel data given as a bulk-data URI."""
    out = []
    for instance in instances:
        dataset = instance_dataset(instance)
        answer = dataset.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=lambda _: "")
        for key in [k for k, v in answer.items() if v.get("BulkDataURI") == ""]:
            del answer[key]  # large values: read them from the instance itself
        if instance.kind != "sr":
            answer["7FE00010"] = {"vr": "OB", "BulkDataURI": f"{base_url}{_instance_path(instance)}"}
        out.append(answer)
    return out


def _instance_path(instance: Instance) -> str:
    study = instance.study.study_instance_uid
    return f"studies/{study}/series/{instance.series_uid}/instances/{instance.sop_uid}"


def rendered_media_type(accept: str) -> str:
    """image/jpeg (the default) or image/png, as the Accept header prefers."""
    for media_range in (accept or "image/jpeg").split(","):
        kind = media_range.split(";")[0].strip()
        if kind in RENDERED_TYPES:
            return kind
        if kind in ("*/*", "image/*"):
            return "image/jpeg"
    raise NotAcceptable(f"A rendered instance is image/jpeg or image/png (not {accept}).")


def window_parse(value: str) -> tuple[float, float] | None:
    """`window=center,width[,function]` (PS3.18 8.3.5.1.4); only the LINEAR function."""
    if not value:
        return None
    parts = value.split(",")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() not in ("linear", "")):
        raise ValueError("window: give center,width (and optionally linear).")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError("window: center and width must be numbers.") from None
    if width < 1:
        raise ValueError("window: the width must be at least 1.")
    return center, width


def instance_rendered(instance: Instance, *, media_type: str, window: tuple[float, float] | None) -> bytes:
    """The instance's pixels as a picture: a stored image through its window (or the given
    one), inverted when MONOCHROME1; a heat-map capture as it is. An SR has no picture."""
    import cv2

    if instance.kind == "sr":
        raise NotAcceptable("A structured report has no pixels to render; retrieve it as DICOM.")
    if instance.kind == "sc":
        pixels = instance_dataset(instance, pixels=True).pixel_array[..., ::-1]  # RGB -> BGR
    else:
        pixels = _grey_rendered(instance.image, window)
    ok, buffer = cv2.imencode(".png" if media_type == "image/png" else ".jpg", np.ascontiguousarray(pixels))
    if not ok:
        raise ValueError("The picture could not be encoded.")
    return bytes(buffer.tobytes())


def _grey_rendered(image: Image, window: tuple[float, float] | None) -> np.ndarray:
    from django.conf import settings

    from core.imaging import load_dicom_values, window_linear

    with image.file.open("rb") as handle:
        dicom = load_dicom_values(handle.read(), max_pixels=settings.RADTRIAGE_MAX_PIXELS)
    values = dicom.values
    center, width = window or dicom.window or ((values.min() + values.max()) / 2, max(np.ptp(values), 1.0))
    grey = window_linear(values, center=float(center), width=float(width))
    return 255 - grey if dicom.monochrome1 else grey
