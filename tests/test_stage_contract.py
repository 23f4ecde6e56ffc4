"""What keeps `dvc repro` honest: strict stage settings, complete deps, paths in one place.

- Every stage reads its params.yaml section into a frozen dataclass: the file must be complete,
  a typo'd or mistyped key fails the stage with a line naming it.
- Every project module a stage imports (derived from the code, transitively) is in that stage's
  `deps`, so editing it makes `dvc status` report the stage changed.
- The files dvc.yaml declares are the ones the code writes (model_preparation.common).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from model_preparation import common
from model_preparation.common import PipelineError, parse_settings
from tests.conftest import make_project, run

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
STAGE_SETTINGS = {
    "prepare": "model_preparation.prepare:PrepareParams",
    "train": "model_preparation.train:TrainParams",
    "export": "model_preparation.export:ExportParams",
    "evaluate": "model_preparation.evaluate:EvaluateParams",
    "quantize": "model_preparation.quantize:QuantizeParams",
    "robustness": "model_preparation.robustness:RobustnessParams",
    "shift": "model_preparation.shift:ShiftParams",
    "reference": "model_preparation.reference:ReferenceParams",
    "publish": "model_preparation.publish:PublishParams",
    "demo": "model_preparation.tools.demo_data:DemoParams",
    "compare": "model_preparation.tools.compare:CompareParams",
    "search": "model_preparation.tools.search:SearchParams",
    "lifecycle": "imgcls.lifecycle:LifecycleParams",  # not a stage: the lifecycle commands
}


def _settings_class(section: str):
    module, name = STAGE_SETTINGS[section].split(":")
    return getattr(importlib.import_module(module), name)


def test_every_stage_has_settings_and_reads_only_its_section():
    stages = set(DVC["stages"])
    assert stages <= set(STAGE_SETTINGS)
    for stage in stages:
        assert DVC["stages"][stage]["params"] == [stage], stage


@pytest.mark.parametrize("section", sorted(STAGE_SETTINGS))
def test_params_yaml_is_complete_for_every_stage(section):
    settings = parse_settings(_settings_class(section), PARAMS[section], section)
    assert dataclasses.is_dataclass(settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.__setattr__(dataclasses.fields(settings)[0].name, None)


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("train", {"learnin_rate": 0.01}, "unknown key(s) 'learnin_rate'"),
        ("train", {"epochs": "ten"}, "train epochs: expected int, got 'ten'"),
        ("train", {"epochs": True}, "expected int, got True"),
        ("train", {"augment": {**PARAMS["train"]["augment"], "flip": "yes"}},
         "augment flip: expected bool"),
        ("train", {"augment": {**PARAMS["train"]["augment"], "zoom_out": 1.5}},
         "train.augment.zoom_out: 1.5 is out of range 0–1"),
        ("train", {"augment": {**PARAMS["train"]["augment"], "noise": -2.0}},
         "train.augment.noise: -2.0 is out of range"),
        ("train", {"optimizer": "adamw"}, "choose one of adam, sgd, adagrad, adasmooth"),
        ("train", {"mixed_precision": "fp8"}, "choose one of auto, float32, mixed_bfloat16"),
        ("train", {"mixed_precision": True}, "mixed_precision: expected str, got True"),
        ("prepare", {"image_size": 64.5}, "prepare image_size: expected int"),
        ("publish", {"preferred_batch_sizes": 4}, "expected a list"),
        ("quantize", {"min_agreement": None}, "expected float, got None"),
        ("shift", {"shifts": {"scale": [1.5]}}, "shift.shifts.scale: 1.5 is out of range"),
        ("shift", {"shifts": {"noise": [-4]}}, "shift.shifts.noise: -4 is out of range"),
        ("shift", {"shifts": {"fog": [1]}}, "unknown shift 'fog'; known: scale, crop"),
        ("shift", {"shifts": {"blur": 2}}, "shift.shifts.blur: expected a list of severities"),
        ("shift", {"shifts": {"jpeg": ["low"]}}, "shift.shifts.jpeg: 'low' is not a number"),
        ("shift", {"shifts": {}}, "shift.shifts: name at least one shift"),
        ("shift", {"max_images": 0}, "max_images and batch_size must be at least 1"),
        ("search", {"objective": "accuracy"}, "search.objective 'accuracy': one of val_loss, shift"),
        ("search", {"shift_images": 0}, "search.shift_images 0: at least 1"),
    ],
)  # fmt: skip
def test_typos_and_wrong_types_name_the_key(section, change, message):
    with pytest.raises(PipelineError) as err:
        parse_settings(_settings_class(section), {**PARAMS[section], **change}, section)
    assert message in str(err.value)


def test_a_missing_key_is_named():
    raw = {k: v for k, v in PARAMS["export"].items() if k != "opset"}
    with pytest.raises(PipelineError, match=r"missing key.*'opset'"):
        parse_settings(_settings_class("export"), raw, "export")


def _project_modules(module: str, seen: set[str] | None = None) -> set[str]:
    """``module`` and every project module it imports (at any depth, lazy imports included)."""
    seen = set() if seen is None else seen
    try:
        spec = importlib.util.find_spec(module)
    except (ModuleNotFoundError, ValueError):  # ``from x import name``: a name, not a module
        return seen
    if module in seen or spec is None or not spec.origin:
        return seen
    origin = Path(spec.origin)
    if REPO / "services" not in origin.parents:
        return seen
    seen.add(module)
    package = module if origin.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(origin.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs on import too
                _project_modules(".".join(parts[:i]), seen)
    return seen


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


@pytest.mark.parametrize("stage", sorted(DVC["stages"]))
def test_every_module_a_stage_imports_is_in_its_deps(stage):
    spec = DVC["stages"][stage]
    module = spec["cmd"].split("python -m ", 1)[1].split()[0]
    files = {
        Path(importlib.util.find_spec(m).origin).relative_to(REPO).as_posix()
        for m in _project_modules(module)
    }
    # an __init__.py holding only a docstring cannot change what a stage computes
    files = {f for f in files if not f.endswith("__init__.py") or _has_code(REPO / f)}
    deps = spec["deps"]
    missing = sorted(f for f in files if not any(f == d or f.startswith(d + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not depend on: {missing}"


def test_declared_outputs_are_the_paths_the_code_writes():
    known = {str(v) for v in vars(common).values() if isinstance(v, Path)}
    for name, stage in DVC["stages"].items():
        declared = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        for kind in ("metrics", "plots"):
            declared += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])]
        for path in declared:
            owners = {path} | {str(p) for p in Path(path).parents}  # dvclive owns its tree
            assert owners & (known - {"artifacts", "."}), f"{name}: {path} is not in common.py"


def test_stages_take_no_path_arguments():
    """dvc.yaml runs each stage bare: the code owns the paths, not the command line."""
    for name, stage in DVC["stages"].items():
        assert stage["cmd"] == f"python -m model_preparation.{name}", name


@pytest.mark.slow
def test_dvc_repro_stops_at_the_stage_with_the_bad_key(tmp_path):
    override = {"demo": {"images_per_class": 4, "min_side": 40, "max_side": 48},
                "prepare": {"image_size": 32}, "train": {"learnin_rate": 0.1}}  # fmt: skip
    project = make_project(tmp_path / "p", override)
    run([sys.executable, "-m", "model_preparation.tools.demo_data"], project)
    run("dvc add -q data", project)
    result = run("dvc repro", project, check=False)
    assert result.returncode != 0
    assert "Running stage 'prepare'" in result.stdout  # the stages before it ran
    assert "unknown key(s) 'learnin_rate'" in result.stderr + result.stdout
    params = yaml.safe_load((project / "params.yaml").read_text())
    del params["train"]["learnin_rate"]
    params["prepare"]["image_size"] = "32"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run("dvc repro", project, check=False)
    assert result.returncode != 0
    assert "[prepare] image_size: expected int, got '32'" in result.stderr + result.stdout


@pytest.mark.slow
def test_editing_the_tfrecord_decoder_makes_its_stages_stale(tiny_project):
    decoder = tiny_project / "services/model-preparation/model_preparation/records.py"
    original = decoder.read_text()
    try:
        assert "changed" not in run("dvc status", tiny_project).stdout
        decoder.write_text(original + "\n# an edit\n")
        status = run("dvc status --json", tiny_project).stdout
        stale = set(yaml.safe_load(status))
        assert {"train", "export", "evaluate", "quantize", "shift", "reference"} <= stale, stale
        assert "prepare" not in stale
    finally:
        decoder.write_text(original)
