"""``POST /explain``: the answer and, for each image, which parts of it the answer depends on.

Same bodies, limits and errors as ``/predict`` (and the same ``?model=``); ``?class=`` explains
another label than the top one; ``?overlay=true`` adds the map over the image as a PNG data URL.
The map is an occlusion map (``imgcls.explain``): the image and its 49 masked copies go to
Triton as one batch, to the one version that answers, so it explains the model that is actually
served (FP32, INT8, BF16) and costs 50 forward passes per image. The masked copies are not
users' images: they are neither mirrored to a shadow candidate nor counted in the metrics.
"""

from __future__ import annotations

import base64

import numpy as np
from flask import Blueprint, current_app, request

from imgcls.explain import MAX_IMAGES, Occlusion, overlay_png
from imgcls.gateway import model_metrics
from imgcls.gateway.errors import ApiError
from imgcls.gateway.protocol import Gateway

from . import inputs
from .routes import admitted, answer, chosen_model, refuse_oversized_body, result_json
from .settings import Settings

bp = Blueprint("explain", __name__)


@bp.post("/explain")
def explain():
    with admitted():
        return _explain()


def _explain():
    settings: Settings = current_app.config["SETTINGS"]
    refuse_oversized_body()
    model, overlay = chosen_model(), _flag("overlay")
    gateway: Gateway = current_app.extensions["triton"]
    info = gateway.model_info(model)
    limit = min(settings.max_batch_images, MAX_IMAGES)
    images = inputs.decode(request, info.size, settings.max_image_pixels, limit)
    occlusion = Occlusion(*info.size)
    batch = np.concatenate([occlusion.batch(pixels) for pixels in images])
    outputs, info = gateway.infer(batch, model, compare=False)
    per_image = len(occlusion.positions) + 1
    results = []
    for i, pixels in enumerate(images):
        rows = outputs[i * per_image : (i + 1) * per_image]
        probs = rows.probabilities
        drift = model_metrics.familiarity(rows.drift, info.drift_threshold, per_image)[0]
        unknown = model_metrics.known_class(rows.unknown, info.unknown_threshold, per_image)[0]
        result = result_json(probs[0], info.labels, None, drift, unknown)
        index = _class_index(info.labels, int(np.argmax(probs[0])))
        grid = occlusion.heatmap(probs[:, index])
        result["explanation"] = {
            "method": "occlusion",
            "class": info.labels[index],
            "grid": np.round(grid, 5).tolist(),
            "passes": per_image,
        }
        if overlay:
            png = base64.b64encode(overlay_png(pixels, grid)).decode()
            result["explanation"]["overlay"] = f"data:image/png;base64,{png}"
        results.append(result)
    return answer(info, results)


def _class_index(labels: tuple[str, ...], top: int) -> int:
    wanted = request.args.get("class")
    if wanted is None or wanted == "":
        return top
    if wanted not in labels:
        raise ApiError(400, "unknown_class", f"class {wanted!r} is not a label of this model "
                       f"version: {', '.join(labels)}")  # fmt: skip
    return labels.index(wanted)


def _flag(name: str) -> bool:
    raw = request.args.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, f"invalid_{name}", f"{name} must be true or false")
    return raw in ("true", "1")
