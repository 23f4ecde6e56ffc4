"""Seeded synthetic demo dataset: one folder of JPEGs per shape class, and outliers.

Each image has a random size and aspect ratio, a noisy random background and one shape of a
random contrasting colour, size, position and rotation, so the class is the shape and nothing
else. It is what ``make up`` and the tests train on; real photos replace ``data/raw`` unchanged.

``data/outliers/`` gets ``demo.outliers`` images drawn in the same style whose figure is none of
the classes (``OUTLIER_KINDS``: irregular blobs, rings, bars, long ellipses, crescents, strokes):
the train stage teaches the model to answer them with no class (outlier exposure, Hendrycks et
al., 2019). None is a shape the reference stage draws as a class the model never saw
(``SHAPES`` past the classes), so that set still measures what the model was not shown.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..common import OUTLIER_DATA, RAW_DATA, PipelineError, load_settings, run_cli

#: the classes ``make up`` trains on are the first three; the others are what the reference stage
#: draws as classes the model never saw (``reference.near_shapes``), or a class to add
SHAPES = ("circle", "square", "triangle", "cross", "star", "pentagon", "hexagon", "arrow")
#: figures of no class, for outlier exposure: none of them is one of ``SHAPES``
OUTLIER_KINDS = ("blob", "ring", "bar", "ellipse", "crescent", "stroke")


@dataclass(frozen=True)
class DemoParams:
    """params.yaml ``demo``."""

    classes: tuple[str, ...]
    images_per_class: int
    min_side: int
    max_side: int
    seed: int
    outliers: int  # images of no class written to data/outliers (0: none)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular-ish shape of radius ``r`` centred at (cx, cy), rotated by ``angle``."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "star":
        pts = [
            (
                (1.0 if i % 2 == 0 else 0.45) * math.cos(a),
                (1.0 if i % 2 == 0 else 0.45) * math.sin(a),
            )
            for i, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)
        ]
    elif shape in ("pentagon", "hexagon"):
        n = 5 if shape == "pentagon" else 6
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(n) * 2 * math.pi / n]
    elif shape == "arrow":
        pts = [(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)]
    elif shape == "cross":
        w = 0.33
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in pts]


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A background and a foreground colour whose brightness differs by at least 100."""
    while True:
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        if abs(float(bg.mean()) - float(fg.mean())) >= 100:
            return bg, (int(fg[0]), int(fg[1]), int(fg[2]))


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels


def render(shape: str, rng: np.random.Generator, min_side: int, max_side: int) -> Image.Image:
    """One random image of ``shape``."""
    return draw_shape(shape, rng, min_side, max_side)[0]


def draw_shape(
    shape: str, rng: np.random.Generator, min_side: int, max_side: int
) -> tuple[Image.Image, Box]:
    """One random image of ``shape`` and the shape's bounding box (what the explanation check
    scores a heatmap against)."""
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    bg, fg = _contrasting_colours(rng)
    noise = rng.normal(0, 10, (height, width, 3))
    canvas = np.clip(bg + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    r = float(rng.uniform(0.25, 0.45)) * min(width, height)
    cx = float(rng.uniform(r, width - r))
    cy = float(rng.uniform(r, height - r))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        return img, (cx - r, cy - r, cx + r, cy + r)
    points = _polygon(shape, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
    draw.polygon(points, fill=fg)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return img, (min(xs), min(ys), max(xs), max(ys))


def draw_outlier(kind: str, rng: np.random.Generator, min_side: int, max_side: int) -> Image.Image:
    """One image of ``kind`` (``OUTLIER_KINDS``) on a background drawn as the classes' are."""
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    bg, fg = _contrasting_colours(rng)
    canvas = np.clip(bg + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    r = float(rng.uniform(0.25, 0.45)) * side
    cx, cy = float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r))
    angle = float(rng.uniform(0, 2 * math.pi))
    back = (int(bg[0]), int(bg[1]), int(bg[2]))
    if kind == "blob":  # an irregular outline: 7–13 corners at random radii
        n = int(rng.integers(7, 14))
        corners = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.35, 1.0, n)
        draw.polygon([(cx + r * q * math.cos(a), cy + r * q * math.sin(a))
                      for q, a in zip(radii, corners, strict=True)], fill=fg)  # fmt: skip
    elif kind in ("ring", "crescent"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        inner = r * float(rng.uniform(0.45, 0.75))
        shift = 0.0 if kind == "ring" else r * float(rng.uniform(0.35, 0.6))
        ix, iy = cx + shift * math.cos(angle), cy + shift * math.sin(angle)
        if kind == "crescent":
            inner = r * float(rng.uniform(0.8, 1.0))
        draw.ellipse((ix - inner, iy - inner, ix + inner, iy + inner), fill=back)
    elif kind in ("bar", "ellipse"):  # long: far past what train.augment.stretch makes of a class
        aspect = float(rng.uniform(3.0, 7.0) if kind == "bar" else rng.uniform(2.0, 3.5))
        a, b = r, r / aspect
        if kind == "bar":
            corners = [(-a, -b), (a, -b), (a, b), (-a, b)]
        else:
            corners = [(a * math.cos(t), b * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48)]
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners],
                     fill=fg)  # fmt: skip
    elif kind == "stroke":  # a thick line through 3–5 random points
        pts = [(float(rng.uniform(cx - r, cx + r)), float(rng.uniform(cy - r, cy + r)))
               for _ in range(int(rng.integers(3, 6)))]  # fmt: skip
        draw.line(pts, fill=fg, width=max(2, int(side * rng.uniform(0.05, 0.12))), joint="curve")
    else:
        raise ValueError(f"unknown outlier kind {kind!r}; known: {', '.join(OUTLIER_KINDS)}")
    return img


def generate_outliers(
    out_dir: Path, count: int, seed: int, min_side: int = 96, max_side: int = 192
) -> int:
    """Write ``count`` JPEGs of figures of no class, the kinds in turn; deterministic."""
    rng = np.random.default_rng([seed, 1000])
    if count:
        out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        kind = OUTLIER_KINDS[i % len(OUTLIER_KINDS)]
        draw_outlier(kind, rng, min_side, max_side).save(
            out_dir / f"{kind}_{i:04d}.jpg", quality=90
        )
    return count


def generate(
    out_dir: Path,
    classes: list[str],
    images_per_class: int,
    seed: int,
    min_side: int = 96,
    max_side: int = 192,
) -> int:
    """Write ``images_per_class`` JPEGs per class; deterministic for a given seed."""
    written = 0
    for index, shape in enumerate(classes):
        rng = np.random.default_rng([seed, index])
        class_dir = out_dir / shape
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            render(shape, rng, min_side, max_side).save(
                class_dir / f"{shape}_{i:04d}.jpg", quality=90
            )
            written += 1
    return written


def boxes(
    classes: list[str], images_per_class: int, seed: int, min_side: int, max_side: int
) -> dict[str, tuple[int, int, Box]]:
    """``{"<class>/<file>": (width, height, box)}`` of what :func:`generate` writes with the
    same arguments (drawn again with the same seeds, nothing read from disk)."""
    found = {}
    for index, shape in enumerate(classes):
        rng = np.random.default_rng([seed, index])
        for i in range(images_per_class):
            img, box = draw_shape(shape, rng, min_side, max_side)
            found[f"{shape}/{shape}_{i:04d}.jpg"] = (img.width, img.height, box)
    return found


def main() -> None:
    params = load_settings(DemoParams, "demo")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", nargs="+", default=list(params.classes))
    parser.add_argument("--images-per-class", type=int, default=params.images_per_class)
    parser.add_argument("--outliers", type=int, default=params.outliers,
                        help="images of no class for data/outliers (0: none)")  # fmt: skip
    args = parser.parse_args()
    unknown = sorted(set(args.classes) - set(SHAPES))
    if unknown:
        raise PipelineError(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    n = generate(
        RAW_DATA,
        args.classes,
        args.images_per_class,
        params.seed,
        params.min_side,
        params.max_side,
    )
    print(f"demo data: wrote {n} images of {len(args.classes)} classes to {RAW_DATA}")
    if args.outliers:
        k = generate_outliers(OUTLIER_DATA, args.outliers, params.seed, params.min_side,
                              params.max_side)  # fmt: skip
        print(f"demo data: wrote {k} images of no class to {OUTLIER_DATA}")


if __name__ == "__main__":
    run_cli(main)
