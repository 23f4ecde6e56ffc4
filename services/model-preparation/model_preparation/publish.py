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

from imgcls.contract import bf16_name, int8_name
from imgcls.repository import KERAS_FILE, Lifecycle, ModelDir, Serving, Tensor, Version, md5sum

from . import ood
from .common import (
    BF16_REPORT,
    INT8_MODEL,
    INT8_REPORT,
    KERAS_MODEL,
    LABELS_FILE,
    METRICS_REPORT,
    MODEL_REPOSITORY,
    ONNX_MODEL,
    PUBLISH_REPORT,
    REFERENCE,
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
    name: str, inp: TensorSpec, out: TensorSpec, params: PublishParams, precision: str = ""
) -> Serving:
    """model.json: the graph's tensors and params.yaml's scheduling; a ``precision`` (bf16)
    means OpenVINO runs the graph."""
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
        backend="openvino" if precision else "onnxruntime",
        precision=precision,
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
    precision: str = "",
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
    serving = serving_config(name, inp, out, params, precision)
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
    model: Path,
    labels_file: Path,
    repository: Path,
    params: PublishParams,
    int8_model: Path | None = None,
    accuracy: dict[str, float | None] | None = None,
    bf16: bool = False,
    reference: Reference | None = None,
) -> dict:
    """The FP32 model as ``model_name`` and, when asked, its INT8 and BF16 siblings.
    ``accuracy``: held-out accuracy by variant (``fp32``, ``int8``, ``bf16``)."""
    name, acc = params.model_name, accuracy or {}
    labels = read_labels(labels_file)
    keras = KERAS_MODEL if KERAS_MODEL.is_file() else None
    init = read_json(TRAIN_INIT) if TRAIN_INIT.is_file() else None
    receipt = publish_model(name, model, labels, repository, params, acc.get("fp32"),
                            reference=reference, keras=keras, init=init)  # fmt: skip
    if int8_model is not None:
        receipt["int8"] = publish_model(int8_name(name), int8_model, labels, repository, params,
                                        acc.get("int8"), reference=reference)  # fmt: skip
    if bf16:
        receipt["bf16"] = publish_model(bf16_name(name), model, labels, repository, params,
                                        acc.get("bf16"), "bf16", reference)  # fmt: skip
    return receipt


def _accuracies() -> dict[str, float | None]:
    """What the evaluate and quantize stages measured on the held-out split."""
    found: dict[str, float | None] = {}
    for variant, report, key in (("fp32", METRICS_REPORT, "accuracy"),
                                 ("int8", INT8_REPORT, "int8_accuracy"),
                                 ("bf16", BF16_REPORT, "bf16_accuracy")):  # fmt: skip
        try:
            found[variant] = read_json(report)[key]
        except (OSError, KeyError, ValueError):
            found[variant] = None
    return found


def main() -> None:
    params = load_settings(PublishParams, "publish")
    int8 = INT8_MODEL if params.int8 else None
    accuracy = _accuracies()
    if params.bf16 and accuracy["bf16"] is None:
        raise PipelineError(
            "publish.bf16 serves the BF16 variant, but the quantize stage did not check it "
            "(set quantize.bf16: true)"
        )
    reference = Reference.load(REFERENCE) if params.drift else None
    receipt = publish(
        ONNX_MODEL, LABELS_FILE, MODEL_REPOSITORY, params, int8, accuracy, params.bf16, reference
    )
    write_json(PUBLISH_REPORT, receipt)
    for entry in (receipt, receipt.get("int8"), receipt.get("bf16")):
        if entry:
            what = "added" if entry["new"] else "unchanged, already"
            print(
                f"publish: {entry['model_name']} version {entry['version']} {what} in "
                f"{MODEL_REPOSITORY}/ ({entry['num_classes']} classes, {entry['role']})"
            )


if __name__ == "__main__":
    run_cli(main)
