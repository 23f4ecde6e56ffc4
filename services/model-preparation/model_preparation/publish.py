"""Stage ``publish``: add the verified ONNX models to Triton's repository as new versions.

Each model (``model_name`` and its INT8 sibling) gets the next version number, ``<N>/``, built
under a hidden name and renamed into place in one step, never over a file Triton serves
(``imgcls.repository``). The first version of a model serves at once; every later one is a
*candidate*: it serves nobody until ``python -m imgcls.lifecycle`` (``make canary``/``shadow``/
``promote``, which ``make model`` starts for you) says so. A version's input must equal the served
one (another size or tensor name is another model: change ``model_name``). The served file is the
verified artifact with its class dimension made variable (one config serves versions with
different numbers of classes) and its labels in the ONNX metadata; its outputs are checked equal to
the artifact's. Where the ``reference`` stage ran, each served graph also outputs ``drift`` (how
unlike the training data each input is, ``reference.py``), checked against the reference's own
numbers, and the version records its threshold. A model that is on disk already (a rerun, data put back) adds nothing. The repository is versioned by
``model.dvc`` (``make model`` commits it), see README "Changing the model in production".
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from imgcls.model_records import Lifecycle, Serving, Tensor, Version
from imgcls.repository import KERAS_FILE, ModelDir, md5sum
from imgcls.variants import FP32, VARIANTS, Variant

from . import ood
from .common import (
    ARTIFACTS,
    KERAS_MODEL,
    LABELS_FILE,
    MODEL_REPOSITORY,
    PUBLISH_REPORT,
    REFERENCE,
    REPORTS,
    TRAIN_INIT,
    PipelineError,
    load_settings,
    read_json,
    read_labels,
    run_cli,
    write_json,
)
from .onnx_utils import (
    TensorSpec,
    add_drift_output,
    head_tensors,
    session,
    signature,
)
from .reference import Reference, embedder, features, head_outputs


@dataclass(frozen=True)
class PublishParams:
    """params.yaml ``publish``: the model repository layout and Triton's scheduling."""

    model_name: str
    keep_versions: int  # versions kept per model; the serving, candidate and previous always
    max_batch_size: int
    dynamic_batching: bool
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instance_count: int
    intra_op_threads: int  # per instance; 0 = the runtime's default (every core)
    int8: bool  # also serve the INT8 model as <model_name>_int8
    bf16: bool  # also serve the FP32 graph on OpenVINO in bfloat16 as <model_name>_bf16
    drift: bool  # append the reference stage's drift score to every served graph


def serving_config(
    name: str, inp: TensorSpec, out: TensorSpec, params: PublishParams, variant: Variant = FP32
) -> Serving:
    """model.json: the graph's tensors, params.yaml's scheduling, and the variant's backend and
    precision (``imgcls.variants``)."""
    return Serving(
        name=name,
        input=Tensor(inp.name, inp.triton_type, tuple(inp.dims)),
        output=Tensor(out.name, out.triton_type, (-1,)),
        max_batch_size=params.max_batch_size,
        dynamic_batching=params.dynamic_batching,
        preferred_batch_sizes=params.preferred_batch_sizes,
        max_queue_delay_us=params.max_queue_delay_us,
        instance_count=params.instance_count,
        intra_op_threads=params.intra_op_threads,
        backend=variant.backend,
        precision=variant.precision,
    )


def _signature(model: Path) -> tuple[TensorSpec, TensorSpec]:
    try:
        inputs, outputs = signature(model)
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError…
        raise PipelineError(f"{model} is not a readable ONNX model: {exc}") from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise PipelineError(f"{model} must have one input and one output")
    return inputs[0], outputs[0]


def served_onnx(
    model: Path, labels: list[str], out: Path, reference: Reference | None = None
) -> None:
    """The artifact with a variable class dimension, its labels in the metadata and, with a
    ``reference``, the drift output; refused unless ONNX Runtime gives the artifact's
    probabilities, and the reference's scores, on a probe batch."""
    graph = onnx.load(str(model))
    dim = graph.graph.output[0].type.tensor_type.shape.dim[-1]
    dim.Clear()
    dim.dim_param = "classes"
    if reference is not None:
        add_drift_output(graph, reference.tensor, reference.axes, reference.projection,
                         reference.offset, reference.class_means)  # fmt: skip
    if reference is not None and reference.unknown is not None:
        head = head_tensors(graph)
        ood.add_output(graph, head.features, head.logits, reference.unknown)
    onnx.helper.set_model_props(graph, {"imgcls.labels": json.dumps(labels)})
    onnx.save(graph, str(out))
    try:
        original, served = session(model), session(out)
    except Exception as exc:
        raise PipelineError(f"ONNX Runtime cannot open {model} or its served copy: {exc}") from None
    shape = [d if d > 0 else 2 for d in _signature(model)[0].dims]
    probe = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
    name = original.get_inputs()[0].name
    outputs = served.run(None, {name: probe})
    if not np.array_equal(original.run(None, {name: probe})[0], outputs[0]):
        raise PipelineError(f"the served copy of {model} does not answer like the artifact")
    if reference is not None:
        expected = reference.score(features(*embedder(model, reference.tensor), probe, 2)[0])
        if not np.allclose(outputs[1][:, 0], expected, rtol=1e-3, atol=1e-3):
            raise PipelineError(f"the drift output of {model} does not match the reference")
    if reference is not None and reference.unknown is not None:
        feats, logits = head_outputs(model, probe)
        expected = reference.unknown.score(feats, logits)
        if not np.allclose(outputs[2][:, 0], expected, rtol=1e-3, atol=1e-3):
            raise PipelineError(f"the unknown output of {model} does not match the reference")


def publish_model(
    name: str,
    model: Path,
    labels: list[str],
    repository: Path,
    params: PublishParams,
    accuracy: float | None = None,
    variant: Variant = FP32,
    reference: Reference | None = None,
    keras: Path | None = None,
    init: dict | None = None,
) -> dict:
    """Add ``model`` as the next version of ``name`` (or reuse one on disk that is the same);
    ``keras``: its Keras model, kept beside it for ``train.init: serving``; ``init``: what its
    training started from."""
    inp, out = _signature(model)
    if out.dims != [len(labels)]:
        raise PipelineError(
            f"model outputs {out.dims[0]} classes but there are {len(labels)} labels"
        )
    serving = serving_config(name, inp, out, params, variant)
    target = ModelDir(repository, name)
    with target.lock():
        state = target.state() if target.exists() else None
        if state is not None:
            target.check_compatible(serving.input, serving.output, f"the new {model}")
        source = {"artifact": str(model), "md5": md5sum(model)}
        if reference is not None:
            source["reference_md5"] = reference.md5
        if init is not None:
            source["init"] = init
        same = [
            v
            for v in map(target.version, target.versions() if state else [])
            if _same_source(v.source, source) and list(v.labels) == labels
        ]
        if same:  # this very model is on disk already (a rerun, or data put back): no new version
            version, added = same[-1], False
        else:
            with tempfile.TemporaryDirectory(prefix="imgcls-publish-") as tmp:
                served = Path(tmp) / "model.onnx"
                served_onnx(model, labels, served, reference)
                meta = Version(0, tuple(labels), serving.input, serving.output, "", 0, accuracy,
                               source=source, drift_threshold=reference and reference.threshold,
                               unknown_threshold=reference and reference.unknown_threshold)  # fmt: skip
                extras = {KERAS_FILE: keras} if keras is not None else None
                version, added = target.add_version(served, meta, extras), True
        target.write_serving(serving)
        first = state is None
        state = state or Lifecycle(serving=version.number)
        target.write_config(state)
        (target.path / "labels.txt").unlink(missing_ok=True)  # the layout before versions had one
        pruned = target.prune(params.keep_versions)
        if added:
            target.log("publish", version=version.number, accuracy=accuracy, serving=first)
    role = "serving" if version.number == state.serving else "candidate"
    return {"model_name": name, "version": version.number, "role": role, "new": added,
            "num_classes": len(labels), "accuracy": accuracy, "md5": version.md5,
            "pruned": pruned}  # fmt: skip


def _same_source(old: dict, new: dict) -> bool:
    """The same artifact, with the same drift reference (or none on either side)."""
    return all(old.get(k) == new.get(k) for k in ("md5", "reference_md5"))


def publish(
    artifacts: Path,
    labels_file: Path,
    repository: Path,
    params: PublishParams,
    accuracy: dict[str, float | None] | None = None,
    reference: Reference | None = None,
) -> dict:
    """Every variant ``params`` serves (FP32 always; ``publish.<key>`` the others), each from its
    file in ``artifacts`` as ``<model_name><suffix>`` (``imgcls.variants``); ``accuracy``:
    held-out accuracy by variant key. The receipt is FP32's, with each other variant's under its
    key."""
    name, acc = params.model_name, accuracy or {}
    labels = read_labels(labels_file)
    keras = KERAS_MODEL if KERAS_MODEL.is_file() else None
    init = read_json(TRAIN_INIT) if TRAIN_INIT.is_file() else None
    receipt: dict = {}
    for variant in served_variants(params):
        first = variant is FP32  # the Keras model and what training started from: kept once
        entry = publish_model(variant.served_name(name), artifacts / variant.artifact, labels,
                              repository, params, acc.get(variant.key), variant, reference,
                              keras if first else None, init if first else None)  # fmt: skip
        if first:
            receipt.update(entry)
        else:
            receipt[variant.key] = entry
    return receipt


def served_variants(params: PublishParams) -> list[Variant]:
    """FP32, and each variant whose ``publish.<key>`` switch is on."""
    return [v for v in VARIANTS if not v.switched or getattr(params, v.key)]


def unmeasured(params: PublishParams, accuracy: dict[str, float | None]) -> list[Variant]:
    """The variants ``params`` would serve that no stage measured: publish refuses them."""
    return [v for v in served_variants(params) if v.switched and accuracy.get(v.key) is None]


def _accuracies() -> dict[str, float | None]:
    """What the evaluate and quantize stages measured on the held-out split, by variant."""
    found: dict[str, float | None] = {}
    for variant in VARIANTS:
        try:
            found[variant.key] = read_json(REPORTS / variant.report)[variant.accuracy_key]
        except (OSError, KeyError, ValueError):
            found[variant.key] = None
    return found


def main() -> None:
    params = load_settings(PublishParams, "publish")
    accuracy = _accuracies()
    missing = unmeasured(params, accuracy)
    if missing:
        v = missing[0]
        raise PipelineError(
            f"publish.{v.key} serves the {v.label} variant, but no stage measured it "
            f"(artifacts/reports/{v.report} has no {v.accuracy_key}: run the quantize stage, "
            f"with quantize.{v.key}: true where params.yaml has that switch)"
        )
    reference = Reference.load(REFERENCE) if params.drift else None
    receipt = publish(ARTIFACTS, LABELS_FILE, MODEL_REPOSITORY, params, accuracy, reference)
    write_json(PUBLISH_REPORT, receipt)
    for entry in (receipt, *(receipt.get(v.key) for v in VARIANTS if v.switched)):
        if entry:
            what = "added" if entry["new"] else "unchanged, already"
            print(
                f"publish: {entry['model_name']} version {entry['version']} {what} in "
                f"{MODEL_REPOSITORY}/ ({entry['num_classes']} classes, {entry['role']})"
            )


if __name__ == "__main__":
    run_cli(main)
