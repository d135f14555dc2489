"""Tests for explorer.imaging: real chest X-rays, synthetic edge cases and hostile inputs."""

from __future__ import annotations

import io
import json
import logging
import struct
import time
import zipfile
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder

from explorer import imaging
from explorer.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageLoadError,
    ImageShapeError,
    ImageTooLargeError,
    ImageTooSmallError,
    MissingPixelDataError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)
from explorer.imaging import (
    MAX_ASPECT,
    MAX_KEPT_SIDE,
    MAX_PIXELS,
    MAX_SIDE,
    MONOCHROME1_NOTE,
    LoadedImage,
    describe,
    downscale,
    load_image,
    load_radiograph,
    to_uint8,
)

EPS = 1e-6
PLANTED = {
    "PatientName": "Doe^Jane",
    "PatientID": "SECRET-ID-4711",
    "PatientBirthDate": "19700101",
    "InstitutionName": "St Example Hospital",
    "StudyDate": "20240229",
    "AccessionNumber": "ACC998877",
}
PLANTED_STRINGS = ("Doe", "Jane", "SECRET", "4711", "19700101", "Example", "20240229", "998877")


# --- builders -----------------------------------------------------------------------------


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG whose IHDR claims ``width x height`` but whose IDAT is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def dicom_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    tsyntax: uid.UID = uid.ExplicitVRLittleEndian,
    **attrs: object,
) -> Dataset:
    """An in-memory Secondary Capture data set holding ``pixels`` (frames first if 3-D)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.SOPClassUID = uid.SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CR"
    if pixels is not None:
        bits = bits_stored or pixels.dtype.itemsize * 8
        ds.set_pixel_data(pixels, photometric, bits)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def make_dicom(pixels: np.ndarray | None, **kwargs: object) -> bytes:
    return dicom_bytes(dicom_dataset(pixels, **kwargs))


def encapsulated_dicom(tsyntax: uid.UID, rows: int = 8, columns: int = 8) -> bytes:
    """A DICOM with compressed transfer syntax ``tsyntax`` and a dummy fragment."""
    ds = dicom_dataset(None, tsyntax=tsyntax)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def assert_clear_message(err: ImageLoadError, *forbidden: str) -> None:
    """``str(err)`` is one sentence for a person: no traceback, no file name, no path."""
    msg = str(err)
    assert msg and msg[0].isupper() and msg.endswith("."), msg
    assert msg.count(". ") == 0 and "\n" not in msg, msg
    assert "Traceback" not in msg and "Error" not in msg, msg
    assert "/" not in msg.replace("H.265", ""), msg
    for text in forbidden:
        assert text not in msg, msg


# --- real images --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "size", "photometric"),
    [
        ("00000001_000.png", "PNG", (512, 512), "MONOCHROME2"),
        ("00027426_000.png", "PNG", (512, 512), "MONOCHROME2"),
        ("h0001.png", "PNG", (512, 512), "RGB"),
        ("tb0005.png", "PNG", (512, 512), "RGB"),
        ("16747_3_1.jpg", "JPEG", (885, 1036), "RGB"),
    ],
)
def test_real_pillow_samples(samples_dir, name, fmt, size, photometric):
    path = samples_dir / name
    img = load_image(path)
    assert img.pixels.dtype == np.float32
    assert img.pixels.shape == size
    assert img.meta.format == fmt
    assert (img.meta.height, img.meta.width) == size
    assert img.meta.photometric == photometric
    assert img.meta.bit_depth == 8
    assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
    assert img.pixels.std() > 0.1  # a real radiograph, not a flat field
    # 8-bit: exactly Pillow's 8-bit luminance divided by 255, no contrast stretch.
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(img.pixels, expected, atol=EPS)
    assert ("RGB converted to grayscale." in img.meta.notes) == (photometric == "RGB")
    # Bytes and path give the same result.
    np.testing.assert_array_equal(load_image(path.read_bytes()).pixels, img.pixels)


def test_siim_dicom_jpeg_baseline(samples_dir):
    path = samples_dir / "siim-pneumothorax-sample.dcm"
    img = load_image(path)
    meta = img.meta
    assert (meta.format, meta.width, meta.height, meta.bit_depth) == ("DICOM", 1024, 1024, 8)
    assert (meta.photometric, meta.modality, meta.view_position) == ("MONOCHROME2", "CR", "PA")
    assert meta.transfer_syntax == "JPEG Baseline (Process 1)"
    assert "min-max" in meta.windowing  # no window in this file
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(img.pixels, expected, atol=EPS)
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0


def test_siim_monochrome1_sample_is_a_tag_flip_and_loads_inverted(samples_dir):
    """The shared MONOCHROME1 sample only differs from its twin in the Photometric tag.

    Its stored values were not inverted (the Pixel Data bytes are identical), so a correct
    MONOCHROME1 display is the *negative* of the MONOCHROME2 twin. A true twin (stored values
    inverted, as a MONOCHROME1 detector writes them) is tested synthetically below.
    """
    m2_path = samples_dir / "siim-pneumothorax-sample.dcm"
    m1_path = samples_dir / "siim-pneumothorax-sample-monochrome1.dcm"
    ds2, ds1 = pydicom.dcmread(m2_path), pydicom.dcmread(m1_path)
    assert ds1.PhotometricInterpretation == "MONOCHROME1"
    assert ds1.PixelData == ds2.PixelData, "sample was regenerated: update this test"

    m2, m1 = load_image(m2_path), load_image(m1_path)
    assert MONOCHROME1_NOTE in m1.meta.notes
    assert MONOCHROME1_NOTE not in m2.meta.notes
    np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels, atol=EPS)


def test_true_monochrome1_twin_of_real_image_equals_monochrome2(samples_dir):
    """Stored values inverted + MONOCHROME1 must display like the MONOCHROME2 original."""
    m2_path = samples_dir / "siim-pneumothorax-sample.dcm"
    stored = pydicom.dcmread(m2_path).pixel_array  # uint8, MONOCHROME2
    twin = make_dicom((255 - stored).astype(np.uint8), photometric="MONOCHROME1")
    m2, m1 = load_image(m2_path), load_image(twin)
    assert m1.meta.photometric == "MONOCHROME1"
    assert np.abs(m1.pixels - m2.pixels).max() <= 1 / 255 + EPS


def test_pydicom_data_chest_j2k_matches_uncompressed():
    get = pydicom.data.get_testdata_file
    j2k = load_image(get("RG1_J2KI.dcm"))  # lossy JPEG 2000 (10:1)
    unc = load_image(get("RG1_UNCR.dcm"))  # original, uncompressed
    unci = load_image(get("RG1_UNCI.dcm"))  # the lossy image stored uncompressed

    for img in (j2k, unc):
        assert img.pixels.shape == (1955, 1841)
        assert (img.meta.modality, img.meta.view_position) == ("CR", "PA")
        assert (img.meta.photometric, img.meta.bit_depth) == ("MONOCHROME1", 15)
        assert img.meta.windowing.startswith("DICOM window centre 15000, width 30000")
        assert MONOCHROME1_NOTE in img.meta.notes
    assert j2k.meta.transfer_syntax == "JPEG 2000 Image Compression"

    diff = np.abs(j2k.pixels - unc.pixels)
    assert diff.mean() < 0.005 and diff.max() < 0.03
    assert np.corrcoef(j2k.pixels.ravel(), unc.pixels.ravel())[0, 1] > 0.999
    # The decoder reproduces the reference decompression exactly.
    np.testing.assert_allclose(j2k.pixels, unci.pixels, atol=EPS)

    # Window (C=15000, W=30000, LINEAR) on the stored values, then MONOCHROME1 inversion.
    raw = pydicom.dcmread(get("RG1_UNCR.dcm")).pixel_array.astype(np.float64)
    expected = 1.0 - np.clip((raw - 14999.5) / 29999 + 0.5, 0, 1)
    np.testing.assert_allclose(unc.pixels, expected, atol=1e-5)


# --- synthetic images ---------------------------------------------------------------------


def test_16bit_png_keeps_order_and_uses_full_range():
    rng = np.random.default_rng(1)
    values = rng.integers(1000, 4001, size=(24, 32)).astype(np.uint16)  # 12-bit data
    values[0, 0], values[0, 1] = 1000, 4000
    img = load_image(png_bytes(values))
    assert Image.open(io.BytesIO(png_bytes(values))).mode == "I;16"
    assert img.meta.bit_depth == 16 and img.meta.photometric == "MONOCHROME2"
    assert "min-max" in img.meta.windowing
    np.testing.assert_allclose(img.pixels, (values - 1000.0) / 3000.0, atol=EPS)
    flat_in, flat_out = values.ravel(), img.pixels.ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= 0)


def test_8bit_png_is_not_stretched():
    values = np.full((8, 8), 100, dtype=np.uint8)
    values[0, 0] = 150
    img = load_image(png_bytes(values))
    assert img.pixels[0, 0] == pytest.approx(150 / 255) and img.pixels[1, 1] == pytest.approx(
        100 / 255
    )


def test_rgba_png_converted_to_grayscale_ignoring_alpha():
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 7)])
    img = load_image(png_bytes(rgba))
    assert img.meta.photometric == "RGBA"
    assert any("transparency ignored" in note for note in img.meta.notes)
    np.testing.assert_allclose(img.pixels, gray / 255.0, atol=EPS)


def test_palette_png_converted_through_its_palette():
    indices = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette([0, 0, 0, 255, 255, 255, 200, 200, 200, 255, 0, 0] + [0] * (256 * 3 - 12))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    img = load_image(buf.getvalue())
    assert img.meta.photometric == "PALETTE COLOR"
    assert "Palette colour image converted to grayscale." in img.meta.notes
    red_luma = round(255 * 299 / 1000) / 255
    np.testing.assert_allclose(img.pixels, [[0, 1], [200 / 255, red_luma]], atol=1 / 255)


def test_exif_orientation_rotates_jpeg():
    arr = np.zeros((20, 40), dtype=np.uint8)  # 40 wide, 20 high
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    img = load_image(buf.getvalue())
    assert img.pixels.shape == (40, 20)  # now 20 wide, 40 high
    assert (img.meta.width, img.meta.height) == (20, 40)
    assert img.pixels[:20].mean() > 0.9 and img.pixels[20:].mean() < 0.1  # left -> top
    assert any("EXIF orientation" in note for note in img.meta.notes)


def test_multipage_16bit_tiff_first_page():
    pages = [Image.fromarray(np.array([[100, 300], [200, 400]], dtype=np.uint16))]
    pages.append(Image.fromarray(np.full((2, 2), 9, dtype=np.uint16)))
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    img = load_image(buf.getvalue())
    assert (img.meta.format, img.meta.bit_depth, img.meta.number_of_frames) == ("TIFF", 16, 2)
    assert "Multi-frame image: showing frame 1 of 2." in img.meta.notes
    np.testing.assert_allclose(img.pixels, [[0, 2 / 3], [1 / 3, 1]], atol=EPS)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP"])
def test_other_pillow_formats(fmt):
    gray = np.repeat(np.arange(0, 256, 32, dtype=np.uint8)[None, :], 3, axis=0)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = load_image(buf.getvalue())
    assert img.meta.format == fmt and img.pixels.shape == (3, 8)
    np.testing.assert_allclose(img.pixels, gray / 255.0, atol=1 / 255 + EPS)


def test_rgb_dicom_converted_to_grayscale():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 255  # pure green
    img = load_image(make_dicom(rgb, photometric="RGB"))
    assert img.meta.photometric == "RGB"
    assert "RGB converted to grayscale." in img.meta.notes
    np.testing.assert_allclose(img.pixels, 0.587, atol=1e-3)


def test_format_comes_from_content_not_extension(tmp_path):
    path = tmp_path / "looks_like.dcm"
    path.write_bytes(png_bytes(np.full((4, 5), 255, dtype=np.uint8)))
    img = load_image(path)
    assert img.meta.format == "PNG" and img.pixels.shape == (4, 5)
    assert np.all(img.pixels == 1.0)


def test_synthetic_monochrome1_dicom_inverted():
    ramp = np.tile(np.arange(0, 4096, 256, dtype=np.uint16), (4, 1))  # dark -> bright stored
    img = load_image(make_dicom(ramp, photometric="MONOCHROME1", bits_stored=12))
    assert img.meta.photometric == "MONOCHROME1" and img.meta.bit_depth == 12
    assert MONOCHROME1_NOTE in img.meta.notes
    expected = 1.0 - (ramp - ramp.min()) / (ramp.max() - ramp.min())
    np.testing.assert_allclose(img.pixels, expected, atol=EPS)
    assert img.pixels[0, 0] == 1.0 and img.pixels[0, -1] == 0.0


def test_multiframe_dicom_shows_first_frame_with_note():
    frames = np.stack([np.full((6, 5), v, dtype=np.uint8) for v in (10, 200, 90)])
    frames[0, 0, 0] = 250
    img = load_image(make_dicom(frames, NumberOfFrames=3))
    assert img.pixels.shape == (6, 5)
    assert img.meta.number_of_frames == 3
    assert "Multi-frame DICOM: showing frame 1 of 3." in img.meta.notes
    # Frame 1 (min-max of 10..250), not frames 2 or 3.
    assert img.pixels[0, 0] == 1.0 and img.pixels[3, 3] == 0.0


def test_modality_lut_applied_before_window():
    stored = np.array([[0, 250, 500, 750, 1000]], dtype=np.uint16)
    data = make_dicom(
        stored,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=2000,
    )
    img = load_image(data)
    # Rescale first: -1000, -500, 0, 500, 1000 -> window [-1000, 1000] -> 0 .. 1.
    # (Windowing the stored values instead would give 0.5 .. 1.)
    np.testing.assert_allclose(img.pixels[0], [0, 0.25, 0.5, 0.75, 1.0], atol=1e-3)
    assert img.meta.windowing == "DICOM window centre 0, width 2000 (LINEAR)"


def test_window_clips_outside_values():
    stored = np.array([[0, 100, 150, 200, 4000]], dtype=np.uint16)
    img = load_image(make_dicom(stored, bits_stored=12, WindowCenter=150, WindowWidth=101))
    assert img.pixels[0, 0] == 0.0 and img.pixels[0, -1] == 1.0
    assert img.pixels[0, 2] == pytest.approx(0.5, abs=0.01)


def test_unusable_window_falls_back_to_min_max():
    stored = np.array([[100, 200, 300]], dtype=np.uint16)
    img = load_image(make_dicom(stored, bits_stored=12, WindowCenter=200, WindowWidth=0))
    np.testing.assert_allclose(img.pixels[0], [0, 0.5, 1.0], atol=EPS)
    assert "unusable" in img.meta.windowing
    assert any("window settings could not be used" in note for note in img.meta.notes)


def test_voi_lut_sequence_used_with_its_effective_range():
    stored = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    ds = dicom_dataset(stored, bits_stored=12)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 16])
    item.add_new("LUTData", "US", [0, 1000, 2000, 4095])  # 12-bit values, declared 16-bit
    ds.VOILUTSequence = [item]
    img = load_image(dicom_bytes(ds))
    np.testing.assert_allclose(img.pixels[0], [0, 1000 / 4095, 2000 / 4095, 1.0], atol=EPS)
    assert img.meta.windowing == "DICOM VOI LUT"


def test_dicom_without_preamble_is_accepted():
    values = np.array([[0, 50], [100, 200]], dtype=np.uint8)
    full = make_dicom(values)
    img = load_image(full[128:])  # "DICM" + file meta + data set
    np.testing.assert_allclose(img.pixels, values / 200.0, atol=EPS)
    ds = dicom_dataset(values)
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)  # bare data set
    bare = buf.getvalue()
    assert bare[128:132] != b"DICM" and not bare.startswith(b"DICM")
    img = load_image(bare)
    assert img.meta.format == "DICOM"
    np.testing.assert_allclose(img.pixels, values / 200.0, atol=EPS)


def test_deflated_dicom_loads():
    values = np.arange(64, dtype=np.uint8).reshape(8, 8)
    img = load_image(make_dicom(values, tsyntax=uid.DeflatedExplicitVRLittleEndian))
    assert img.meta.transfer_syntax == "Deflated Explicit VR Little Endian"
    np.testing.assert_allclose(img.pixels, values / 63.0, atol=EPS)


def test_no_patient_data_in_meta_describe_or_repr():
    values = np.arange(64, dtype=np.uint16).reshape(8, 8)
    data = make_dicom(values, bits_stored=12, ViewPosition="AP", **PLANTED)
    assert b"Doe^Jane" in data
    img = load_image(data)
    assert (img.meta.modality, img.meta.view_position) == ("CR", "AP")
    text = json.dumps(describe(img)) + repr(img) + repr(img.meta) + str(img.meta.to_dict())
    for secret in PLANTED_STRINGS:
        assert secret not in text
    # Free text smuggled into an allow-listed attribute is dropped, not copied.
    with pydicom.config.disable_value_validation():
        data = make_dicom(values, Modality="DOE", ViewPosition="JANE DOE PA")
    smuggled = load_image(data)
    assert smuggled.meta.modality is None and smuggled.meta.view_position is None
    ok = load_image(make_dicom(values, Modality="DX", ViewPosition="AP AXIAL"))
    assert (ok.meta.modality, ok.meta.view_position) == ("DX", "AP AXIAL")


def test_no_patient_data_in_logs_or_warnings(caplog, recwarn):
    values = np.arange(64, dtype=np.uint16).reshape(8, 8)
    ds = dicom_dataset(values, bits_stored=12, **PLANTED)
    # Values pydicom's validator would complain about, quoting them in its warning.
    ds.PatientID = "SECRET-ID-4711 " * 10  # longer than LO allows
    ds.PatientSex = "Doe^Jane"  # not a valid CS
    with pydicom.config.disable_value_validation():
        data = dicom_bytes(ds)
    recwarn.clear()
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        load_image(data)
        load_image(data[128:])  # no preamble
        del ds.file_meta
        buf = io.BytesIO()
        with pydicom.config.disable_value_validation():
            pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
        load_image(buf.getvalue())  # bare data set: every element is read
    text = caplog.text + " ".join(str(w.message) for w in recwarn)
    for secret in PLANTED_STRINGS:
        assert secret not in text


def test_describe_is_json_safe_and_correct(samples_dir):
    img = load_image(samples_dir / "00000001_000.png")
    info = json.loads(json.dumps(describe(img)))
    assert info["format"] == "PNG" and info["width"] == 512 and info["notes"] == []
    stats = info["pixel_stats"]
    assert set(stats) == {"min", "max", "mean", "std", "p1", "p50", "p99"}
    assert stats["mean"] == pytest.approx(float(img.pixels.mean()), abs=1e-5)
    assert stats["std"] == pytest.approx(float(img.pixels.std()), abs=1e-5)
    assert stats["p50"] == pytest.approx(float(np.median(img.pixels)), abs=1e-5)
    assert stats["min"] <= stats["p1"] <= stats["p50"] <= stats["p99"] <= stats["max"]


def test_to_uint8():
    pixels = np.array([[0.0, 0.5, 1.0], [-1.0, 2.0, np.nan]], dtype=np.float32)
    out = to_uint8(pixels)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 128, 255], [0, 255, 0]])
    same = np.array([[3, 250]], dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(same), same)
    with pytest.raises(ValueError):
        to_uint8(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        to_uint8(np.zeros((2, 2), dtype=np.int16))


def test_loaded_image_is_frozen():
    img = load_image(png_bytes(np.zeros((2, 2), dtype=np.uint8)))
    assert isinstance(img, LoadedImage)
    with pytest.raises(AttributeError):
        img.meta = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        img.meta.width = 3  # type: ignore[misc]


# --- hostile and broken inputs ------------------------------------------------------------


def _real_png() -> bytes:
    rng = np.random.default_rng(2)
    return png_bytes(rng.integers(0, 256, (128, 128), dtype=np.uint8))


def _real_jpeg() -> bytes:
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("xray.png", _real_png())
    return buf.getvalue()


def _bomb_dicom() -> bytes:
    ds = dicom_dataset(None)
    ds.Rows = ds.Columns = 30000
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(16)
    return dicom_bytes(ds)


def _truncated_dicom() -> bytes:
    data = make_dicom(np.arange(10_000, dtype=np.uint16).reshape(100, 100), bits_stored=16)
    return data[: len(data) // 2]


def _truncated_compressed_dicom() -> bytes:
    """A JPEG-compressed DICOM cut in the middle of its (encapsulated) Pixel Data."""
    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, format="JPEG")
    ds = dicom_dataset(None, tsyntax=uid.JPEGBaseline8Bit)
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    data = dicom_bytes(ds)
    assert load_image(data).pixels.shape == (64, 64)  # the untruncated file is fine
    return data[: len(data) - 400]


BAD_INPUTS = {
    "empty": (lambda: b"", EmptyFileError),
    "truncated png": (lambda: _real_png()[:3000], CorruptImageError),
    "png signature only": (lambda: b"\x89PNG\r\n\x1a\n", CorruptImageError),
    "truncated jpeg": (lambda: _real_jpeg()[: len(_real_jpeg()) // 2], CorruptImageError),
    "text": (lambda: b"Report: no pneumothorax.\nPatient Doe^Jane\n", UnsupportedFormatError),
    "random bytes": (
        lambda: np.random.default_rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        UnsupportedFormatError,
    ),
    "pdf": (
        lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        UnsupportedFormatError,
    ),
    "zip": (_zip, UnsupportedFormatError),
    "dicom without pixel data": (lambda: make_dicom(None, **PLANTED), MissingPixelDataError),
    "png bomb 30000x30000": (lambda: png_header_only(30000, 30000), ImageTooLargeError),
    "png 7000x7000 over MAX_PIXELS": (lambda: png_header_only(7000, 7000), ImageTooLargeError),
    "png 1250000x32 within MAX_PIXELS": (
        lambda: png_header_only(1_250_000, 32),
        ImageTooLargeError,
    ),
    "dicom bomb 30000x30000": (_bomb_dicom, ImageTooLargeError),
    "truncated dicom": (_truncated_dicom, CorruptImageError),
    "truncated compressed dicom": (_truncated_compressed_dicom, CorruptImageError),
    "unknown transfer syntax": (
        lambda: encapsulated_dicom(uid.UID("1.2.3.4.5.6")),
        UnsupportedTransferSyntaxError,
    ),
    "damaged jpeg in dicom": (
        lambda: encapsulated_dicom(uid.JPEGBaseline8Bit),
        CorruptImageError,
    ),
}


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_typed_error_quickly(case):
    build, error = BAD_INPUTS[case]
    data = build()
    start = time.perf_counter()
    with pytest.raises(error) as info:
        load_image(data)
    assert time.perf_counter() - start < 2.0
    assert type(info.value) is error
    assert_clear_message(info.value, *PLANTED_STRINGS)


def test_bad_input_messages_say_what_to_upload():
    for case in ("text", "pdf", "zip", "random bytes", "empty"):
        build, error = BAD_INPUTS[case]
        with pytest.raises(error) as info:
            load_image(build())
        assert "PNG, JPEG or DICOM" in str(info.value)
    with pytest.raises(UnsupportedFormatError, match="PDF"):
        load_image(BAD_INPUTS["pdf"][0]())
    with pytest.raises(UnsupportedFormatError, match="contains text"):
        load_image(BAD_INPUTS["text"][0]())


def test_too_large_message_names_the_size_and_limit():
    with pytest.raises(ImageTooLargeError) as info:
        load_image(png_header_only(7000, 7000))
    assert "7000 x 7000" in str(info.value)
    assert f"{MAX_PIXELS / 1e6:g} million" in str(info.value)
    assert 6000 * 6000 <= MAX_PIXELS < 7000 * 7000


def test_text_file_renamed_dcm(tmp_path):
    path = tmp_path / "Doe_Jane_chest.dcm"
    path.write_text("DICOM export failed, please retry.\n")
    with pytest.raises(UnsupportedFormatError) as info:
        load_image(path)
    assert_clear_message(info.value, "Doe", "Jane", str(tmp_path))


def test_empty_and_missing_paths(tmp_path):
    empty = tmp_path / "Doe_empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError):
        load_image(empty)
    missing = tmp_path / "Doe_missing.png"
    with pytest.raises(ImageLoadError) as info:
        load_image(missing)
    assert type(info.value) is ImageLoadError
    assert "could not be found" in str(info.value)
    assert_clear_message(info.value, "Doe", str(tmp_path))
    with pytest.raises(ImageLoadError):
        load_image(tmp_path)  # a folder


def test_jpeg_ls_reports_compression_in_plain_words():
    if get_decoder(uid.JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(UnsupportedTransferSyntaxError) as info:
        load_image(encapsulated_dicom(uid.JPEGLSLossless))
    assert "JPEG-LS compression" in str(info.value)
    assert_clear_message(info.value)


def test_deflate_bomb_refused_before_inflating(monkeypatch):
    data = make_dicom(
        np.zeros((1000, 1000), dtype=np.uint16), tsyntax=uid.DeflatedExplicitVRLittleEndian
    )
    assert len(data) < 20_000  # 2 MB of zeros compresses to a few kB
    monkeypatch.setattr(imaging, "MAX_INFLATED_BYTES", 1_000_000)
    with pytest.raises(ImageTooLargeError) as info:
        load_image(data)
    assert_clear_message(info.value)


def test_file_size_limit(monkeypatch, tmp_path):
    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ImageTooLargeError):
        load_image(bytes(2000))
    path = tmp_path / "big.png"
    path.write_bytes(_real_png())
    with pytest.raises(ImageTooLargeError):
        load_image(path)


def test_pillow_decompression_bomb_warning_is_refused(monkeypatch):
    # Between 1x and 2x Pillow's limit Pillow only warns; that must still be refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError):
        load_image(png_header_only(12, 12))


def without_group_length(data: bytes, how: str) -> bytes:
    """``data`` (a DICOM file) with its (0002,0000) group length removed or set to zero."""
    element = data[132:144]
    assert element[:8] == b"\x02\x00\x00\x00UL\x04\x00"
    if how == "missing":
        return data[:132] + data[144:]
    return data[:140] + bytes(4) + data[144:]


@pytest.mark.parametrize("how", ["missing", "zero"])
@pytest.mark.parametrize("preamble", [True, False], ids=["preamble", "no-preamble"])
def test_deflate_guard_does_not_depend_on_the_group_length(monkeypatch, how, preamble):
    """The guard decides by the transfer syntax: without (0002,0000), or with 0 in it, a file
    that inflates beyond the limit is still refused, and one within it still decodes."""
    big = make_dicom(
        np.zeros((1000, 1000), dtype=np.uint16), tsyntax=uid.DeflatedExplicitVRLittleEndian
    )
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    small = make_dicom(values, tsyntax=uid.DeflatedExplicitVRLittleEndian)
    big, small = without_group_length(big, how), without_group_length(small, how)
    if not preamble:
        big, small = big[128:], small[128:]
    assert len(big) < 20_000 and load_image(big).pixels.shape == (1000, 1000)  # pydicom reads it
    monkeypatch.setattr(imaging, "MAX_INFLATED_BYTES", 1 << 20)
    with pytest.raises(ImageTooLargeError) as info:
        load_image(big)  # 2 MB inflated
    assert "expands to more than 1 MB" in str(info.value)
    assert_clear_message(info.value)
    img = load_image(small)  # 8 kB inflated
    assert img.meta.transfer_syntax == "Deflated Explicit VR Little Endian"
    np.testing.assert_allclose(img.pixels, values / values.max(), atol=EPS)


def test_a_side_beyond_the_preview_limit_is_refused_before_decoding():
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        load_image(png_header_only(1_250_000, 32))  # exactly MAX_PIXELS, one side far too long
    assert time.perf_counter() - start < 1.0
    assert "1250000 x 32 pixels" in str(info.value)
    assert f"{MAX_SIDE:,} pixels on a side" in str(info.value)
    assert_clear_message(info.value)
    assert MAX_PIXELS >= 1_250_000 * 32 and MAX_SIDE == 16_383  # the WebP limit


def test_a_strip_is_not_a_radiograph():
    """A side more than MAX_ASPECT times the other is refused with both sizes; a long film
    within that ratio, and a side just at MIN_SIDE, are still read."""
    with pytest.raises(ImageShapeError) as info:
        load_radiograph(png_bytes(np.zeros((40, 16_000), np.uint8)))
    assert "16000 x 40 pixels" in str(info.value)
    assert_clear_message(info.value)
    assert load_radiograph(png_bytes(np.zeros((32 * MAX_ASPECT, 32), np.uint8)))
    with pytest.raises(ImageTooSmallError):
        load_radiograph(png_bytes(np.zeros((31, 400), np.uint8)))


def test_downscale_keeps_aspect_range_and_small_images():
    tall = np.zeros((3000, 1500), dtype=np.float32)
    tall[:, 750:] = 1.0  # a sharp edge: bicubic overshoot must be clipped
    small = downscale(tall)
    assert small.shape == (MAX_KEPT_SIDE, MAX_KEPT_SIDE // 2) and small.dtype == np.float32
    assert small.flags.c_contiguous and small.min() >= 0.0 and small.max() <= 1.0
    quarter = small.shape[1] // 4  # away from the edge in the middle
    assert small[:, :quarter].max() < 1e-6 and small[:, -quarter:].min() > 1 - 1e-6
    assert downscale(np.full((5000, 40), 0.25), max_side=500).shape == (500, 4)
    assert np.allclose(downscale(np.full((2000, 2000), 0.25, np.float32)), 0.25, atol=1e-6)
    kept = np.random.default_rng(0).random((MAX_KEPT_SIDE, MAX_KEPT_SIDE // 2), dtype=np.float32)
    assert np.array_equal(downscale(kept), kept)  # already small enough: unchanged
