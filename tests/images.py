"""Small generated test images (nothing binary is committed): one function per hostile case."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient(width: int = 80, height: int = 40) -> Image.Image:
    """An RGB image whose left and right halves differ (so orientation is checkable)."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def jpeg(width: int = 80, height: int = 40, quality: int = 95) -> bytes:
    return encode(gradient(width, height), "JPEG", quality=quality)


def exif_rotated_jpeg() -> bytes:
    """Stored 80x40 landscape, EXIF orientation 6 (rotate 90° CW to display as 40x80)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(gradient(80, 40), "JPEG", quality=95, exif=exif.tobytes())


def png_rgba() -> bytes:
    img = gradient().convert("RGBA")
    img.putalpha(128)
    return encode(img, "PNG")


def png_16bit_gray() -> bytes:
    arr = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (32, 1))
    return encode(Image.fromarray(arr), "PNG")


def gif_palette() -> bytes:
    return encode(gradient().convert("P", palette=Image.Palette.ADAPTIVE), "GIF")


def cmyk_jpeg() -> bytes:
    return encode(gradient().convert("CMYK"), "JPEG")


def grayscale_png() -> bytes:
    return encode(gradient().convert("L"), "PNG")


def multiframe_tiff() -> bytes:
    frames = [gradient(), Image.new("RGB", (80, 40), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    data = jpeg(200, 200)
    return data[: len(data) // 2]


def decompression_bomb(side: int = 20000) -> bytes:
    """A tiny PNG header-declared as side×side pixels (1-bit, compresses to almost nothing)."""
    return encode(Image.new("1", (side, side)), "PNG")


TEXT_AS_JPG = b"this is not an image, just a text file named photo.jpg\n"


def readable_formats() -> dict[str, bytes]:
    """Every kind of file a user may send that must be classified (id → bytes)."""
    return {
        "rgba-png": png_rgba(),
        "16bit-png": png_16bit_gray(),
        "palette-gif": gif_palette(),
        "cmyk-jpeg": cmyk_jpeg(),
        "gray-png": grayscale_png(),
        "tiff": multiframe_tiff(),
        "exif-jpeg": exif_rotated_jpeg(),
        "bmp": encode(gradient(), "BMP"),
        "webp": encode(gradient(), "WEBP"),
    }


def photo_like_jpeg(width: int = 1600, height: int = 1200, seed: int = 0) -> bytes:
    """A camera-sized 4:3 JPEG with what phone photos carry: sensor-like noise, smooth light,
    chroma subsampling, and an EXIF orientation tag (portrait shot stored landscape)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 120 + 80 * np.sin(x / width * 3.1) * np.cos(y / height * 2.3)
    rgb = np.stack([light * 1.1, light, light * 0.8], axis=-1)
    rgb[height // 3 : height // 2, width // 4 : width // 2] = (200, 40, 40)  # an object
    rgb += rng.normal(0, 12, rgb.shape)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "imgcls test camera"
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return encode(img, "JPEG", quality=85, subsampling=2, exif=exif.tobytes())
