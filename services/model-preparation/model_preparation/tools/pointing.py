"""How good the served model's explanations are, measured on the demo data, whose generator knows
where each shape is (``demo_data.boxes``).

    python -m model_preparation.tools.pointing [--model model_repository/resnet50v2/1/model.onnx]
                                               [--limit 600] [--out artifacts/reports/explain.json]
                                               [--label-shuffled | --label-shuffled-model ONNX]

For each held-out image (prepare's own split) the occlusion map (``imgcls.explain``, the very
computation ``POST /explain`` makes through Triton) of the predicted class is scored: the
*pointing game* (the map's peak cell lies inside the shape's bounding box) and the share of the
map's positive mass inside the box, against what a uniform map would put there.

The same is measured on control models that must fail (Adebayo et al.'s sanity checks: an
explanation that does not depend on what the model learned would score as well there): a copy of
the model with random weights, always, and with ``--label-shuffled`` a model trained by this
project's own prepare/train/export stages and parameters on the same files with their labels
shuffled (a few minutes of training, in a temporary directory). Not a DVC stage: it needs the demo
data's generator (``params.yaml`` ``demo``), so it is a check of the method, not of any dataset.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from imgcls.explain import Occlusion, mass_inside, points_inside, uniform_inside
from imgcls.params import load_settings
from imgcls.preprocessing import ImageError, load_image
from imgcls.runtimes import predict

from ..common import ONNX_MODEL, PARAMS_FILE, RAW_DATA, REPORTS, PipelineError, run_cli, write_json
from ..onnx_utils import session
from ..prepare import PrepareParams, Sample, discover, split
from .demo_data import DemoParams, boxes

GOAL = 0.8  # the pointing game's share the issue asks for


def held_out(raw: Path, params: PrepareParams) -> list[Path]:
    """The files prepare puts in the validation split (its own discover and split, over the
    files it can read)."""
    classes, files = discover(raw)
    samples = [Sample(path, label) for label, c in enumerate(classes) for path in files[c]
               if _readable(path)]  # fmt: skip
    return [s.path for s in split(samples, params)["val"]]


def _readable(path: Path) -> bool:
    try:
        load_image(path, 8)
    except ImageError:
        return False
    return True


def letterboxed(box, width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """A box in the original image's pixels → in the letterboxed ``size × size`` input (the
    geometry of ``imgcls.preprocessing.letterbox_image``)."""
    scale = min(size / width, size / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    ox, oy = (size - new_w) // 2, (size - new_h) // 2
    sx, sy = new_w / width, new_h / height
    return (ox + box[0] * sx, oy + box[1] * sy, ox + box[2] * sx, oy + box[3] * sy)


def score(model: Path, images: list[np.ndarray], boxes_px: list, size: int) -> dict:
    """Pointing game and mass inside the boxes of the occlusion maps of ``model``."""
    sess = session(model)
    occlusion = Occlusion(size, size)
    hits, mass, uniform, empty = [], [], [], 0
    for pixels, box in zip(images, boxes_px, strict=True):
        probs = predict(sess, occlusion.batch(pixels), batch_size=64)
        grid = occlusion.heatmap(probs[:, int(np.argmax(probs[0]))])
        hits.append(points_inside(grid, box, size))
        empty += int(grid.max() <= 0)
        mass.append(mass_inside(grid, box, size))
        uniform.append(uniform_inside(box, size))
    return {"images": len(images), "pointing": float(np.mean(hits)),
            "mass_inside": float(np.mean(mass)), "uniform_inside": float(np.mean(uniform)),
            "empty_maps": empty}  # fmt: skip


def randomized(model: Path, out: Path, seed: int = 0) -> Path:
    """``model`` with every weight tensor redrawn (same shapes, same spread per tensor)."""
    graph = onnx.load(str(model))
    rng = np.random.default_rng(seed)
    for init in graph.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype == np.float32 and values.ndim >= 2:
            fresh = rng.normal(0, float(values.std()) or 1.0, values.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(fresh, init.name))
    onnx.save(graph, str(out))
    return out


def label_shuffled(raw: Path, work: Path, seed: int = 0) -> Path:
    """A model trained on ``raw``'s files with their labels shuffled among them (class sizes
    kept): this project's prepare, train and export stages with its ``params.yaml``, run in
    ``work``. Such a model can only memorise, so its map must not point at the shapes."""
    files = sorted(p for p in raw.glob("*/*") if p.is_file())
    labels = [p.parent.name for p in files]
    random.Random(seed).shuffle(labels)
    for path, label in zip(files, labels, strict=True):
        dest = work / RAW_DATA / label / f"{path.parent.name}-{path.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    params = shutil.copy2(PARAMS_FILE, work / "params.yaml")
    env = {**os.environ, "PARAMS_FILE": str(params)}
    print(f"label-shuffled control: training on {len(files)} files in {work}", flush=True)
    for stage in ("prepare", "train", "export"):
        done = subprocess.run([sys.executable, "-m", f"model_preparation.{stage}"], cwd=work, env=env,
                              check=False)  # fmt: skip
        if done.returncode != 0:
            raise PipelineError(f"label-shuffled control: stage {stage} failed "
                                f"(exit {done.returncode})")  # fmt: skip
    return work / ONNX_MODEL


def evaluate(
    model: Path, raw: Path, limit: int, shuffled: bool = False, shuffled_model: Path | None = None
) -> dict:
    demo = load_settings(DemoParams, "demo")
    prep = load_settings(PrepareParams, "prepare")
    known = boxes(list(demo.classes), demo.images_per_class, demo.seed, demo.min_side,
                  demo.max_side)  # fmt: skip
    paths = [p for p in held_out(raw, prep) if f"{p.parent.name}/{p.name}" in known][:limit]
    if not paths:
        raise PipelineError(f"no held-out demo image in {raw}: this check needs the demo data "
                            "(make data)")  # fmt: skip
    images, boxes_px = [], []
    for path in paths:
        width, height, box = known[f"{path.parent.name}/{path.name}"]
        images.append(load_image(path, prep.image_size))
        boxes_px.append(letterboxed(box, width, height, prep.image_size))
    result = {"model": str(model), "goal": GOAL,
              "served": score(model, images, boxes_px, prep.image_size), "controls": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        controls = {"random_weights": randomized(model, Path(tmp) / "random.onnx")}
        if shuffled_model is not None:
            controls["label_shuffled"] = shuffled_model
        elif shuffled:
            controls["label_shuffled"] = label_shuffled(raw, Path(tmp) / "shuffled")
        for name, control in controls.items():
            result["controls"][name] = score(control, images, boxes_px, prep.image_size)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/model.onnx"))
    parser.add_argument("--limit", type=int, default=600, help="held-out images scored")
    parser.add_argument("--out", type=Path, default=REPORTS / "explain.json")
    parser.add_argument("--label-shuffled", action="store_true",
                        help="also train and score a label-shuffled control (minutes)")  # fmt: skip
    parser.add_argument("--label-shuffled-model", type=Path, default=None, metavar="ONNX",
                        help="score this label-shuffled control (trained before, e.g. by "
                        "label_shuffled()) instead of training one")  # fmt: skip
    args = parser.parse_args()
    if args.label_shuffled_model is not None and not args.label_shuffled_model.is_file():
        raise PipelineError(f"--label-shuffled-model: no file at {args.label_shuffled_model}")
    result = evaluate(args.model, RAW_DATA, args.limit, shuffled=args.label_shuffled,
                      shuffled_model=args.label_shuffled_model)  # fmt: skip
    write_json(args.out, result)
    s = result["served"]
    print(f"pointing game on {s['images']} held-out demo images: {s['pointing']:.3f} "
          f"(goal {GOAL}); mass inside the box {s['mass_inside']:.3f} vs {s['uniform_inside']:.3f} "
          "uniform")  # fmt: skip
    for name, c in result["controls"].items():
        verdict = "fails the check, as it must" if c["pointing"] < GOAL else "PASSES the check"
        print(f"control {name.replace('_', '-')}: pointing {c['pointing']:.3f}, mass "
              f"{c['mass_inside']:.3f}, {c['empty_maps']} maps without a positive cell "
              f"({verdict})")  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
