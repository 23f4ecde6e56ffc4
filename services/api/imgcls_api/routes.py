"""HTTP routes: health, readiness and prediction."""

from __future__ import annotations

import contextlib

import numpy as np
from flask import Blueprint, current_app, g, jsonify, request

from imgcls.gateway import model_metrics
from imgcls.gateway.client import ModelInfo
from imgcls.gateway.errors import ApiError
from imgcls.gateway.model_metrics import Familiarity, KnownClass
from imgcls.gateway.protocol import Gateway

from . import inputs
from .capture import Answer, CaptureStore, UnknownInput
from .settings import Settings

bp = Blueprint("api", __name__)


def _gateway() -> Gateway:
    return current_app.extensions["triton"]


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


@bp.get("/healthz")
def healthz():
    """The API process is alive (says nothing about Triton)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Ready when Triton answers and the default model is loaded (with labels); 503 otherwise."""
    gateway, model = _gateway(), _settings().model_name
    try:
        info = gateway.model_info(model) if gateway.model_ready(model) else None
    except ApiError as exc:
        return _not_ready(exc.code, exc.message)
    if info is None:
        return _not_ready("model_not_ready", f"model {model!r} is not ready")
    return jsonify({"status": "ready", "model": model_json(info), "labels": list(info.labels)})


@bp.get("/models")
def models():
    """The models ``?model=`` may choose, the default first, each with its readiness, its
    serving version and, while one runs, its canary or shadow candidate."""
    gateway, listed = _gateway(), []
    for name in _settings().allowed_models:
        entry: dict = {"name": name, "ready": False}
        try:
            if gateway.model_ready(name):
                route = gateway.route(name)
                info = route.serving
                entry.update(ready=True, version=info.version, labels=list(info.labels))
                if route.candidate is not None:
                    entry["candidate"] = {"version": route.candidate.version, "mode": route.mode,
                                          "percent": route.percent,
                                          "labels": list(route.candidate.labels)}  # fmt: skip
        except ApiError as exc:
            if exc.status != 503:
                raise
        listed.append(entry)
    feedback = current_app.extensions.get("capture") is not None  # POST /feedback is on
    return jsonify({"default": _settings().model_name, "models": listed, "feedback": feedback})


def chosen_model() -> str:
    """``?model=``, one of the allowed models, else the default: never a name Triton picks."""
    name = request.args.get("model")
    if name is None or name == "":
        return _settings().model_name
    allowed = _settings().allowed_models
    if name not in allowed:
        raise ApiError(
            400,
            "unknown_model",
            f"model {name!r} is not offered; choose one of {', '.join(allowed)}",
        )
    return name


def _not_ready(code: str, message: str):
    resp = jsonify({"status": "not_ready", "error": {"code": code, "message": message}})
    resp.status_code = 503
    resp.headers["Retry-After"] = str(_settings().retry_after_s)
    return resp


@bp.post("/predict")
def predict():
    """Classify the image(s) in the body; one result, or a list for several images."""
    with admitted():
        return _predict()


@contextlib.contextmanager
def admitted():
    """Load shedding (``MAX_IN_FLIGHT``): a 429 at once when the worker is full. Predictions
    and explanations share the limit."""
    gate = current_app.extensions["admission"]
    if gate is not None and not gate.acquire(blocking=False):
        raise ApiError(429, "overloaded", "too many predictions in progress; retry shortly",
                       retry_after=_settings().retry_after_s)  # fmt: skip
    try:
        yield
    finally:
        if gate is not None:
            gate.release()


def refuse_oversized_body() -> None:
    """413 before talking to Triton or reading the body."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large",
                       f"the body exceeds {_settings().max_upload_mb:g} MB")  # fmt: skip


def _predict():
    settings = _settings()
    refuse_oversized_body()
    top_k, model = top_k_arg(), chosen_model()
    gateway = _gateway()
    info = gateway.model_info(model)
    images = inputs.decode(request, info.size, settings.max_image_pixels, settings.max_batch_images)
    batch = np.stack(images)
    outputs, info = gateway.infer(batch, model)
    probs = outputs.probabilities
    drift = model_metrics.familiarity(outputs.drift, info.drift_threshold, len(probs))
    unknown = model_metrics.known_class(outputs.unknown, info.unknown_threshold, len(probs))
    model_metrics.observe(info.name, info.version, info.labels, probs, drift,
                       settings.low_confidence, unknown)  # fmt: skip
    results = [result_json(p, info.labels, top_k, d, u)
               for p, d, u in zip(probs, drift, unknown, strict=True)]  # fmt: skip
    _capture(info, results, batch)
    return answer(info, results)


def answer(info: ModelInfo, results: list[dict]):
    """The response: the version that answered, the request id (for POST /feedback) and the
    results. One multipart image answers flat; several parts, JSON and .npy answer a list, even
    of one."""
    body = {"model": model_json(info), "request_id": g.request_id}
    if len(results) == 1 and request.mimetype == "multipart/form-data":
        body.update(results[0])
    else:
        body["results"] = results
    return jsonify(body)


def top_k_arg() -> int | None:
    raw = request.args.get("top_k")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_top_k", "top_k must be a positive integer") from exc
    if value < 1:
        raise ApiError(400, "invalid_top_k", "top_k must be a positive integer")
    return value


def result_json(
    probs: np.ndarray,
    labels: tuple[str, ...],
    top_k: int | None,
    drift: Familiarity | None,
    unknown: KnownClass | None = None,
) -> dict:
    order = np.argsort(-probs, kind="stable")[: top_k or len(probs)]
    ranked = [{"label": labels[i], "probability": float(probs[i])} for i in order]
    result = {
        "label": ranked[0]["label"],
        "probability": ranked[0]["probability"],
        "predictions": ranked,
    }
    if drift is not None:  # the version answers how unlike the training data the input is
        result["familiar"] = drift.familiar
        result["drift"] = drift.to_json()
    if unknown is not None:  # and whether it is one of the classes the version knows
        result["known_class"] = unknown.known
        result["unknown"] = unknown.to_json()
    return result


def _capture(info: ModelInfo, results: list[dict], images: np.ndarray) -> None:
    store: CaptureStore | None = current_app.extensions.get("capture")
    if store is not None:
        kept = [{k: r[k] for k in ("label", "probability", "drift", "unknown") if k in r}
                for r in results]  # fmt: skip
        store.capture(Answer(g.request_id, info.name, info.version, info.labels, kept, images))
        for r, pixels in zip(results, images, strict=True):
            if r.get("known_class") is False:  # a person should name it: perhaps a new class
                store.unknown_to_label(UnknownInput(info.name, info.labels, info.version,
                                                    r["label"], r["unknown"]["score"], pixels))  # fmt: skip


def model_json(info: ModelInfo) -> dict:
    return {"name": info.name, "version": info.version}
