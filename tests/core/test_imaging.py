"""Decoding: every supported format reads correctly; every bad input gets one clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import RLELossless

from core.errors import XRayDecodeError
from core.imaging import load_xray, validate_radiograph, window_linear
from tests.core.conftest import shared_dicom
from tests.core.dicom_factory import gradient_image, make_dicom


def png_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)  # type: ignore[arg-type]
    return buffer.getvalue()


# ----------------------------------------------------------------------------- DICOM


def test_monochrome2_dicom_keeps_brightness_and_reads_header(tmp_path):
    path = make_dicom(tmp_path / "a.dcm", gradient_image())
    xray = load_xray(path)
    assert xray.source_format == "dicom"
    assert xray.shape == (64, 48)
    assert xray.pixels[:, 0].mean() < 5 and xray.pixels[:, -1].mean() > 250
    meta = xray.metadata
    assert meta["PatientID"] == "MRN-0001"
    assert meta["PatientName"] == "Test^Patient"
    assert meta["BodyPartExamined"] == "CHEST"
    assert meta["PixelSpacing"] == [0.2, 0.2]
    assert meta["StudyInstanceUID"] and meta["SOPInstanceUID"]


def test_monochrome1_is_inverted_so_bone_is_white(tmp_path):
    path = make_dicom(tmp_path / "m1.dcm", gradient_image(), photometric="MONOCHROME1")
    pixels = load_xray(path).pixels
    assert pixels[:, 0].mean() > 250, "low stored values are white in MONOCHROME1"
    assert pixels[:, -1].mean() < 5


def test_modality_lut_is_applied_before_the_window(tmp_path):
    # Stored 0..1000 with slope 2, intercept -1000 -> -1000..1000. A window centred on 500 with
    # width 1000 shows only the upper half: stored values below 500 must all be black.
    stored = gradient_image(32, 101, dtype=np.uint16, top=1000)
    path = make_dicom(
        tmp_path / "r.dcm", stored, bits_stored=12, slope=2.0, intercept=-1000.0, window=(500.0, 1000.0)
    )
    pixels = load_xray(path).pixels
    below = stored[0] < 500  # rescaled value < 0 = below the window
    assert (pixels[0][below] == 0).all()
    assert pixels[0][-1] == 255
    middle = np.argmin(np.abs(stored[0] - 750))  # rescaled 500 = window centre -> mid grey
    assert 120 <= pixels[0][middle] <= 135


def test_window_tags_change_contrast(tmp_path):
    stored = gradient_image(16, 256, dtype=np.uint16, top=4095)
    narrow = load_xray(make_dicom(tmp_path / "n.dcm", stored, bits_stored=12, window=(2048, 400)))
    full = load_xray(make_dicom(tmp_path / "f.dcm", stored, bits_stored=12))
    assert (narrow.pixels == 0).mean() > 0.35 and (narrow.pixels == 255).mean() > 0.35
    assert (full.pixels == 0).mean() < 0.02


def test_window_linear_matches_the_dicom_formula():
    values = np.array([0.0, 39.5, 40.0, 60.0, 80.0, 100.0])
    out = window_linear(values, center=40.0, width=80.0)
    assert out[0] == 0 and out[-1] == 255
    assert out[2] == 129  # ((40 - 39.5) / 79 + 0.5) * 255 = 129.1


def test_rle_compressed_dicom_decodes_identically(tmp_path):
    original = gradient_image()
    path = make_dicom(tmp_path / "plain.dcm", original)
    ds = dcmread(path)
    ds.compress(RLELossless)
    rle = tmp_path / "rle.dcm"
    ds.save_as(rle)
    assert dcmread(rle).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(load_xray(rle).pixels, load_xray(path).pixels)


def test_multiframe_dicom_uses_first_frame_and_says_so(tmp_path):
    frames = np.stack([gradient_image(), 255 - gradient_image(), np.zeros((64, 48), np.uint8)])
    xray = load_xray(make_dicom(tmp_path / "mf.dcm", frames, frames=3))
    assert xray.pixels[:, -1].mean() > 250, "first frame (bright on the right) was taken"
    assert any("first frame" in note and "3 frames" in note for note in xray.notes)


def test_dicom_from_bytes_equals_dicom_from_path(tmp_path):
    path = make_dicom(tmp_path / "b.dcm", gradient_image())
    np.testing.assert_array_equal(load_xray(path.read_bytes()).pixels, load_xray(path).pixels)


@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "RG3_J2KI.dcm", "RG3_J2KR.dcm"])
def test_real_jpeg2000_monochrome1_files_decode_with_bone_white(name):
    xray = load_xray(shared_dicom(name))
    assert xray.metadata["PhotometricInterpretation"] == "MONOCHROME1"
    assert min(xray.shape) > 1000
    # The border outside the collimated field is unexposed: black once MONOCHROME1 is inverted?
    # No: unexposed film is white in MONOCHROME1 -> after inversion the centre (body) is brighter
    # than the darkest tenth of the image.
    assert xray.pixels.std() > 20


def test_real_lossy_and_lossless_jpeg2000_agree():
    lossy = load_xray(shared_dicom("RG3_J2KI.dcm")).pixels.astype(int)
    lossless = load_xray(shared_dicom("RG3_J2KR.dcm")).pixels.astype(int)
    assert np.abs(lossy - lossless).mean() < 3


def test_real_nih_dx_files_carry_their_header():
    xray = load_xray(shared_dicom("nih_dx_test2.dcm"))
    assert xray.shape == (1024, 1024)
    assert xray.metadata["Modality"] == "DX"
    assert xray.metadata["BodyPartExamined"] == "CHEST"


def test_a_ct_dicom_is_refused_as_not_a_radiograph():
    with pytest.raises(XRayDecodeError, match="modality 'CT'"):
        validate_radiograph(load_xray(shared_dicom("nih_dx_test5.dcm")))


def test_an_odd_view_position_is_noted():
    xray = validate_radiograph(load_xray(shared_dicom("nih_dx_test6.dcm")))
    assert any("Position 'XX'" in note for note in xray.notes)
    normal = validate_radiograph(load_xray(shared_dicom("nih_dx_test1.dcm")))
    assert not normal.notes


# ----------------------------------------------------------------------------- PNG / JPEG


def test_png_8bit_16bit_rgba_and_palette_all_become_gray_uint8():
    ramp = gradient_image(40, 40)
    for image in (
        Image.fromarray(ramp, "L"),
        Image.fromarray(ramp.astype(np.uint16) * 16),
        Image.fromarray(np.dstack([ramp, ramp, ramp, np.full_like(ramp, 255)]), "RGBA"),
        Image.fromarray(ramp, "L").convert("P"),
    ):
        xray = load_xray(png_bytes(image))
        assert xray.source_format == "png" and xray.pixels.dtype == np.uint8
        assert xray.shape == (40, 40)
        assert xray.pixels[:, 0].mean() < 10 and xray.pixels[:, -1].mean() > 245, image.mode


def test_16bit_png_using_12_bits_is_stretched_to_full_contrast():
    twelve_bit = gradient_image(32, 32, dtype=np.uint16, top=4095)
    pixels = load_xray(png_bytes(Image.fromarray(twelve_bit))).pixels
    assert pixels.max() == 255 and pixels.min() == 0


def test_transparent_png_areas_become_black():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 16:, 3] = 255  # right half opaque, left half transparent
    pixels = load_xray(png_bytes(Image.fromarray(rgba, "RGBA"))).pixels
    assert pixels[:, :16].max() == 0 and pixels[:, 16:].min() == 200


def test_jpeg_cmyk_and_progressive_decode():
    ramp = gradient_image(48, 48)
    rgb = Image.fromarray(np.dstack([ramp] * 3), "RGB")
    progressive = load_xray(png_bytes(rgb, format="JPEG", progressive=True, quality=95))
    cmyk = load_xray(png_bytes(rgb.convert("CMYK"), format="JPEG", quality=95))
    for xray in (progressive, cmyk):
        assert xray.source_format == "jpeg"
        assert xray.pixels[:, :3].mean() < 20 and xray.pixels[:, -3:].mean() > 235


# ----------------------------------------------------------------------------- bad input


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "e.dcm").write_bytes(b"")
    with pytest.raises(XRayDecodeError, match="empty"):
        load_xray(tmp_path / "e.dcm")


def test_random_bytes_are_refused():
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(XRayDecodeError, match="not an X-ray image"):
        load_xray(noise)


def test_a_text_file_is_refused():
    with pytest.raises(XRayDecodeError, match="DICOM .*PNG or JPEG"):
        load_xray(b"patient,finding\n1,none\n" * 20)


def test_truncated_dicom_is_refused(tmp_path):
    data = make_dicom(tmp_path / "t.dcm", gradient_image(128, 128)).read_bytes()
    with pytest.raises(XRayDecodeError, match="truncated or corrupt"):
        load_xray(data[: len(data) - 4000])


def test_truncated_dicom_header_is_refused(tmp_path):
    data = make_dicom(tmp_path / "t.dcm", gradient_image(128, 128)).read_bytes()
    with pytest.raises(XRayDecodeError):
        load_xray(data[:300])


def test_dicom_without_pixel_data_is_refused(tmp_path):
    path = make_dicom(tmp_path / "np.dcm", gradient_image())
    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(XRayDecodeError, match="no image"):
        load_xray(path)


def test_unsupported_transfer_syntax_is_named(tmp_path):
    path = make_dicom(tmp_path / "u.dcm", gradient_image())
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds.save_as(path)
    with pytest.raises(XRayDecodeError, match="transfer syntax .*not supported"):
        load_xray(path)


def test_image_over_the_pixel_limit_is_refused_before_decoding():
    big = png_bytes(Image.new("L", (600, 500)))
    with pytest.raises(XRayDecodeError, match="too large"):
        load_xray(big, max_pixels=200_000)


def test_dicom_over_the_pixel_limit_is_refused(tmp_path):
    path = make_dicom(tmp_path / "big.dcm", gradient_image(600, 500))
    with pytest.raises(XRayDecodeError, match="too large"):
        load_xray(path, max_pixels=200_000)


def test_one_pixel_image_is_refused():
    with pytest.raises(XRayDecodeError, match="too small"):
        load_xray(png_bytes(Image.new("L", (1, 1))))


def test_truncated_png_and_jpeg_are_refused():
    ramp = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))
    for data in (png_bytes(ramp), png_bytes(ramp, format="JPEG")):
        with pytest.raises(XRayDecodeError, match="damaged or truncated"):
            load_xray(data[: len(data) // 2])


def test_truncated_images_stay_refused_after_weasyprint_is_imported():
    """WeasyPrint (reports) turns on Pillow's process-wide LOAD_TRUNCATED_IMAGES on import."""
    import weasyprint  # noqa: F401
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as its import leaves it
    ramp = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200), dtype=np.uint8))
    data = png_bytes(ramp)
    with pytest.raises(XRayDecodeError, match="damaged or truncated"):
        load_xray(data[: len(data) // 2])


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(XRayDecodeError, match="No such file"):
        load_xray(tmp_path / "nope.dcm")


def test_jpeg_baseline_and_jpeg2000_dicom_decode(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    original = gradient_image(64, 64)
    plain = make_dicom(tmp_path / "plain.dcm", original)

    baseline = dcmread(plain)
    baseline.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    baseline.PixelData = encapsulate([png_bytes(Image.fromarray(original), format="JPEG", quality=95)])
    baseline.save_as(tmp_path / "jpeg.dcm")
    decoded = load_xray(tmp_path / "jpeg.dcm").pixels.astype(int)
    assert np.abs(decoded - original.astype(int)).mean() < 3

    j2k = dcmread(plain)
    j2k.compress(JPEG2000Lossless)
    j2k.save_as(tmp_path / "j2k.dcm")
    np.testing.assert_array_equal(load_xray(tmp_path / "j2k.dcm").pixels, load_xray(plain).pixels)


def test_the_pixels_can_be_read_without_the_header_summary(tmp_path) -> None:
    # The worker reads the pixels again; the header summary it already has from the upload.
    path = make_dicom(tmp_path / "w.dcm", gradient_image(), window=(2048, 4096))
    full = load_xray(path)
    pixels_only = load_xray(path, read_metadata=False)

    assert full.metadata["Modality"] and pixels_only.metadata == {}
    np.testing.assert_array_equal(pixels_only.pixels, full.pixels)


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"window": (2000.0, 1500.0)},
        {"slope": 2.0, "intercept": -1000.0},
        {"slope": -0.5, "intercept": 300.0},
        {"slope": 1.5, "intercept": 7.0, "window": (900.0, 3.0)},
        {"photometric": "MONOCHROME1"},
        {"photometric": "MONOCHROME1", "window": (1000.0, 1.0)},
        {"signed": True},
        {"signed": True, "slope": 3.0, "intercept": 11.0, "window": (-100.0, 900.0)},
    ],
)
def test_dicom_display_by_table_gives_the_same_pixels_as_pixel_by_pixel(case):
    # dicom_to_display looks each stored value up in a table computed once per value; the
    # pixels must be exactly those of the arithmetic done on every pixel.
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut

    from core.imaging import _stretch_to_uint8, dicom_to_display

    rng = np.random.default_rng(7)
    signed = case.get("signed", False)
    stored = rng.integers(-1500 if signed else 37, 3000, size=(128, 160)).astype(
        np.int16 if signed else np.uint16
    )
    ds = Dataset()
    ds.PhotometricInterpretation = case.get("photometric", "MONOCHROME2")
    if "slope" in case:
        ds.RescaleSlope, ds.RescaleIntercept = case["slope"], case["intercept"]
    if "window" in case:
        ds.WindowCenter, ds.WindowWidth = case["window"]
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    expected = (
        window_linear(values, center=case["window"][0], width=case["window"][1])
        if "window" in case
        else _stretch_to_uint8(values)
    )
    if ds.PhotometricInterpretation == "MONOCHROME1":
        expected = 255 - expected
    out = dicom_to_display(stored, ds)
    assert out.dtype == np.uint8 and out.shape == stored.shape
    np.testing.assert_array_equal(out, expected)
    assert len(np.unique(out)) > 1
