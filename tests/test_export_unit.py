"""The export stage's parity check, without TensorFlow: ``convert`` replaced by one that writes a
small ONNX graph and "Keras' answers" as its first child would. The stage passes when ONNX Runtime
agrees within ``export.tolerance`` and otherwise fails, leaving no ONNX file behind."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_preparation import export as export_stage
from model_preparation.common import PipelineError, Prepared

SIZE = 4


def _graph() -> onnx.ModelProto:
    """uint8 image → the softmax of its mean colour: a stand-in with the served contract."""
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("Softmax", ["m"], ["out"], axis=1)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "stand-in",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _softmax_of_means(images: np.ndarray) -> np.ndarray:
    m = images.astype(np.float32).mean(axis=(1, 2))
    e = np.exp(m - m.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def fake_convert(monkeypatch):
    """``convert`` as the real one behaves, Keras' answers offset by ``offset[0]``."""
    offset = [0.0]

    def convert(keras_path, image_size, opset, out, parity=None):
        model = _graph()
        export_stage.rename_output(model, "probabilities")
        onnx.save(model, str(out))
        images = np.random.default_rng(0).integers(0, 8, (parity.samples, SIZE, SIZE, 3),
                                                   dtype=np.uint8)  # fmt: skip
        np.savez(parity.answers, images=images, keras=_softmax_of_means(images) + offset[0])

    monkeypatch.setattr(export_stage, "convert", convert)
    return offset


def _run(tmp_path, tolerance: float):
    prepared = tmp_path / "prepared"
    Prepared(SIZE, ("a", "b", "c"), 10, 5).write(prepared)
    out, report = tmp_path / "model.onnx", tmp_path / "export.json"
    params = export_stage.ExportParams(opset=13, tolerance=tolerance, parity_samples=5)
    return out, report, lambda: export_stage.export(tmp_path / "m.keras", prepared, out, report,
                                                    params)  # fmt: skip


def test_onnx_within_tolerance_of_keras_is_kept_with_its_report(tmp_path, fake_convert):
    out, report, run = _run(tmp_path, tolerance=1e-4)
    result = run()
    assert out.is_file() and result["max_abs_diff"] < 1e-6 and result["samples"] == 5
    assert result["top1_agreement"] == 1.0
    assert json.loads(report.read_text())["output"] == {"name": "probabilities", "type": "TYPE_FP32",
                                                       "dims": [3]}  # fmt: skip


def test_onnx_that_differs_from_keras_fails_the_stage_and_leaves_no_file(tmp_path, fake_convert):
    fake_convert[0] = 1e-3  # Keras' answers 0.001 away from what the ONNX graph computes
    out, report, run = _run(tmp_path, tolerance=1e-4)
    with pytest.raises(PipelineError, match=r"differs from Keras by 1\.00e-03 > 1e-04"):
        run()
    assert not out.exists()
    assert json.loads(report.read_text())["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
