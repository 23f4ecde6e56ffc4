"""publish: the Triton config is generated from the ONNX graph and refuses inconsistent labels."""

from __future__ import annotations

import numpy as np
import pytest

from model_preparation.common import PipelineError
from model_preparation.onnx_utils import session
from model_preparation.publish import publish
from tests.models import publish_params, tiny_onnx


def test_config_and_labels_follow_the_graph(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    receipt = publish(
        model, labels, tmp_path / "repo", publish_params(model_name="m", max_batch_size=4)
    )
    config = (tmp_path / "repo/m/config.pbtxt").read_text()
    assert 'name: "m"' in config and "max_batch_size: 4" in config
    assert "data_type: TYPE_UINT8" in config and "dims: [ 8, 8, 3 ]" in config
    assert "format: FORMAT_NHWC" in config  # Triton's image_client.py needs it
    assert "dims: [ 3 ]" in config and 'label_filename: "labels.txt"' in config
    assert (tmp_path / "repo/m/labels.txt").read_text() == "a\nb\nc\n"
    assert receipt["num_classes"] == 3
    probs = session(tmp_path / "repo/m/1/model.onnx").run(
        None, {"image": np.zeros((2, 8, 8, 3), np.uint8)}
    )[0]
    assert probs.shape == (2, 3)


def test_label_count_must_match_the_output(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", classes=3)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(PipelineError, match="3 classes but there are 2 labels"):
        publish(model, labels, tmp_path / "repo", publish_params())


def test_thread_layout_uses_the_native_backends_parameter_names(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    layout = publish_params(model_name="m", instance_count=2, ort_intra_op_threads=1)
    publish(model, labels, tmp_path / "two", layout)
    config = (tmp_path / "two/m/config.pbtxt").read_text()
    assert "count: 2" in config and "kind:" not in config  # Triton picks GPU where there is one
    assert 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }' in config
    publish(
        model,
        labels,
        tmp_path / "default",
        publish_params(model_name="m", instance_count=1, ort_intra_op_threads=0),
    )
    default = (tmp_path / "default/m/config.pbtxt").read_text()
    assert "count: 1" in default and "intra_op_thread_count" not in default
