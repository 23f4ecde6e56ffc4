"""One table of model variants (``imgcls.variants``): the files that cannot import it —
params.yaml, dvc.yaml, the local and Docker Triton stand-ins — are held to it here, and the code
that decides from it is tried on a case that must say yes and one that must say no."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from imgcls import runtimes
from imgcls.variants import BF16, FP32, INT8, VARIANTS, by_backend, served_names
from tests.builds import REPO


def test_the_table_names_each_variant_once():
    for field in ("key", "suffix", "label"):
        values = [getattr(v, field) for v in VARIANTS]
        assert len(set(values)) == len(values), field
    assert VARIANTS[0] is FP32 and not FP32.switched and INT8.switched and BF16.switched
    assert served_names("m") == ("m", "m_int8", "m_bf16")
    assert all(v.runtime in runtimes.RUNTIMES for v in VARIANTS)


def test_a_served_config_maps_back_to_its_variant():
    assert (
        by_backend("openvino", "bf16") is BF16
        and by_backend("onnxruntime").runtime == "onnxruntime"
    )
    with pytest.raises(ValueError, match="no variant"):
        by_backend("tensorrt")


def test_params_yaml_has_one_switch_per_switched_variant():
    from model_preparation.publish import PublishParams

    section = yaml.safe_load((REPO / "params.yaml").read_text())["publish"]
    fields = {f.name for f in dataclasses.fields(PublishParams)}
    for v in VARIANTS:
        assert (v.key in section, v.key in fields) == (v.switched, v.switched), v.key


def test_each_variants_gate_is_a_setting_of_the_stage_that_checks_it():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for v in VARIANTS:
        section, key = v.gate.split(".")
        assert isinstance(params[section][key], float), v.gate
    assert len({v.gate for v in VARIANTS}) == 2  # FP32 against Keras, the others against FP32


def test_publish_serves_what_the_switches_say():
    from model_preparation.publish import served_variants
    from tests.models import publish_params

    assert served_variants(publish_params(int8=True, bf16=True)) == list(VARIANTS)
    assert served_variants(publish_params(int8=False, bf16=False)) == [FP32]
    assert served_variants(publish_params(int8=False, bf16=True)) == [FP32, BF16]


def test_the_publish_stage_depends_on_every_variants_file_and_report():
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["publish"]["deps"]
    for v in VARIANTS:
        assert f"artifacts/{v.artifact}" in deps and f"artifacts/reports/{v.report}" in deps, v


def test_every_backend_has_its_stand_in_locally_and_in_the_docker_test_image():
    dockerfile = (REPO / "tests/docker/tritonserver.Dockerfile").read_text()
    for backend in {v.backend for v in VARIANTS}:
        stand_in = REPO / "services/local-stack/local_stack/backends" / backend / "model.py"
        assert stand_in.is_file(), backend
        assert f"COPY {backend} /opt/tritonserver/backends/{backend}" in dockerfile, backend


def test_publish_refuses_a_switched_variant_no_stage_measured():
    from model_preparation.publish import unmeasured
    from tests.models import publish_params

    measured = {"fp32": 0.99, "int8": 0.98, "bf16": 0.99}
    assert unmeasured(publish_params(int8=True, bf16=True), measured) == []
    assert unmeasured(publish_params(int8=True, bf16=True), {**measured, "bf16": None}) == [BF16]
    assert unmeasured(publish_params(int8=True, bf16=False), {**measured, "bf16": None}) == []
