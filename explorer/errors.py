"""Typed errors, each carrying one sentence a clinician can read.

Every error the app may show to a person derives from :class:`ExplorerError`; its ``str()`` is
the user-facing sentence (no traceback, no file name, no patient data).
"""

from __future__ import annotations


class ExplorerError(Exception):
    """Base class: ``str(err)`` is a complete, user-facing sentence."""


# --- images -------------------------------------------------------------------------------


class ImageLoadError(ExplorerError):
    """The upload could not be turned into a chest X-ray image."""


class EmptyFileError(ImageLoadError):
    """The file has no content."""


class UnsupportedFormatError(ImageLoadError):
    """The bytes are not PNG, JPEG or DICOM (or another image format Pillow reads)."""


class CorruptImageError(ImageLoadError):
    """The file claims an image format but its content is damaged or truncated."""


class ImageTooLargeError(ImageLoadError):
    """The image's pixel count is beyond what the app accepts (decompression-bomb guard)."""


class ImageTooSmallError(ImageLoadError):
    """The image has too few pixels to be a radiograph a model can read (e.g. 1 x 1)."""


class ImageShapeError(ImageLoadError):
    """The image is far longer on one side than a radiograph (e.g. a 16,000 x 40 strip)."""


class MissingPixelDataError(ImageLoadError):
    """A DICOM file that holds no image (e.g. a structured report or a header-only file)."""


class UnsupportedTransferSyntaxError(ImageLoadError):
    """A DICOM whose pixel compression no installed (non-GPL) decoder can read."""


# --- models -------------------------------------------------------------------------------


class ModelError(ExplorerError):
    """Base class for model problems."""


class UnknownModelError(ModelError):
    """The name is not in the model registry."""


class ModelUnavailableError(ModelError):
    """A registered model cannot be loaded here (offline, missing file, missing package)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        reason = reason.rstrip()
        end = "" if reason.endswith((".", "!", "?")) else "."
        super().__init__(f"The model '{name}' cannot be loaded here: {reason}{end}")
