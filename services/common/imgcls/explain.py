"""Occlusion maps: which parts of the image the answer depends on, for any served model.

A square patch (a quarter of the side) is slid over the image in steps of an eighth of the side;
each position is one copy of the image with that patch filled with the image's mean colour. All
copies go through the very model that answers, as one batch (through Triton in the API, through
ONNX Runtime in the pipeline): the map is exact for FP32, INT8 and BF16 alike, needs no gradient
and no export change, and costs ``positions + 1`` forward passes (49 + 1). A cell of the
``GRID × GRID`` map is how much the class's probability drops, averaged over the patches that
cover it: high where hiding the pixels takes the answer away.

Why occlusion rather than CAM (no extra pass, but ResNet50V2's last feature map is 2×2 at 64²) or
Grad-CAM (needs a gradient graph per precision): docs/explain.md has the measured comparison.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

GRID = 8  # cells per side of the returned map (each an eighth of the image side)
MAX_IMAGES = 4  # per POST /explain: each image costs 50 forward passes
PATCH_CELLS = 2  # the patch covers 2×2 cells: a quarter of the side
# A drop of a float32 probability smaller than this is rounding, not the model: a model whose
# answer does not depend on the image (the random-weight control) gives drops of 1e-7, and
# their signs, order and so the map's peak change with the runtime's thread count.
NOISE = 1e-6


@dataclass(frozen=True)
class Occlusion:
    """The masked copies of one ``H×W×3`` image, and the map made from their answers."""

    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < GRID or self.width < GRID:
            raise ValueError(f"an image of at least {GRID}×{GRID} pixels is needed")

    @property
    def positions(self) -> list[tuple[int, int]]:
        """Top-left cell of each patch position."""
        last = GRID - PATCH_CELLS
        return [(r, c) for r in range(last + 1) for c in range(last + 1)]

    def _bounds(self, cell: int, side: int) -> int:
        return round(cell * side / GRID)

    def batch(self, pixels: np.ndarray) -> np.ndarray:
        """The image itself first, then one masked copy per position (uint8, N×H×W×3)."""
        fill = pixels.reshape(-1, pixels.shape[-1]).mean(axis=0).round().astype(np.uint8)
        copies = np.repeat(pixels[None], len(self.positions) + 1, axis=0)
        for i, (r, c) in enumerate(self.positions, start=1):
            y0, y1 = self._bounds(r, self.height), self._bounds(r + PATCH_CELLS, self.height)
            x0, x1 = self._bounds(c, self.width), self._bounds(c + PATCH_CELLS, self.width)
            copies[i, y0:y1, x0:x1] = fill
        return copies

    def heatmap(self, probabilities: np.ndarray) -> np.ndarray:
        """``GRID×GRID`` drops of the class's probability; ``probabilities`` is the class's column
        for the batch of :meth:`batch` (the unmasked image first)."""
        drops = probabilities[0] - probabilities[1:]
        drops = np.where(np.abs(drops) < NOISE, 0.0, drops)
        total = np.zeros((GRID, GRID))
        count = np.zeros((GRID, GRID))
        for drop, (r, c) in zip(drops, self.positions, strict=True):
            total[r : r + PATCH_CELLS, c : c + PATCH_CELLS] += drop
            count[r : r + PATCH_CELLS, c : c + PATCH_CELLS] += 1
        return total / count


def peak(grid: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's highest cell."""
    r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(r), int(c)


def cell_box(row: int, col: int, height: int, width: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in pixels of a cell."""
    return (col * width / GRID, row * height / GRID, (col + 1) * width / GRID,
            (row + 1) * height / GRID)  # fmt: skip


def points_inside(grid: np.ndarray, box: tuple[float, float, float, float], size: int) -> bool:
    """The pointing game: the centre of the map's peak cell lies inside ``box`` (x0, y0, x1, y1
    in the pixels of the ``size × size`` model input). A map without a positive cell (hiding no
    part of the image lowers the answer) points nowhere."""
    if grid.max() <= 0:
        return False
    x0, y0, x1, y1 = cell_box(*peak(grid), size, size)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def mass_inside(grid: np.ndarray, box: tuple[float, float, float, float], size: int) -> float:
    """Share of the map's positive mass inside ``box``, each cell weighted by its overlap."""
    positive = np.clip(grid, 0, None)
    if positive.sum() <= 0:
        return 0.0
    return float((positive * _overlap(box, size)).sum() / positive.sum())


def uniform_inside(box: tuple[float, float, float, float], size: int) -> float:
    """What a uniform map would put inside ``box``: its share of the image."""
    return float(_overlap(box, size).mean())


def _overlap(box: tuple[float, float, float, float], size: int) -> np.ndarray:
    edges = np.arange(GRID + 1) * size / GRID
    wx = np.clip(np.minimum(edges[1:], box[2]) - np.maximum(edges[:-1], box[0]), 0, None)
    wy = np.clip(np.minimum(edges[1:], box[3]) - np.maximum(edges[:-1], box[1]), 0, None)
    return np.outer(wy, wx) / (size / GRID) ** 2


def overlay_png(pixels: np.ndarray, grid: np.ndarray, alpha: float = 0.55) -> bytes:
    """The image with the map's positive part in red over it (darker where it does not matter)."""
    positive = np.clip(grid, 0, None)
    scale = positive.max()
    weight = positive / scale if scale > 0 else positive
    h, w = pixels.shape[:2]
    mask = np.asarray(Image.fromarray((weight * 255).astype(np.uint8)).resize((w, h),
                      Image.Resampling.BILINEAR), dtype=np.float64)[..., None] / 255  # fmt: skip
    red = np.array([230.0, 30.0, 30.0])
    base = pixels.astype(np.float64) * (1 - alpha * (1 - mask) * 0.6)
    out = base * (1 - alpha * mask) + red * alpha * mask
    buf = io.BytesIO()
    Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
