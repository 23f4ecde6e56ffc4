"""How good the served model's explanations are, measured on the demo data, whose generator knows
where each shape is (``demo_data.boxes``).

    python -m model_preparation.tools.pointing [--model model_repository/resnet50v2/1/model.onnx]
                                               [--limit 600] [--out artifacts/reports/explain.json]

For each held-out image (prepare's own split) the occlusion map (``imgcls.explain``, the very
computation ``POST /explain`` makes through Triton) of the predicted class is scored: the
*pointing game* (the map's peak cell lies inside the shape's bounding box) and the share of the
map's positive mass inside the box, against what a uniform map would put there. The same is
measured on a copy of the model with random weights: an explanation that does not depend on the
model would score as well there. Not a DVC stage: it needs the demo data's generator
(``params.yaml`` ``demo``), so it is a check of the method, not of any dataset.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from imgcls.explain import Occlusion, mass_inside, points_inside, uniform_inside
from imgcls.params import load_settings
from imgcls.preprocessing import ImageError, load_image
from imgcls.runtimes import predict

from ..common import RAW_DATA, REPORTS, PipelineError, run_cli, write_json
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
    return [s.path for s in split(samples, params.val_fraction, params.seed)[1]]


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
    hits, mass, uniform = [], [], []
    for pixels, box in zip(images, boxes_px, strict=True):
        probs = predict(sess, occlusion.batch(pixels), batch_size=64)
        grid = occlusion.heatmap(probs[:, int(np.argmax(probs[0]))])
        hits.append(points_inside(grid, box, size))
        mass.append(mass_inside(grid, box, size))
        uniform.append(uniform_inside(box, size))
    return {"images": len(images), "pointing": float(np.mean(hits)),
            "mass_inside": float(np.mean(mass)), "uniform_inside": float(np.mean(uniform))}  # fmt: skip


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


def evaluate(model: Path, raw: Path, limit: int) -> dict:
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
              "served": score(model, images, boxes_px, prep.image_size)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        noise = randomized(model, Path(tmp) / "random.onnx")
        result["random_weights"] = score(noise, images, boxes_px, prep.image_size)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/model.onnx"))
    parser.add_argument("--limit", type=int, default=600, help="held-out images scored")
    parser.add_argument("--out", type=Path, default=REPORTS / "explain.json")
    args = parser.parse_args()
    result = evaluate(args.model, RAW_DATA, args.limit)
    write_json(args.out, result)
    s, r = result["served"], result["random_weights"]
    print(f"pointing game on {s['images']} held-out demo images: {s['pointing']:.3f} "
          f"(goal {GOAL}); mass inside the box {s['mass_inside']:.3f} vs {s['uniform_inside']:.3f} "
          f"uniform; random weights: pointing {r['pointing']:.3f}, mass {r['mass_inside']:.3f}")  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
