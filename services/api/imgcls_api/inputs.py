"""Turn a ``/predict`` request body into letterboxed uint8 images for the model.

Accepted bodies (see README "API inputs"):
- ``multipart/form-data`` with one or more ``image`` file parts;
- ``application/json`` ``{"instances": [...]}``: each a base64 image file (string or
  ``{"b64": ...}``) or a nested ``H×W×3`` list of 0–255 values;
- ``application/json`` pandas DataFrame (``orient="split"`` or ``"records"``), one flattened image
  per row; shape from ``?shape=H,W,C`` or inferred for square images (C = 3 or 1);
- ``application/x-npy``: a ``.npy`` array ``H×W×3`` or ``N×H×W×3`` (``allow_pickle=False``).
"""

from __future__ import annotations

import base64
import binascii
import io
import math

import numpy as np
from flask import Request

from imgcls.gateway.cooperative import decode_image
from imgcls.gateway.errors import ApiError
from imgcls.preprocessing import ImageError, ImageTooLarge, letterbox_array, load_image

from . import multipart

NPY_TYPES = {"application/x-npy", "application/npy"}


def decode(
    request: Request, size: tuple[int, int], max_pixels: int, max_images: int
) -> list[np.ndarray]:
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        images = _multipart(request, size, max_pixels, max_images)
    elif mimetype == "application/json":
        images = _json(request, size, max_pixels, max_images)
    elif mimetype in NPY_TYPES:
        images = _npy(request.get_data(cache=False), size, max_images)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {mimetype or '(none)'} is not supported; send multipart/form-data "
            "with an 'image' file, application/json or application/x-npy",
        )
    if not images:
        raise ApiError(400, "no_images", "the request holds no image")
    return images


def _check_count(n: int, max_images: int) -> None:
    if n > max_images:
        raise ApiError(
            413, "too_many_images", f"{n} images in one request; the limit is {max_images}"
        )


def _image_file(data: bytes, size: tuple[int, int], max_pixels: int, where: str) -> np.ndarray:
    try:
        return decode_image(lambda d: load_image(d, size, max_pixels), data)
    except ImageTooLarge as exc:
        raise ApiError(413, exc.code, f"{where}: {exc.message}") from exc
    except ImageError as exc:
        raise ApiError(400, exc.code, f"{where}: {exc.message}") from exc


def _multipart(request: Request, size, max_pixels: int, max_images: int) -> list[np.ndarray]:
    body = request.get_data(cache=False)  # bounded by MAX_CONTENT_LENGTH (413 above it)
    parts = multipart.file_parts(
        body, request.mimetype_params.get("boundary"), request.max_form_parts or 1000
    )
    files = [p for p in parts if p.name == "image"]
    if not files:
        raise ApiError(400, "missing_field", "multipart body needs a file field named 'image'")
    _check_count(len(files), max_images)
    return [
        _image_file(f.data, size, max_pixels, f"image {i} ({f.filename or 'unnamed'})")
        for i, f in enumerate(files)
    ]


def _json(request: Request, size, max_pixels: int, max_images: int) -> list[np.ndarray]:
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "invalid_json", "the body is not valid JSON")
    if isinstance(body, dict) and "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ApiError(422, "invalid_instances", "'instances' must be a list")
        _check_count(len(instances), max_images)
        return [_instance(x, size, max_pixels, f"instance {i}") for i, x in enumerate(instances)]
    rows = _dataframe_rows(body)
    _check_count(len(rows), max_images)
    shape = _frame_shape(request.args.get("shape"), rows)
    return [
        letterbox_array(_validate(_row_image(r, shape, i), f"row {i}"), size)
        for i, r in enumerate(rows)
    ]


def _instance(value, size, max_pixels: int, where: str) -> np.ndarray:
    if isinstance(value, dict) and "b64" in value:
        value = value["b64"]
    if isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, "invalid_base64", f"{where}: not valid base64") from exc
        return _image_file(data, size, max_pixels, where)
    if isinstance(value, list):
        return letterbox_array(_validate(_to_array(value, where), where), size)
    raise ApiError(422, "invalid_instance", f"{where}: expected a base64 string or an H×W×3 list")


def _to_array(value, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ApiError(
            422, "invalid_pixels", f"{where}: pixels must be a regular numeric array"
        ) from exc
    return arr


def _validate(arr: np.ndarray, where: str) -> np.ndarray:
    """Rank, channels, numeric type and 0–255 range of one H×W×3 pixel array."""
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ApiError(422, "invalid_pixels", f"{where}: pixels must be numbers, got {arr.dtype}")
    if arr.ndim != 3:
        raise ApiError(
            422, "invalid_shape", f"{where}: expected H×W×3, got shape {list(arr.shape)}"
        )
    if arr.shape[2] != 3:
        raise ApiError(422, "invalid_channels", f"{where}: expected 3 channels, got {arr.shape[2]}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ApiError(422, "invalid_shape", f"{where}: the image has no pixels")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ApiError(422, "invalid_pixels", f"{where}: NaN or infinite pixel values")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ApiError(422, "out_of_range", f"{where}: pixel values must lie in 0–255")
    return arr


def _npy(data: bytes, size, max_images: int) -> list[np.ndarray]:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ApiError(400, "invalid_npy", f"the body is not a readable .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise ApiError(400, "invalid_npy", "the body must hold one array, not an archive")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ApiError(
            422, "invalid_shape", f"expected H×W×3 or N×H×W×3, got shape {list(arr.shape)}"
        )
    _check_count(arr.shape[0], max_images)
    return [letterbox_array(_validate(a, f"array {i}"), size) for i, a in enumerate(arr)]


def _dataframe_rows(body) -> list[list]:
    """Rows of a DataFrame sent with ``to_json(orient="split")`` or ``orient="records"``."""
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return body["data"]
    if isinstance(body, list) and all(isinstance(r, dict) for r in body):
        return [list(r.values()) for r in body]
    raise ApiError(
        422,
        "invalid_body",
        "JSON body must be {'instances': [...]} or a DataFrame (orient split or records)",
    )


def _frame_shape(raw: str | None, rows: list) -> tuple[int, int, int]:
    if raw:
        try:
            dims = tuple(int(x) for x in raw.split(","))
        except ValueError as exc:
            raise ApiError(422, "invalid_shape", "shape must look like 28,28,1") from exc
        if len(dims) != 3 or dims[2] not in (1, 3) or min(dims) <= 0:
            raise ApiError(422, "invalid_shape", "shape must be H,W,C with C = 1 or 3")
        return dims  # type: ignore[return-value]
    n = len(rows[0]) if rows and isinstance(rows[0], list) else 0
    for channels in (3, 1):
        side = math.isqrt(n // channels) if n % channels == 0 else 0
        if side and side * side * channels == n:
            return side, side, channels
    raise ApiError(
        422,
        "invalid_shape",
        f"cannot infer a square image from {n} values per row; pass ?shape=H,W,C",
    )


def _row_image(row, shape: tuple[int, int, int], index: int) -> np.ndarray:
    arr = _to_array(row, f"row {index}")
    if arr.ndim != 1 or arr.size != math.prod(shape):
        raise ApiError(
            422, "invalid_shape", f"row {index}: {arr.size} values do not fit shape {list(shape)}"
        )
    arr = arr.reshape(shape)
    return np.repeat(arr, 3, axis=2) if shape[2] == 1 else arr
