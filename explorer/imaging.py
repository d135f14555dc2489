"""Load an uploaded chest X-ray (PNG, JPEG, DICOM, ...) into one normalised grayscale array.

Everything happens in memory: nothing is written to disk. The format is detected from the
file's leading bytes (its "magic number"), never from the file name. Every failure is raised
as an :class:`~explorer.errors.ImageLoadError` subclass whose ``str()`` is one sentence a
clinician can act on.

Normalisation to ``float32`` in ``[0, 1]`` (0 = black, 1 = white, bone is white):

* 8-bit images (PNG, JPEG, ...): stored value / 255, no contrast stretch.
* Colour, palette and alpha images: converted to 8-bit luminance by Pillow (ITU-R 601-2
  weights), alpha ignored, then / 255.
* High-bit-depth images (16-bit PNG, 32-bit TIFF, ...): min-max of the image's own values.
  16-bit containers very often hold 10-, 12- or 14-bit data, so dividing by 65535 would give
  an almost black picture; the stretch keeps the order of every pair of pixels.
* DICOM, monochrome: the Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence)
  first, then the first VOI LUT Sequence item or the first Window Centre/Width pair, mapped
  over the full output range of that VOI transform (so a window's clipping is kept; for a VOI
  LUT table, 0 to the smallest 2**n - 1 holding its largest entry); with no VOI information,
  min-max of the modality values. MONOCHROME1 is inverted afterwards so bone is white.
* DICOM, colour (RGB, YBR, PALETTE COLOR): converted to luminance; / 255 for 8-bit data,
  min-max otherwise.

The metadata kept is a small allow-list (:class:`ImageMeta`); names, IDs, dates, institutions
and every other DICOM attribute are never copied out of the parsed file.
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
)

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

__all__ = [
    "MAX_ASPECT",
    "MAX_FILE_BYTES",
    "MAX_INFLATED_BYTES",
    "MAX_KEPT_SIDE",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "ImageMeta",
    "LoadedImage",
    "describe",
    "downscale",
    "load_image",
    "load_radiograph",
    "require_min_size",
    "to_uint8",
]

logger = logging.getLogger(__name__)

#: What a MONOCHROME1 file's note says: what the file declares, what was done, what to check.
MONOCHROME1_NOTE = (
    "The file declares MONOCHROME1 (low values bright), so its values were inverted, as the "
    "standard says; if the picture looks like a negative, the declaration is wrong."
)

#: Largest image (width x height of the decoded frame) accepted. It is checked from the header,
#: before any pixel is decoded; 40 million is well above a 6000 x 6000 detector image.
MAX_PIXELS = 40_000_000

#: Longest side accepted, in pixels, checked from the header with :data:`MAX_PIXELS`. It is the
#: WebP limit the preview is encoded with; no detector is anywhere near it, while a
#: 1,250,000 x 32 file is within the pixel count and would only fail later, at the preview.
MAX_SIDE = 16_383

#: Longest side kept of an image held for later (a batch), in pixels: the models read at most
#: 448 pixels a side (MedSigLIP; the embedded models 224), so a full-resolution copy would only
#: hold memory (a batch of 1,000 films keeps 1 GB at 512 px, 4 GB at 1024).
MAX_KEPT_SIDE = 512

#: Largest ratio of the long side to the short one in an image to be scored: a chest film is
#: at most about 1.5 and a stitched spine or leg film about 3; a banner or a plot is not a film.
MAX_ASPECT = 20

#: Largest upload read into memory, in bytes.
MAX_FILE_BYTES = 512 * 1024 * 1024

#: Largest size a Deflated-transfer-syntax DICOM may inflate to (zip-bomb guard), in bytes.
MAX_INFLATED_BYTES = 512 * 1024 * 1024

_ACCEPTED = "a PNG, JPEG or DICOM file"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_PREFIX = b"DICM"
_DICOM_PREAMBLE = 128
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian

# Pillow formats accepted besides PNG and JPEG, each with its magic bytes. Pillow is told which
# plugin to use, so formats without a signature (TGA, ...) can never be guessed from noise.
_OTHER_PILLOW_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
)

# Well-known non-image files, for a more helpful message.
_NON_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "This file is a PDF document, not an image; please export the chest X-ray as "
     "a PNG, JPEG or DICOM file and upload that instead."),
    (b"PK\x03\x04", "This file is a compressed archive or office document, not an image; "
     "please upload the chest X-ray itself as a PNG, JPEG or DICOM file."),
    (b"PK\x05\x06", "This file is an empty compressed archive, not an image; please upload "
     "the chest X-ray itself as a PNG, JPEG or DICOM file."),
    (b"\x1f\x8b", "This file is a compressed archive, not an image; please upload the chest "
     "X-ray itself as a PNG, JPEG or DICOM file."),
    (b"Rar!", "This file is a compressed archive, not an image; please upload the chest "
     "X-ray itself as a PNG, JPEG or DICOM file."),
    (b"7z\xbc\xaf", "This file is a compressed archive, not an image; please upload the "
     "chest X-ray itself as a PNG, JPEG or DICOM file."),
)  # fmt: skip

# Two-letter explicit VRs, used to recognise a DICOM data set stored without its preamble.
_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split()
)

# Allow-lists for the few DICOM code strings copied into ImageMeta. A value outside them
# (free text typed into the wrong attribute, say) becomes None rather than being copied.
_MODALITY_CODES = (
    "AR AS ASMT AU BDUS BI BMD CD CF CP CR CS CT DD DF DG DM DOC DS DX EC ECG EPS ES FA FID "
    "FS GM HC HD IO IOL IVOCT IVUS KER KO LEN LP LS MA MG MR MS NM OAM OCT OP OPM OPT OPTBSV "
    "OPTENF OPV OSS OT PLAN PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTPLAN RTRECORD RTSTRUCT "
    "RWV SEG SM SMR SR SRF ST STAIN TG US VA VF XA XC"
)
_MODALITIES = frozenset(_MODALITY_CODES.split())
# View Position: each word must be a known projection term (standard ones and common
# variants seen in the wild such as "AP AXIAL" or "XTABLE LATERAL").
_VIEW_TERMS = (
    "AP PA LL RL RLD LLD RLO LLO LAO RAO LPO RPO LAT LATERAL LEFT RIGHT AXIAL XTABLE "
    "SWIMMERS DECUBITUS OBLIQUE LORDOTIC ERECT SUPINE"
)
_VIEW_WORDS = frozenset(_VIEW_TERMS.split())
_PHOTOMETRICS = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_420",
        "YBR_PARTIAL_422",
        "YBR_ICT",
        "YBR_RCT",
        "XYB",
        "HSV",
        "ARGB",
        "CMYK",
    }
)
_VOI_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})

_PILLOW_PHOTOMETRIC = {
    "1": "MONOCHROME2",
    "L": "MONOCHROME2",
    "LA": "MONOCHROME2",
    "La": "MONOCHROME2",
    "I": "MONOCHROME2",
    "I;16": "MONOCHROME2",
    "I;16L": "MONOCHROME2",
    "I;16B": "MONOCHROME2",
    "I;16N": "MONOCHROME2",
    "F": "MONOCHROME2",
    "P": "PALETTE COLOR",
    "PA": "PALETTE COLOR",
}

_PILLOW_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}

_HIGH_BIT_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})

_COLOUR_NOTES = {
    "RGB": "RGB converted to grayscale.",
    "RGBA": "RGBA converted to grayscale; transparency ignored.",
    "RGBX": "RGB converted to grayscale.",
    "RGBa": "RGBA converted to grayscale; transparency ignored.",
    "LA": "Grayscale with transparency: transparency ignored.",
    "La": "Grayscale with transparency: transparency ignored.",
    "P": "Palette colour image converted to grayscale.",
    "PA": "Palette colour image converted to grayscale; transparency ignored.",
    "CMYK": "CMYK converted to grayscale.",
    "YCbCr": "YCbCr converted to grayscale.",
}


# --- public types -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageMeta:
    """Allow-listed, non-identifying facts about a loaded image.

    Attributes:
        format: Container format: ``"PNG"``, ``"JPEG"``, ``"DICOM"`` or another Pillow name.
        width: Width in pixels of the returned array (after any EXIF rotation).
        height: Height in pixels of the returned array.
        bit_depth: Stored bits per sample (DICOM Bits Stored; PNG bit depth; 8 for JPEG).
        photometric: ``"MONOCHROME1"``, ``"MONOCHROME2"``, ``"RGB"``, ``"PALETTE COLOR"``, ...
            For non-DICOM grayscale files this is ``"MONOCHROME2"`` (0 is black).
        modality: DICOM Modality (e.g. ``"CR"``, ``"DX"``), else ``None``.
        view_position: DICOM View Position (e.g. ``"PA"``, ``"AP"``), else ``None``.
        number_of_frames: Frames (or pages) in the file; only the first is returned.
        transfer_syntax: DICOM transfer syntax name (e.g. ``"JPEG Baseline (Process 1)"``),
            else ``None``.
        windowing: How stored values were mapped to ``[0, 1]``, in words.
        notes: Short sentences about conversions applied (rotation, inversion, frames, ...).
    """

    format: str
    width: int
    height: int
    bit_depth: int | None = None
    photometric: str | None = None
    modality: str | None = None
    view_position: str | None = None
    number_of_frames: int = 1
    transfer_syntax: str | None = None
    windowing: str = ""
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as a JSON-safe dict (``notes`` becomes a list)."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image ready for display and for model preprocessing.

    Attributes:
        pixels: ``float32`` array of shape ``(height, width)`` with values in ``[0, 1]``,
            where 1 is white (bone).
        meta: The allow-listed metadata.
    """

    pixels: np.ndarray
    meta: ImageMeta

    def __repr__(self) -> str:
        h, w = self.pixels.shape[:2]
        return f"LoadedImage(pixels=<{self.pixels.dtype} {h}x{w}>, meta={self.meta!r})"


# --- public functions ---------------------------------------------------------------------


def load_image(source: bytes | str | os.PathLike[str]) -> LoadedImage:
    """Decode an uploaded image into a normalised grayscale array.

    Args:
        source: The file's content as bytes, or a path to it. The format is detected from the
            content, never from the file name.

    Returns:
        The image as ``float32`` ``(H, W)`` in ``[0, 1]`` plus allow-listed metadata.

    Raises:
        EmptyFileError: The file has no content.
        UnsupportedFormatError: The content is not an image format the app reads.
        CorruptImageError: The content claims an image format but is damaged or truncated.
        ImageTooLargeError: The image or file is beyond :data:`MAX_PIXELS`, :data:`MAX_SIDE`
            or :data:`MAX_FILE_BYTES`, or a Deflated DICOM beyond :data:`MAX_INFLATED_BYTES`
            (all checked before decoding).
        MissingPixelDataError: A DICOM file without an image in it.
        UnsupportedTransferSyntaxError: A DICOM compression no installed decoder can read.
        ImageLoadError: The path does not exist or cannot be read.
    """
    data = _read_source(source)
    if not data:
        raise EmptyFileError(
            f"The uploaded file is empty; please upload the chest X-ray again as {_ACCEPTED}."
        )

    if data.startswith(_PNG_MAGIC):
        return _load_with_pillow(data, "PNG")
    if data.startswith(_JPEG_MAGIC):
        return _load_with_pillow(data, "JPEG")
    if data[_DICOM_PREAMBLE : _DICOM_PREAMBLE + 4] == _DICOM_PREFIX:
        return _load_dicom(data, strict=True)
    if data.startswith(_DICOM_PREFIX):
        # Preamble stripped but the "DICM" prefix kept: restore an empty preamble.
        return _load_dicom(bytes(_DICOM_PREAMBLE) + data, strict=True)
    for magic, pillow_format in _OTHER_PILLOW_MAGIC:
        if data.startswith(magic):
            return _load_with_pillow(data, pillow_format)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _load_with_pillow(data, "WEBP")
    if _looks_like_bare_dicom(data):
        return _load_dicom(data, strict=False)
    raise UnsupportedFormatError(_not_an_image_message(data))


def describe(img: LoadedImage) -> dict[str, Any]:
    """Summarise a loaded image as a JSON-safe dict (for ``python -m explorer inspect``).

    Args:
        img: A result of :func:`load_image`.

    Returns:
        The fields of :class:`ImageMeta` plus ``"pixel_stats"``: ``min``, ``max``, ``mean``,
        ``std``, ``p1``, ``p50`` and ``p99`` of the normalised pixels (plain floats).
    """
    px = np.asarray(img.pixels, dtype=np.float64)
    p1, p50, p99 = np.percentile(px, [1.0, 50.0, 99.0])
    stats = {
        "min": px.min(),
        "max": px.max(),
        "mean": px.mean(),
        "std": px.std(),
        "p1": p1,
        "p50": p50,
        "p99": p99,
    }
    out = img.meta.to_dict()
    out["pixel_stats"] = {k: round(float(v), 6) for k, v in stats.items()}
    return out


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Convert normalised pixels to an ``(H, W)`` ``uint8`` array for display.

    Args:
        pixels: ``(H, W)`` floats in ``[0, 1]`` (values outside are clipped, NaN becomes 0),
            or an ``(H, W)`` ``uint8`` array (returned as a copy).

    Returns:
        ``uint8`` array of the same shape, ``round(value * 255)``.

    Raises:
        ValueError: The array is not two-dimensional or has an integer type other than
            ``uint8`` (whose scale would be ambiguous).
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"to_uint8 expects an (H, W) array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.copy()
    if arr.dtype.kind in "iu":
        raise ValueError(f"to_uint8 expects floats in [0, 1] or uint8, got {arr.dtype}")
    scaled = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


# --- input --------------------------------------------------------------------------------


def _read_source(source: bytes | str | os.PathLike[str]) -> bytes:
    """Return the bytes of ``source`` (bytes-like or path), enforcing :data:`MAX_FILE_BYTES`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > MAX_FILE_BYTES:
            raise _file_too_large()
        return data
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_image expects bytes or a path, got {type(source).__name__}")
    path = Path(os.fsdecode(source))
    try:
        if not path.is_file():
            raise ImageLoadError(
                "The image file could not be found; please choose the chest X-ray file again."
            )
        if path.stat().st_size > MAX_FILE_BYTES:
            raise _file_too_large()
        return path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(
            "The image file could not be opened; please choose the chest X-ray file again."
        ) from exc


def _file_too_large() -> ImageTooLargeError:
    limit_mb = MAX_FILE_BYTES // (1024 * 1024)
    return ImageTooLargeError(
        f"The file is larger than the {limit_mb} MB this app accepts; please upload a single "
        "chest X-ray exported as a PNG, JPEG or DICOM file."
    )


MIN_SIDE = 32


def require_min_size(img: LoadedImage, min_side: int = MIN_SIDE) -> LoadedImage:
    """Return ``img`` if both sides have at least ``min_side`` pixels and it is not a strip.

    :func:`load_image` decodes any valid image; the app and the CLI call this before scoring,
    since a model cannot read a radiograph from a thumbnail or a single pixel, nor from a strip
    (a banner or a plot) that the model would squash or crop past recognition.

    Raises:
        ImageTooSmallError: A side is shorter than ``min_side``.
        ImageShapeError: One side is more than :data:`MAX_ASPECT` times the other.
    """
    h, w = img.pixels.shape
    if min(h, w) < min_side:
        raise ImageTooSmallError(
            f"The image is only {w} x {h} pixels; a chest X-ray needs at least {min_side} "
            "pixels on each side (please upload the full-size export)."
        )
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise ImageShapeError(
            f"The image is {w} x {h} pixels, far longer on one side than a radiograph ever is "
            f"(at most {MAX_ASPECT} times the other side); please upload the chest X-ray itself "
            f"as {_ACCEPTED}."
        )
    return img


def load_radiograph(source: bytes | str | os.PathLike[str]) -> LoadedImage:
    """:func:`load_image`, then :func:`require_min_size`: what the app and the CLI score."""
    return require_min_size(load_image(source))


def _check_size(width: int, height: int) -> None:
    """Refuse, from the header, an image beyond :data:`MAX_PIXELS` or :data:`MAX_SIDE`.

    Raises:
        ImageTooLargeError: Too many pixels, or a side longer than :data:`MAX_SIDE`.
    """
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"The image is too large to open safely ({width} x {height} pixels, the limit is "
            f"{MAX_PIXELS / 1e6:g} million pixels); please upload a smaller export of the X-ray."
        )
    if max(width, height) > MAX_SIDE:
        raise ImageTooLargeError(
            f"The image is too large to open safely ({width} x {height} pixels, the limit is "
            f"{MAX_SIDE:,} pixels on a side); please upload a smaller export of the X-ray."
        )


def downscale(pixels: np.ndarray, max_side: int = MAX_KEPT_SIDE) -> np.ndarray:
    """``pixels`` shrunk (antialiased, aspect kept) so the longest side is at most ``max_side``.

    What is held for later (a batch's images) is kept at this size: the models read a few
    hundred pixels a side, and a full-resolution ``float32`` copy of a 40-megapixel upload
    would hold 160 MB. An image already small enough comes back as it is.

    Args:
        pixels: ``(H, W)`` floats in ``[0, 1]``.
        max_side: The longest side of the result, in pixels.

    Returns:
        Contiguous ``float32`` ``(h, w)`` in ``[0, 1]``.
    """
    arr = _finish(pixels)
    height, width = arr.shape
    if max(height, width) <= max_side:
        return arr
    import torch
    import torch.nn.functional as F

    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    # torch reads the array in place (Pillow would first copy it into a 160 MB "F" image) and
    # resizes as the models' preprocessing does: bicubic, antialiased.
    with torch.no_grad():
        small = F.interpolate(
            torch.from_numpy(arr)[None, None],
            size=size,
            mode="bicubic",
            antialias=True,
            align_corners=False,
        )
    # Bicubic overshoots a little at sharp edges; the result must stay in [0, 1]. The copy is
    # a plain array that owns its pixels, not a view held alive by a torch tensor.
    return small[0, 0].clamp_(0.0, 1.0).numpy().copy()


def _not_an_image_message(data: bytes) -> str:
    for magic, message in _NON_IMAGE_MAGIC:
        if data.startswith(magic):
            return message
    head = data[:2048]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if text and all(ch.isprintable() or ch in "\r\n\t\f" for ch in text):
        return (
            "This file contains text, not an image; please upload the chest X-ray itself "
            f"as {_ACCEPTED}."
        )
    return (
        "This file is not in an image format the app can read; please upload the chest "
        f"X-ray as {_ACCEPTED}."
    )


def _looks_like_bare_dicom(data: bytes) -> bool:
    """Whether ``data`` plausibly starts with a DICOM data set stored without preamble/prefix.

    The first element must be in group 0002 (file meta) or 0008 (identifying), followed by
    either a valid explicit VR or an implicit-VR length that fits in the file. Text files
    never start this way (their first bytes are printable characters).
    """
    if len(data) < 8:
        return False
    group = int.from_bytes(data[0:2], "little")
    if group not in (0x0002, 0x0008):
        return False
    if data[4:6] in _EXPLICIT_VRS:
        return True
    return int.from_bytes(data[4:8], "little") <= len(data) - 8


# --- Pillow formats -----------------------------------------------------------------------


def _load_with_pillow(data: bytes, fmt: str) -> LoadedImage:
    """Decode a PNG, JPEG or other Pillow format (``fmt`` comes from the magic bytes)."""
    formats = ["JPEG", "MPO"] if fmt == "JPEG" else [fmt]
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) between 1x and 2x its own pixel limit. (The
            # filter change is process-wide for this short block; MAX_PIXELS is far below
            # Pillow's limit anyway, so this only matters if someone lowers Pillow's limit.)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            "The image is too large to open safely; please upload a smaller export of the X-ray."
        ) from exc
    except UnidentifiedImageError as exc:
        if fmt in ("PNG", "JPEG"):
            raise _corrupt(fmt) from exc
        raise UnsupportedFormatError(_not_an_image_message(data)) from exc
    except Exception as exc:
        raise _corrupt(fmt) from exc

    _check_size(im.width, im.height)
    try:
        return _decode_pillow(im, data, fmt)
    except ImageLoadError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(
            "The image is too large to open on this machine; please upload a smaller export "
            "of the X-ray."
        ) from exc
    except Exception as exc:
        logger.debug("Pillow failed to decode a %s image: %s", fmt, type(exc).__name__)
        raise _corrupt(fmt) from exc


def _decode_pillow(im: Image.Image, data: bytes, fmt: str) -> LoadedImage:
    notes: list[str] = []
    source_mode = im.mode
    n_frames = int(getattr(im, "n_frames", 1) or 1)
    if n_frames > 1 and fmt != "JPEG":  # multi-picture JPEGs (MPO) hold previews, not pages
        notes.append(f"Multi-frame image: showing frame 1 of {n_frames}.")
    else:
        n_frames = 1

    im.load()
    orientation = im.getexif().get(0x0112, 1)
    if orientation not in (None, 1):
        im = ImageOps.exif_transpose(im)
        notes.append("EXIF orientation applied (image rotated or flipped upright).")

    if im.mode in _HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        pixels = _min_max(arr)
        windowing = "min-max of the image's own values (high bit depth)"
    else:
        if im.mode not in ("L", "1"):
            notes.append(_COLOUR_NOTES.get(source_mode, f"{source_mode} converted to grayscale."))
        if im.mode != "L":
            try:
                im = im.convert("L")
            except ValueError:
                im = im.convert("RGB").convert("L")
        # Divided in place: a 40-megapixel image would otherwise hold two 160 MB arrays.
        pixels = np.array(im, dtype=np.float32)
        np.divide(pixels, np.float32(255.0), out=pixels)
        windowing = "none (8-bit values divided by 255)"

    if fmt == "PNG" and len(data) > 24:
        bit_depth = int(data[24])  # IHDR bit depth: the byte after width and height
    else:
        bit_depth = _PILLOW_BITS.get(source_mode, 8)

    height, width = pixels.shape
    meta = ImageMeta(
        format=fmt,
        width=width,
        height=height,
        bit_depth=bit_depth,
        photometric=_PILLOW_PHOTOMETRIC.get(source_mode, source_mode),
        number_of_frames=n_frames,
        windowing=windowing,
        notes=tuple(notes),
    )
    return LoadedImage(pixels=_finish(pixels), meta=meta)


def _corrupt(fmt: str) -> CorruptImageError:
    name = "DICOM" if fmt.startswith("DICOM") else fmt
    return CorruptImageError(
        f"The {name} file is damaged or incomplete and could not be read; please export the "
        "image again and re-upload it."
    )


# --- DICOM --------------------------------------------------------------------------------


def _load_dicom(data: bytes, *, strict: bool) -> LoadedImage:
    """Decode a DICOM file.

    Args:
        data: The file content, with the 128-byte preamble and "DICM" prefix when ``strict``.
        strict: ``True`` when the DICOM prefix was found; ``False`` for a bare data set, which
            is only accepted when it parses cleanly (otherwise it is "not an image").
    """
    # pydicom's value-validation warnings quote the offending value (which may be a name or an
    # ID) into the log, so validation is off while this file is read (the deflate check reads
    # the file meta as pydicom will, so it runs under the same setting).
    with pydicom.config.disable_value_validation():
        _check_deflate_size(data, strict=strict)
        return _parse_and_decode_dicom(data, strict=strict)


def _parse_and_decode_dicom(data: bytes, *, strict: bool) -> LoadedImage:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not strict)
        if not strict:
            _require_clean_parse(ds)
    except ImageLoadError:
        raise
    except Exception as exc:
        logger.debug("pydicom could not parse the file: %s", type(exc).__name__)
        if strict:
            raise _corrupt("DICOM") from exc
        raise UnsupportedFormatError(_not_an_image_message(data)) from exc

    if "PixelData" not in ds and (len(ds) == 0 or _PIXEL_DATA_TAG_LE in data):
        # The Pixel Data tag is in the bytes but pydicom could not read the element: the file
        # ends early (pydicom drops a truncated element and only warns).
        raise _corrupt("DICOM")

    try:
        return _decode_dicom(ds)
    except ImageLoadError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(
            "The image is too large to open on this machine; please upload a smaller export "
            "of the X-ray."
        ) from exc
    except Exception as exc:
        logger.debug("DICOM pixel decoding failed: %s", type(exc).__name__)
        raise _corrupt("DICOM") from exc


def _check_deflate_size(data: bytes, *, strict: bool) -> None:
    """Refuse a Deflated-transfer-syntax DICOM that inflates beyond :data:`MAX_INFLATED_BYTES`.

    pydicom inflates the whole data set in one go while reading, so the guard must run first.
    It decides by the transfer syntax alone: the file meta group and any command-set elements
    are read by pydicom's own functions, in the order :func:`pydicom.dcmread` reads them, so
    the guard sees the transfer syntax pydicom will act on and starts inflating where pydicom
    will, whatever the group length (0002,0000) says, or when it is missing. A file whose meta
    cannot be read is left to :func:`pydicom.dcmread`, which fails on it the same way.
    """
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, not strict)
        tsyntax = _read_file_meta_info(fp).get("TransferSyntaxUID")
        _read_command_set_elements(fp)
    except Exception as exc:  # pydicom raises many types for damaged headers
        logger.debug("DICOM file meta unreadable before the deflate check: %s", type(exc).__name__)
        return
    if tsyntax != dicom_uid.DeflatedExplicitVRLittleEndian:
        return
    body = memoryview(data)[fp.tell() :]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        # The input goes in 64 KiB pieces and the output is counted in 16 MiB steps, never
        # kept, so neither the refusal nor a file within the limit holds the inflated data.
        for offset in range(0, len(body), 1 << 16):
            pending = body[offset : offset + (1 << 16)]
            while pending and not inflater.eof:
                total += len(inflater.decompress(pending, 1 << 24))
                pending = inflater.unconsumed_tail
                if total > MAX_INFLATED_BYTES:
                    limit_mb = MAX_INFLATED_BYTES // (1024 * 1024)
                    raise ImageTooLargeError(
                        f"The compressed DICOM file expands to more than {limit_mb} MB; please "
                        "upload a single chest X-ray exported without this compression."
                    )
            if inflater.eof:
                break
    except zlib.error as exc:
        raise _corrupt("DICOM") from exc


def _require_clean_parse(ds: Dataset) -> None:
    """Touch every element of a force-read data set; fail unless it looks like an image file."""
    seen_image_group = False
    for elem in ds:
        _ = elem.value
        if elem.tag.group == 0x0028 or elem.tag == 0x7FE00010:
            seen_image_group = True
    if not seen_image_group:
        raise UnsupportedFormatError(
            f"This file is not in an image format the app can read; please upload the chest "
            f"X-ray as {_ACCEPTED}."
        )


def _decode_dicom(ds: Dataset) -> LoadedImage:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedFormatError(
                "This DICOM stores its image as floating-point data, which the app cannot "
                "display; please export the chest X-ray as a standard DICOM, PNG or JPEG."
            )
        raise MissingPixelDataError(
            "This DICOM file contains no image (it may be a report, a header-only file or an "
            "incomplete copy); please upload the DICOM file that holds the chest X-ray picture."
        )

    rows = _positive_int(ds.get("Rows"))
    columns = _positive_int(ds.get("Columns"))
    if rows is None or columns is None:
        raise _corrupt("DICOM")
    frames = _positive_int(ds.get("NumberOfFrames")) or 1
    # Only the first frame is ever decoded, so the limit applies to one frame.
    _check_size(columns, rows)

    tsyntax = _transfer_syntax(ds)
    decoder = _decoder_for(tsyntax)
    photometric = _allowed(ds.get("PhotometricInterpretation"), _PHOTOMETRICS) or "MONOCHROME2"
    bits_stored = _positive_int(ds.get("BitsStored"))
    plugins = decoder.available_plugins
    if tsyntax == dicom_uid.JPEGExtended12Bit and (bits_stored or 8) > 8 and plugins == ("pillow",):
        # Pillow only decodes 8-bit JPEG.
        raise _unsupported_transfer_syntax("12-bit JPEG compression")

    logger.debug(
        "Decoding DICOM frame 1 of %d (%s) with %s",
        frames,
        tsyntax.name,
        plugins[0] if plugins else "pydicom's native reader",
    )
    arr, _ = decoder.as_array(ds, index=0)

    notes: list[str] = []
    if frames > 1:
        notes.append(f"Multi-frame DICOM: showing frame 1 of {frames}.")
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        notes.append("Palette colour DICOM converted to grayscale.")

    if arr.ndim == 3:
        if photometric != "PALETTE COLOR":
            notes.append(f"{photometric} converted to grayscale.")
        gray = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if arr.dtype == np.uint8:
            pixels = gray / 255.0
            windowing = "none (8-bit colour luminance divided by 255)"
        else:
            pixels = _min_max(gray)
            windowing = "min-max of the image's own values (colour luminance)"
    else:
        pixels, windowing, voi_notes = _apply_dicom_luts(arr, ds)
        notes.extend(voi_notes)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
            notes.append(MONOCHROME1_NOTE)

    height, width = pixels.shape
    meta = ImageMeta(
        format="DICOM",
        width=width,
        height=height,
        bit_depth=bits_stored,
        photometric=photometric,
        modality=_allowed(ds.get("Modality"), _MODALITIES),
        view_position=_view_position(ds.get("ViewPosition")),
        number_of_frames=frames,
        transfer_syntax=tsyntax.name,
        windowing=windowing,
        notes=tuple(notes),
    )
    return LoadedImage(pixels=_finish(pixels), meta=meta)


def _apply_dicom_luts(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str, list[str]]:
    """Modality LUT, then VOI LUT/window, mapped to ``[0, 1]``.

    Returns:
        The normalised array, a description of the mapping, and notes.
    """
    notes: list[str] = []
    values = apply_modality_lut(arr, ds)

    voi_items = ds.get("VOILUTSequence") or []
    has_lut = bool(voi_items) and all(
        voi_items[0].get(k) is not None for k in ("LUTDescriptor", "LUTData")
    )
    has_window = all(ds.get(k) not in (None, "") for k in ("WindowCenter", "WindowWidth"))

    try:
        if has_lut:
            lo, hi, mapped = _apply_voi_lut_sequence(values, ds)
            n = len(voi_items)
            windowing = "DICOM VOI LUT" + (f" (first of {n})" if n > 1 else "")
            return _scale(mapped, lo, hi), windowing, notes
        if has_window:
            mapped = apply_windowing(values, ds, index=0)
            # The window's output range: pydicom maps values far below/above the window to its
            # exact minimum/maximum output for every VOI LUT Function (linear or sigmoid).
            extremes = np.array([-np.finfo(np.float64).max, np.finfo(np.float64).max])
            with np.errstate(over="ignore", invalid="ignore"):
                lo, hi = apply_windowing(extremes, ds, index=0)
            windowing = _window_words(ds)
            return _scale(mapped, float(lo), float(hi)), windowing, notes
    except (ValueError, TypeError, IndexError, KeyError, NotImplementedError) as exc:
        logger.debug("Ignoring unusable DICOM VOI settings: %s", type(exc).__name__)
        notes.append("The file's window settings could not be used; the image's own range was.")
        windowing = "min-max of the modality values (the file's window was unusable)"
        return _min_max(np.asarray(values, dtype=np.float64)), windowing, notes

    windowing = "min-max of the modality values (no window in the file)"
    return _min_max(np.asarray(values, dtype=np.float64)), windowing, notes


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> tuple[float, float, np.ndarray]:
    """Apply the first VOI LUT; return its output range and the result.

    The output range is ``0`` to the smallest ``2**n - 1`` that holds the table's largest
    entry (at most the declared bits per entry): tables holding 12-bit values are often
    declared as 16-bit, and dividing those by 65535 would give an almost black picture.
    """
    if values.dtype.kind == "f":
        values = np.rint(values).astype(np.int64)  # the LUT is indexed by integers
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    n_entries = int(descriptor[0]) or 2**16
    first = int(descriptor[1])
    declared_bits = int(descriptor[2])
    table = apply_voi(np.arange(first, first + n_entries, dtype=np.int64), ds, index=0)
    bits = min(max(int(table.max()).bit_length(), 1), declared_bits)
    mapped = apply_voi(values, ds, index=0)
    return 0.0, float(2**bits - 1), mapped


def _window_words(ds: Dataset) -> str:
    centres = _as_list(ds.WindowCenter)
    widths = _as_list(ds.WindowWidth)
    function = _allowed(ds.get("VOILUTFunction"), _VOI_FUNCTIONS) or "LINEAR"
    extra = f", first of {len(centres)}" if len(centres) > 1 else ""
    return (
        f"DICOM window centre {float(centres[0]):g}, width {float(widths[0]):g} ({function}{extra})"
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue) else [value]


def _transfer_syntax(ds: Dataset) -> dicom_uid.UID:
    """The data set's transfer syntax; for a bare data set, the encoding pydicom detected."""
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if tsyntax:
        return dicom_uid.UID(str(tsyntax))
    implicit, little = ds.original_encoding
    if implicit:
        tsyntax = dicom_uid.ImplicitVRLittleEndian
    elif little is False:
        tsyntax = dicom_uid.ExplicitVRBigEndian
    else:
        tsyntax = dicom_uid.ExplicitVRLittleEndian
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _decoder_for(tsyntax: dicom_uid.UID) -> Any:
    """pydicom's decoder for ``tsyntax``, or :class:`UnsupportedTransferSyntaxError`."""
    try:
        decoder = get_decoder(tsyntax)
    except (NotImplementedError, ValueError):
        decoder = None
    if decoder is None or not decoder.is_available:
        logger.debug("No installed decoder for transfer syntax %s", tsyntax.name)
        raise _unsupported_transfer_syntax(_compression_words(tsyntax))
    return decoder


def _compression_words(tsyntax: dicom_uid.UID) -> str:
    """Name a transfer syntax's compression in plain words."""
    name = tsyntax.name if tsyntax.is_valid else ""
    checks = (
        ("High-Throughput", "High-Throughput JPEG 2000 (HTJ2K) compression"),
        ("JPEG 2000", "JPEG 2000 compression"),
        ("JPEG-LS", "JPEG-LS compression"),
        ("JPEG XL", "JPEG XL compression"),
        ("JPEG Lossless", "lossless JPEG compression"),
        ("JPEG", "JPEG compression"),
        ("RLE", "RLE compression"),
        ("MPEG", "video compression (MPEG)"),
        ("HEVC", "video compression (HEVC/H.265)"),
        ("Deflate", "deflate compression"),
    )
    for key, words in checks:
        if key in name:
            return words
    return "a compression method this app does not recognise"


def _unsupported_transfer_syntax(words: str) -> UnsupportedTransferSyntaxError:
    return UnsupportedTransferSyntaxError(
        f"This DICOM image is stored with {words}, which this app cannot decode; please "
        "export it from your PACS or viewer as an uncompressed DICOM, PNG or JPEG and upload "
        "that."
    )


# --- helpers ------------------------------------------------------------------------------


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _allowed(value: Any, allowed: frozenset[str]) -> str | None:
    """``value`` if it is a single string in ``allowed`` (surrounding spaces ignored)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text if text in allowed else None


def _view_position(value: Any) -> str | None:
    """``value`` if it is a single string made only of known projection words."""
    if not isinstance(value, str):
        return None
    words = value.split()
    return " ".join(words) if words and all(w in _VIEW_WORDS for w in words) else None


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo -> 0`` and ``hi -> 1`` linearly and clip (``lo > hi`` is allowed)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        return _min_max(np.asarray(values, dtype=np.float64))
    out = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch the finite range of ``values`` to ``[0, 1]`` (a constant image becomes 0)."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.float64)
    lo = float(values[finite].min())
    hi = float(values[finite].max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    out = (values - lo) / (hi - lo)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def _finish(pixels: np.ndarray) -> np.ndarray:
    """Return contiguous ``float32`` ``(H, W)`` pixels in ``[0, 1]``."""
    out = np.ascontiguousarray(pixels, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"decoded image has shape {out.shape}, expected (H, W)")
    return out
