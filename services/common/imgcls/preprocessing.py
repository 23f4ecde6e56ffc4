"""The single image preprocessing path of the project.

The TFRecord stage of the pipeline and the serving API both call :func:`load_image` (files) or
:func:`letterbox_array` (pixel arrays), so a model is served on exactly the pixels it was trained
on. Output: ``uint8`` array ``(height, width, 3)``, RGB, letterboxed (aspect ratio kept, padded
with black) — the model itself does the rescaling to its own range.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .contract import MAX_IMAGE_PIXELS as DEFAULT_MAX_PIXELS

PAD_VALUE = 0
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageError(ValueError):
    """An input that cannot become a model input; ``code`` is stable for API clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ImageTooLarge(ImageError):
    """Raised before decoding, so a decompression bomb never allocates its pixels."""


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """Accept ``224`` or ``(height, width)``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open (lazily) and validate the header; refuse empty, unknown and oversized images."""
    if not data:
        raise ImageError("empty_file", "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("image_too_large", str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("not_an_image", "the file is not an image Pillow can read") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            "image_too_large",
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    if width == 0 or height == 0:
        raise ImageError("not_an_image", "the image has no pixels")
    return img


def _high_depth_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit/32-bit grayscale → 8-bit: 16-bit ranges are scaled, not clipped."""
    arr = np.asarray(img).astype(np.float32)
    if img.mode != "F" and arr.size and arr.max() > 255:
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF-orient and convert any Pillow mode to RGB (alpha is composited onto the pad colour)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (PAD_VALUE,) * 3)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def fitted_size(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the picture once resized, aspect kept, to fit ``size`` (h, w)."""
    height, width = size
    scale = min(width / img.width, height / img.height)
    return (max(1, min(width, round(img.width * scale))),
            max(1, min(height, round(img.height * scale))))  # fmt: skip


def letterbox_image(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize keeping aspect ratio so the image fits ``size``, then centre it on a pad canvas."""
    height, width = size
    new_w, new_h = fitted_size(img, size)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (width, height), (PAD_VALUE,) * 3)
    canvas.paste(img, ((width - new_w) // 2, (height - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def decode_image(
    source: bytes | str | Path,
    size: int | tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode, EXIF-orient and convert one image file to an RGB picture, decoded for a model
    input of ``size`` (what :func:`load_image` letterboxes; the shift suite changes it first).

    Raises :class:`ImageError` with a stable ``code`` for anything that is not a readable image.
    """
    data = Path(source).read_bytes() if isinstance(source, str | Path) else source
    img = open_image(data, max_pixels)
    try:
        if img.format == "JPEG":
            # Decode at a reduced DCT scale when the image is much larger than the target: same
            # pixels in pipeline and API (both call this), several times faster on photos.
            side = max(_as_size(size))
            img.draft("RGB", (side, side))
        img.load()
        return to_rgb(img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt_image", f"the image data is corrupt or truncated: {exc}") from exc


def load_image(
    source: bytes | str | Path,
    size: int | tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode, EXIF-orient, convert to RGB and letterbox one image file.

    Raises :class:`ImageError` with a stable ``code`` for anything that is not a readable image.
    """
    return letterbox_image(decode_image(source, size, max_pixels), _as_size(size))


def letterbox_array(pixels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Letterbox an ``H×W×3`` pixel array (values 0–255) like an image file.

    The array must already be validated (rank, channels, range); see ``imgcls_api.inputs``.
    """
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        arr = np.rint(arr).astype(np.uint8)
    target = _as_size(size)
    if arr.shape[:2] == target:
        return np.ascontiguousarray(arr)
    return letterbox_image(Image.fromarray(arr), target)


def pixels_sha256(pixels: np.ndarray) -> str:
    """The digest of an image as the model saw it (shape and pixels): how feedback and harvest
    know an image is the one that was answered, whatever file it travelled in."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()
