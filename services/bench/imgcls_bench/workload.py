"""What every bench command measures on: the test JPEGs, the bench's own models, the sizes.

One home for them: ``python -m imgcls_bench`` and the commands that run one part alone
(``imgcls_bench.explain``, ``.lifecycle``, ``.batch``) import them from here, not from each
other."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from model_preparation.tools.demo_data import render

IMAGE_SIZES = {
    "320x240": (320, 240),
    "640x480": (640, 480),
    "1280x960": (1280, 960),
    "4000x3000": (4000, 3000),
}


def make_jpegs(sizes: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    out = {}
    for name, (w, h) in sizes.items():
        img = render("triangle", rng, min(w, h), min(w, h)).resize(
            (w, h), Image.Resampling.BILINEAR
        )
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


def served_size(params: Path = Path("params.yaml")) -> int:
    """The image size of the model ``make up`` serves (``prepare.image_size``)."""
    return int(yaml.safe_load(params.read_text(encoding="utf-8"))["prepare"]["image_size"])


def build_models(work: Path, size: int) -> dict:
    cmd = [sys.executable, "-m", "imgcls_bench.build", "models", str(work / f"models-{size}"),
           "--size", str(size)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes takes integers like 64,224, not {text!r}"
        ) from None
    if not sizes or min(sizes) < 16:
        raise argparse.ArgumentTypeError("--sizes needs image sizes of at least 16")
    return sizes
