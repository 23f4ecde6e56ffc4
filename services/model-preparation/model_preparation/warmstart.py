"""``train.init``: where the train stage's weights start — ``scratch`` (random), or ``serving``
(the version that serves now, fine-tuned on the new data with the stage's own schedule).

A retrain from scratch on a few corrected images moves the model by its seed noise more than by
the corrections; starting from the serving version keeps what it knows. The publish stage keeps
each FP32 version's Keras model beside its ONNX file (``<N>/model.keras``), and this module reads
the serving version's: ``serving`` finds the one model of the repository that has them (``serving:
<model>`` names it). Its backbone is copied whole; its head row by row **by class name**, so a
class added (or removed, or reordered) keeps the others' weights and a new class starts random.
Read at training time from ``model_repository/``, which is not a DVC dependency of the stage (it
is the pipeline's own output): the version it started from is printed and kept in the model's
version record (``source.init``).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

from imgcls.contract import MODEL_REPOSITORY
from imgcls.repository import KERAS_FILE, ModelDir, model_dirs

from .common import OUTPUT_NAME, TRAIN_INIT, PipelineError, quiet_tensorflow


def parse_init(value: str) -> tuple[str, str]:
    """``scratch`` → ("scratch", ""); ``serving`` / ``serving:<model>`` → ("serving", model)."""
    kind, _, model = value.partition(":")
    if kind not in ("scratch", "serving") or (kind == "scratch" and model):
        raise PipelineError(f"train.init {value!r}: choose scratch, serving or serving:<model>")
    return kind, model


def serving_source(model_name: str = "", repository: Path = MODEL_REPOSITORY) -> dict:
    """The serving version whose Keras model a warm start loads: model, version, path, labels."""
    candidates = [m for m in model_dirs(repository) if not model_name or m.name == model_name]
    found = []
    for model in candidates:
        state = model.state()
        if state is not None and (model.path / str(state.serving) / KERAS_FILE).is_file():
            found.append((model, state.serving))
    if not found:
        which = f"model {model_name!r}" if model_name else "any model"
        raise PipelineError(f"train.init serving: {which} in {repository}/ has no serving version "
                            f"with its Keras model ({KERAS_FILE}, kept by publish since train.init "
                            "exists): train with train.init: scratch once")  # fmt: skip
    if len(found) > 1:
        names = ", ".join(m.name for m, _ in found)
        raise PipelineError(f"train.init serving: several models could start it ({names}): "
                            "name one, e.g. serving:<model>")  # fmt: skip
    model, number = found[0]
    return {"model": model.name, "version": number,
            "path": str(model.path / str(number) / KERAS_FILE),
            "labels": list(ModelDir(repository, model.name).version(number).labels)}  # fmt: skip


def warm_start(model, source: dict, labels: list[str]) -> str:
    """Copy ``source``'s weights into ``model`` (the new network); what was copied, in words."""
    quiet_tensorflow()
    import keras
    import numpy as np

    from .pixel_layers import load_model

    old = load_model(source["path"])
    backbone = [x for x in model.layers if isinstance(x, keras.Model)]
    old_backbone = [x for x in old.layers if isinstance(x, keras.Model)]
    if len(backbone) != 1 or len(old_backbone) != 1:
        raise PipelineError(f"{source['path']} is not a model of this project's network")
    try:
        backbone[0].set_weights(old_backbone[0].get_weights())
    except ValueError as exc:
        raise PipelineError(f"{source['path']} does not fit this network (another image size?): "
                            f"{exc}") from None  # fmt: skip
    kernel, bias = model.get_layer(OUTPUT_NAME).get_weights()
    old_kernel, old_bias = old.get_layer(OUTPUT_NAME).get_weights()
    old_index = {name: i for i, name in enumerate(source["labels"])}
    kept = [name for name in labels if name in old_index]
    for i, name in enumerate(labels):
        if name in old_index:
            kernel[:, i] = old_kernel[:, old_index[name]]
            bias[i] = old_bias[old_index[name]]
    model.get_layer(OUTPUT_NAME).set_weights([np.asarray(kernel), np.asarray(bias)])
    new = [name for name in labels if name not in old_index]
    # The old network is freed here, not whenever the collector finds it (a cycle of Keras
    # objects): found only after training, freeing it cost a fine-tune's process more the longer
    # it had trained (measured in docs/testing.md).
    del old, old_backbone
    gc.collect()
    return (
        f"{source['model']} version {source['version']}: backbone, and the head of "
        f"{len(kept)} classes" + (f" (new, from random: {', '.join(new)})" if new else "")
    )


def record(init: dict | None) -> None:
    """What this training started from, for the publish stage's version record."""
    TRAIN_INIT.parent.mkdir(parents=True, exist_ok=True)
    payload = {"init": "scratch"} if init is None else {
        "init": "serving", "model": init["model"], "version": init["version"]}  # fmt: skip
    TRAIN_INIT.write_text(json.dumps(payload) + "\n")
