"""Real scans for the open-set check: scikit-learn's handwritten digits (1 797 scans of 8×8 pixels,
shipped with the package) written as a dataset of some digits, with the others kept apart as
classes the model never sees.

``python -m model_preparation.tools.digits --unknown 8 9`` writes the known digits to
``data/raw/<digit>/`` (one PNG each, enlarged to ``--side`` pixels, dark ink on white like a
scan) and the unknown ones to ``data/unknown/<digit>/``, where the ``reference`` stage takes them
as its near set: the classic open-set setup, on real data. ``dvc repro`` then trains and measures
as on any data (docs/monitoring.md has the figures).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ..common import RAW_DATA, UNKNOWN_DATA, PipelineError, run_cli

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def scans() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 images (0 white … 255 ink) and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PipelineError("scikit-learn is not installed: pip install scikit-learn") from None
    digits = load_digits()
    return (digits.images * (255.0 / 16.0)).round().astype(np.uint8), digits.target


def write(images: np.ndarray, labels: np.ndarray, unknown: set[int], side: int,
          raw: Path = RAW_DATA, apart: Path = UNKNOWN_DATA) -> dict[str, int]:  # fmt: skip
    """One PNG per scan: known digits under ``raw``, the ``unknown`` ones under ``apart``."""
    counts: dict[str, int] = {}
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = NAMES[int(label)]
        folder = (apart if int(label) in unknown else raw) / name
        folder.mkdir(parents=True, exist_ok=True)
        ink = Image.fromarray(255 - image).resize((side, side), Image.Resampling.BILINEAR)
        ink.convert("RGB").save(folder / f"{name}_{i:04d}.png")
        counts[name] = counts.get(name, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--unknown", nargs="+", type=int, default=[8, 9],
                        help="digits kept apart as classes the model never sees")  # fmt: skip
    parser.add_argument("--side", type=int, default=32, help="pixels of each written scan")
    args = parser.parse_args()
    unknown = set(args.unknown)
    if not unknown or not unknown <= set(range(10)) or len(unknown) > 8:
        raise PipelineError("--unknown: between one and eight digits of 0–9")
    if args.side < 8:
        raise PipelineError("--side must be at least 8")
    if any(p.exists() and any(p.iterdir()) for p in (RAW_DATA, UNKNOWN_DATA)):
        raise PipelineError(f"{RAW_DATA} or {UNKNOWN_DATA} holds files already: move them away "
                            "first (the digits replace the dataset, they do not mix with it)")  # fmt: skip
    counts = write(*scans(), unknown, args.side)
    known = sum(n for d, n in counts.items() if NAMES.index(d) not in unknown)
    print(
        f"digits: {known} scans of {10 - len(unknown)} digits in {RAW_DATA}, "
        f"{sum(counts.values()) - known} of {len(unknown)} unknown digits in {UNKNOWN_DATA}"
    )


if __name__ == "__main__":
    run_cli(main)
