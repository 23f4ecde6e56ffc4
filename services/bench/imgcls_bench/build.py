"""TensorFlow-side helpers of the benchmark, run in a subprocess (the bench itself stays TF-free).

python -m imgcls_bench.build models OUT_DIR --size 224      # FP32 + INT8 ONNX, Triton layout
python -m imgcls_bench.build keras-vs-ort MODEL.keras MODEL.onnx --size 224
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ["circle", "square", "triangle"]


def _images(size: int, n: int, seed: int = 0) -> np.ndarray:
    """Letterboxed demo-style images: realistic activations for INT8 calibration."""
    from imgcls.preprocessing import letterbox_array
    from model_preparation.tools.demo_data import render

    rng = np.random.default_rng(seed)
    out = [
        letterbox_array(np.asarray(render(LABELS[i % 3], rng, size, size + size // 3)), size)
        for i in range(n)
    ]
    return np.stack(out)


def _served_method(method: str) -> str:
    """The unknown-class method ``make up`` serves: ``reference.unknown.method``, or with
    ``auto`` the one the committed ``ood.json`` chose (the demo model's measurement)."""
    from model_preparation.common import OOD_REPORT

    if method != "auto":
        return method
    if not OOD_REPORT.is_file():
        raise SystemExit(f"reference.unknown.method auto: no {OOD_REPORT} says which to bench")
    return json.loads(OOD_REPORT.read_text())["served"]


def bench_reference(fp32: Path, size: int):
    """The drift and unknown-class scores fitted on demo-style images of this random-weight
    model, so the bench serves the same graph outputs as ``make up`` (their thresholds are
    meaningless here; their cost is not)."""
    from dataclasses import replace

    from imgcls.params import load_settings
    from model_preparation import ood
    from model_preparation.reference import Probe, ReferenceParams, fit

    params = load_settings(ReferenceParams, "reference")
    images = _images(size, 96, seed=1)
    labels = np.arange(len(images)) % len(LABELS)
    probe = Probe(fp32, params.layer, params.batch_size)
    seen = probe(images)
    ref = fit(seen.pooled, labels, params.components, probe.early, probe.axes)
    method = _served_method(params.unknown.method)
    scorer = ood.fit(method, seen.features, labels, probe.head, params.unknown)
    limit = ood.threshold(scorer.score(seen.features, seen.logits), params.unknown.false_flag_rate)
    held = float(np.quantile(ref.score(seen.pooled), params.quantile))  # as the reference stage
    return replace(ref, threshold=held, unknown=scorer, unknown_threshold=limit)


def build_models(out: Path, size: int) -> None:
    """ResNet50V2 at ``size`` (seeded random weights: speed does not depend on training; the
    input layer params.yaml ``train.pixels`` names when the folder is first built — a folder
    built for the other one is reused: rescaling or standardizing 64² pixels is noise beside the
    network, and benches run from projects with other params share one folder) →
    FP32 ONNX, static QDQ INT8 ONNX; Triton models: as served (params.yaml ``publish``), with
    batching off, as one instance using every core, as two single-thread instances, and INT8."""
    from model_preparation.common import quiet_tensorflow

    quiet_tensorflow()
    import keras

    from imgcls.variants import BF16, FP32, INT8, VARIANTS
    from model_preparation import int8 as int8_module
    from model_preparation.common import load_params, parse_settings
    from model_preparation.export import convert
    from model_preparation.int8 import quantize_int8
    from model_preparation.publish import PublishParams, publish_model
    from model_preparation.train import build_model

    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "fp32.onnx"
    keras_path = out / "model.keras"
    if not fp32.exists():  # built once per work folder (see the docstring)
        keras.utils.set_random_seed(0)
        model = build_model(size, len(LABELS), pixels=load_params("train")["pixels"])
        model.save(keras_path)
        convert(keras_path, size, 17, fp32)
    int8 = out / "int8.onnx"
    recipe = hashlib.sha256(Path(int8_module.__file__).read_bytes()).hexdigest()
    stamp = out / "int8.recipe"  # rebuild when the recipe changes
    if not int8.exists() or not stamp.exists() or stamp.read_text() != recipe:
        quantize_int8(fp32, int8, _images(size, 64))
        stamp.write_text(recipe)
    repo = out / "repository"
    # What `make up` serves (params.yaml `publish`), plus the variants the bench compares it with.
    served = load_params("publish")
    models = {
        "resnet50v2": (fp32, {}),
        "resnet50v2_plain": (fp32, {}),  # without the drift and unknown outputs: their cost
        "resnet50v2_nobatch": (fp32, {"dynamic_batching": False}),
        "resnet50v2_1x2": (fp32, {"instance_count": 1, "intra_op_threads": 0}),
        "resnet50v2_2x1": (fp32, {"instance_count": 2, "intra_op_threads": 1}),
        INT8.served_name("resnet50v2"): (int8, {}),
        BF16.served_name("resnet50v2"): (fp32, {}),  # the FP32 graph on OpenVINO in bfloat16
    }
    reference = bench_reference(fp32, size)
    for name, (path, extra) in models.items():
        shutil.rmtree(repo / name, ignore_errors=True)  # version 1: the current build, serving
        params = parse_settings(PublishParams, {**served, **extra}, f"bench model {name}")
        variant = next((v for v in VARIANTS if v.switched and name.endswith(v.suffix)), FP32)
        publish_model(name, path, LABELS, repo, params, variant=variant,
                      reference=None if name.endswith("_plain") else reference)  # fmt: skip
    shadowed(repo, fp32, parse_settings(PublishParams, served, "bench model"), reference)
    print(
        json.dumps(
            {
                "repository": str(repo),
                "keras": str(keras_path),
                "fp32": str(fp32),
                "int8": str(int8),
            }
        )
    )


SHADOWED = "resnet50v2_shadow"  # the ledger's shadow row: a candidate compared on every request


def second_version(model: Path, out: Path) -> Path:
    """The same graph with other bytes: a new version to publish."""
    import onnx

    graph = onnx.load(str(model))
    graph.doc_string = "imgcls bench: a second version of the same graph"
    onnx.save(graph, str(out))
    return out


def shadowed(repo: Path, fp32: Path, params, reference) -> None:
    """``SHADOWED``: version 1 serving and version 2 (the same graph) its candidate in shadow at
    100 %, so every request is also answered by the candidate in the background and compared,
    as a roll-out's shadow step runs."""
    import tempfile

    from imgcls.model_records import Lifecycle
    from imgcls.repository import ModelDir
    from model_preparation.publish import publish_model

    shutil.rmtree(repo / SHADOWED, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model in (fp32, second_version(fp32, Path(tmp) / "v2.onnx")):
            publish_model(SHADOWED, model, LABELS, repo, params, reference=reference)
    ModelDir(repo, SHADOWED).write_config(Lifecycle(1, candidate=2, mode="shadow", percent=100))


def keras_vs_ort(keras_path: Path, onnx_path: Path, size: int, seconds: float) -> None:
    """img/s of Keras (tf.function, inference mode) vs ONNX Runtime at batch 1 and 8."""
    from model_preparation.common import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    from model_preparation.onnx_utils import session
    from model_preparation.pixel_layers import load_model

    model = load_model(keras_path)
    fn = tf.function(lambda x: model(x, training=False))
    sess = session(onnx_path)
    result = {}
    for batch in (1, 8):
        x = _images(size, batch, seed=batch)
        runners = {"keras_tf_function": lambda x=x: fn(tf.constant(x)).numpy(),
                   "onnxruntime": lambda x=x: sess.run(None, {"image": x})}  # fmt: skip
        for name, run in runners.items():
            run()
            run()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                run()
                n += batch
            result[f"{name}_bs{batch}"] = round(n / (time.perf_counter() - t0), 2)
    for batch in (1, 8):
        result[f"ratio_bs{batch}"] = round(
            result[f"onnxruntime_bs{batch}"] / result[f"keras_tf_function_bs{batch}"], 2
        )
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models")
    m.add_argument("out", type=Path)
    m.add_argument("--size", type=int, default=224)
    k = sub.add_parser("keras-vs-ort")
    k.add_argument("keras_path", type=Path)
    k.add_argument("onnx_path", type=Path)
    k.add_argument("--size", type=int, default=224)
    k.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.cmd == "models":
        build_models(args.out, args.size)
    else:
        keras_vs_ort(args.keras_path, args.onnx_path, args.size, args.seconds)


if __name__ == "__main__":
    main()
