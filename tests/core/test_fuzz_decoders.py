"""Property-based fuzzing (hypothesis) of the two parsers that read what others send: the image
decoder (core.imaging) and the registry loader (core.registry). Whatever the bytes, the only
exception a caller ever sees is the documented one (XRayDecodeError, RegistryError), with a
message a person can read: never a crash, a traceback or a server path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import RegistryError, XRayDecodeError
from core.imaging import load_dicom_values, load_xray, validate_radiograph
from core.registry import Registry
from tests.hostile_corpus import dicom, raster

# A small pixel limit: a mutated header may declare a large image, and the fuzz stays quick.
MAX_PIXELS = 512 * 512
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples every run: a failure here is reproducible
)
SEEDS = {
    "dicom": dicom(seed=1, rows=48, cols=40),
    "dicom-multiframe": dicom(seed=2, rows=32, cols=32, frames=2),
    "png": raster("L", size=40),
    "png16": raster("I;16", size=40),
    "jpeg": raster("L", size=40, fmt="JPEG"),
}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file with bytes flipped, cut, inserted or duplicated: what a bad disk, a broken
    transfer or a hostile sender makes of it."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        if not data:
            break
    return bytes(data)


MAGIC = st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 128 + b"DICM"])
ANY_BYTES = st.one_of(
    mutated(),
    st.tuples(MAGIC, st.binary(max_size=2048)).map(lambda parts: parts[0] + parts[1]),
)


def assert_readable(message: str) -> None:
    assert message and "Traceback" not in message and "object at 0x" not in message, message


@FUZZ
@given(data=ANY_BYTES)
def test_the_decoder_only_ever_raises_xray_decode_error(data: bytes) -> None:
    try:
        xray = validate_radiograph(load_xray(data, max_pixels=MAX_PIXELS))
    except XRayDecodeError as exc:
        assert_readable(str(exc))
        return
    # What it does return is a display-ready image.
    assert xray.pixels.dtype.name == "uint8" and xray.pixels.ndim == 2
    assert xray.shape[0] * xray.shape[1] <= MAX_PIXELS


@FUZZ
@given(data=mutated())
def test_the_viewer_s_dicom_reader_only_ever_raises_xray_decode_error(data: bytes) -> None:
    try:
        values = load_dicom_values(data, max_pixels=MAX_PIXELS)
    except XRayDecodeError as exc:
        assert_readable(str(exc))
        return
    assert values.values.ndim == 2


# --------------------------------------------------------------------------- the registry

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["pneumonia", "cardiomegaly", "mobilenetv2", "validated", "none", "platt"]),
)
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
VALID_ENTRY = {
    "id": "pneumonia-v1",
    "condition": "pneumonia",
    "architecture": "mobilenetv2",
    "input_size": [224, 224],
    "class_labels": ["normal", "pneumonia"],
    "threshold": 0.5,
    "artifact": "models/p.keras",
}
FIELDS = sorted({*VALID_ENTRY, "sha256", "status", "calibration", "population"})


@st.composite
def registry_documents(draw: st.DrawFn) -> object:
    """Near-valid registries with any field replaced by any JSON value, or any JSON at all."""
    if draw(st.booleans()):
        return draw(ANY_JSON)
    entry = dict(VALID_ENTRY)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        entry[name] = draw(ANY_JSON)
    active = draw(st.one_of(st.just({"pneumonia": "pneumonia-v1"}), ANY_JSON))
    return {
        "schema_version": 1,
        "models": [entry, draw(ANY_JSON)][: draw(st.integers(1, 2))],
        "active_models": active,
    }


def _dump(document: object) -> str:
    try:
        return json.dumps(document, allow_nan=True)
    except (ValueError, OverflowError):  # pragma: no cover - a float json cannot write
        return "{}"


REGISTRY_TEXT = st.one_of(
    registry_documents().map(_dump),
    st.text(max_size=200),
    st.just("[" * 100_000),  # nested beyond the JSON reader's recursion limit
)


@FUZZ
@given(text=REGISTRY_TEXT, raw=st.binary(max_size=64))
def test_the_registry_loader_only_ever_raises_registry_error(tmp_path_factory, text: str, raw: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("reg")) / "registry.json"
    for content in (text.encode("utf-8", "surrogatepass"), raw):
        path.write_bytes(content)
        try:
            registry = Registry.load(path)
        except RegistryError as exc:
            assert_readable(str(exc))
            continue
        # What loads is usable: every active model is registered, and its threshold a number.
        for condition, model_id in registry.active_models.items():
            entry = registry.entry(model_id)
            assert entry.condition == condition and math.isfinite(entry.threshold)


def test_a_registry_that_is_a_folder_or_missing_is_a_registry_error(tmp_path) -> None:
    with pytest.raises(RegistryError, match="not found"):
        Registry.load(tmp_path / "absent.json")
    with pytest.raises(RegistryError):
        Registry.load(tmp_path)
