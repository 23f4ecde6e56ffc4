"""``POST /feedback``: a user says what an answered image really shows.

The request names the answer by its request id (``X-Request-ID``, also in the answer's JSON) and
the image's index in it, and gives the right label, which must be one of the labels of the
version that answered, unless the user says it is a class the model does not know (``new_class``
true: any plain class name, as ``harvest`` checks it; ``harvest import --new-class`` then adds
the class folder). The correction is stored with the image the model saw: the captured one
when the request was sampled (``CAPTURE_RATE``), else the image sent again with the feedback,
accepted only when its pixels are those the model answered (their SHA-256 is in the request's
record). ``model_preparation.tools.harvest`` turns reviewed feedback into training images.

Bodies: JSON ``{"request_id", "label", "index"?, "image"?: base64 file}`` or multipart/form-data
with the same fields and an ``image`` file, bounded like ``/predict``'s (``MAX_UPLOAD_MB``). Floods get a 429 (``FEEDBACK_PER_MINUTE`` per client
address and worker; addresses are counted in memory, never stored).
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections import deque

from flask import Blueprint, current_app, jsonify, request

from imgcls.gateway.errors import ApiError
from imgcls.labels import is_plain_class_name
from imgcls.preprocessing import ImageError, ImageTooLarge, load_image

from .capture import CaptureStore, StoreFull, pixels_sha256, png_bytes
from .settings import Settings

bp = Blueprint("feedback", __name__)

MAX_ID_CHARS = 128  # the API's own request ids are 32; X-Request-ID is capped at 128
WINDOW_S = 60.0


class RateLimiter:
    """At most ``limit`` events per client in any ``WINDOW_S`` seconds (one worker's view)."""

    def __init__(self, limit: int, window_s: float = WINDOW_S, max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> float:
        """0 when allowed (and counted); else the seconds until it would be."""
        now = time.monotonic()
        with self._lock:
            if len(self._events) >= self.max_clients:  # forget the quiet ones first
                self._events = {
                    c: q for c, q in self._events.items() if q[-1] > now - self.window_s
                }
            events = self._events.setdefault(client, deque())
            while events and events[0] <= now - self.window_s:
                events.popleft()
            if len(events) >= self.limit:
                return events[0] + self.window_s - now
            events.append(now)
            return 0.0


def init_app(app, settings: Settings) -> None:
    app.extensions["feedback_limiter"] = RateLimiter(settings.feedback_per_minute)
    app.register_blueprint(bp)


@bp.post("/feedback")
def feedback():
    settings: Settings = current_app.config["SETTINGS"]
    store: CaptureStore | None = current_app.extensions.get("capture")
    if store is None:
        raise ApiError(404, "feedback_off", "feedback needs the capture store: set CAPTURE_DIR")
    _limit(settings)
    fields, image = _fields()
    request_id, label, index = _validated(fields)
    new_class = _flag(fields.get("new_class", False))
    record = store.find(request_id)
    if record is None:
        raise ApiError(404, "unknown_request", f"no answered request {request_id!r} is on "
                       "record (never answered here, or pruned from the capture store)")  # fmt: skip
    results = record["results"]
    if not 0 <= index < len(results):
        raise ApiError(422, "invalid_index",
                       f"the request answered {len(results)} image(s); index {index} is not one")  # fmt: skip
    if label not in record["labels"] and not new_class:
        raise ApiError(422, "unknown_label", f"label must be one of the labels of {record['model']} "
                       f"version {record['version']}: {', '.join(record['labels'])} (or a new "
                       "class, with new_class true)")  # fmt: skip
    if new_class and not is_plain_class_name(label):
        raise ApiError(400, "invalid_label", f"label {label!r} is not a plain class name (a "
                       "folder name: no path separators, not hidden)")  # fmt: skip
    png = store.captured_image(record, index) or _resent(image, results[index], settings)
    try:
        replaced = store.add_feedback(record, index, label, png)
    except StoreFull as exc:
        raise ApiError(507, "store_full", str(exc)) from None
    return jsonify({"request_id": request_id, "index": index, "label": label,
                    "predicted": results[index].get("label"), "replaced": replaced,
                    "new_class": label not in record["labels"]}), 201  # fmt: skip


def _flag(value) -> bool:
    """``new_class``: a JSON boolean, or a form's ``true``/``false``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", ""):
        return value.lower() in ("true", "1")
    raise ApiError(400, "invalid_new_class", "new_class must be true or false")


def _limit(settings: Settings) -> None:
    wait = current_app.extensions["feedback_limiter"].allow(request.remote_addr or "")
    if wait:
        raise ApiError(429, "too_many_feedbacks",
                       f"more than {settings.feedback_per_minute} feedbacks a minute from this "
                       "client", retry_after=max(1, int(wait + 0.999)))  # fmt: skip


def _fields() -> tuple[dict, bytes | None]:
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        image = body.get("image")
        if image is not None:
            if not isinstance(image, str):
                raise ApiError(400, "invalid_image", "image must be a base64 string")
            try:
                image = base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "invalid_base64", "image is not valid base64") from None
        return body, image
    if request.mimetype == "multipart/form-data":
        file = request.files.get("image")
        return request.form.to_dict(), (file.read() if file else None)
    raise ApiError(415, "unsupported_media_type",
                   "send application/json or multipart/form-data")  # fmt: skip


def _validated(fields: dict) -> tuple[str, str, int]:
    request_id, label, index = fields.get("request_id"), fields.get("label"), fields.get("index", 0)
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_CHARS:
        raise ApiError(400, "invalid_request_id",
                       f"request_id must be a string of 1–{MAX_ID_CHARS} characters")  # fmt: skip
    if not isinstance(label, str) or not label:
        raise ApiError(400, "invalid_label", "label must be a non-empty string")
    if isinstance(index, str) and index.isdigit():
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ApiError(400, "invalid_index", "index must be a non-negative integer")
    return request_id, label, index


def _resent(image: bytes | None, result: dict, settings: Settings) -> bytes:
    """The image sent with the feedback, as the model saw it, if it is the one answered."""
    if image is None:
        raise ApiError(422, "image_required", "this request's image was not captured "
                       "(CAPTURE_RATE): send the image again with the feedback")  # fmt: skip
    size = tuple(result.get("size") or ())
    try:
        pixels = load_image(image, size, settings.max_image_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, exc.code, exc.message) from None
    except ImageError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    if pixels_sha256(pixels) != result.get("sha256"):
        raise ApiError(422, "image_mismatch", "this is not the image that request answered")
    return png_bytes(pixels)
