"""What augmentation buys under shift, on the suite's own trainings (no training of its own).

The tiny model trains without augmentation; the grown project's model is fine-tuned from it with
`train.augment.zoom_out` (tests/builds.py ``GROWN_PARAMS``). Both answer the tiny project's
held-out files of the three classes they share, shrunk on their canvas by the shift suite's own
``scale`` shift: the augmented one must hold up clearly better. The fine-tuning alone does not
explain it. Measured on these files (2026-12-04, the project's 2-core Xeon), scale 0.75 / 0.5:
- the tiny model, no augmentation: 0.816 / 0.451 (clean 0.902);
- fine-tuned without zoom_out (the control): 0.872 / 0.493, +0.098 together;
- fine-tuned with zoom_out 0.7 (the grown project): 0.932 / 0.602, +0.267 together.
The test asks for +0.18 together: above what the fine-tuning alone gives, with room for
another CPU's numerics. (At 0.35, beyond zoom_out 0.7's reach of 0.59, neither gains.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
SEVERITIES = (0.75, 0.5)  # the object at 3/4 and 1/2 of its side: zoom_out 0.7 reaches 0.59


def _accuracies(project: Path, model_project: Path) -> list[float]:
    """``model_project``'s FP32 model on ``project``'s held-out files: clean, then each severity
    of the scale shift (answers compared by label name: the two models' label lists differ)."""
    from imgcls.preprocessing import letterbox_image
    from model_preparation.common import Prepared
    from model_preparation.onnx_utils import predict, session
    from model_preparation.shift import load_picture, sample_sources, shifted

    prepared = project / "artifacts/prepared"
    meta = Prepared.read(prepared)
    size = meta.image_size
    sources = sample_sources(prepared, 400, seed=42)
    pictures = [load_picture(project / path, size) for path, _ in sources]
    truth = np.asarray([meta.labels[label] for _, label in sources])
    labels = np.asarray(Prepared.read(model_project / "artifacts/prepared").labels)
    model = session(model_project / "artifacts/model.onnx")
    batches = [np.stack([letterbox_image(p, (size, size)) for p in pictures])]
    for severity in SEVERITIES:
        rngs = (np.random.default_rng([7, i]) for i in range(len(pictures)))
        batches.append(np.stack([shifted(p, "scale", severity, size, rng)
                                 for p, rng in zip(pictures, rngs, strict=True)]))  # fmt: skip
    return [float(np.mean(labels[predict(model, x).argmax(1)] == truth)) for x in batches]


def test_a_model_trained_with_zoom_out_holds_up_better_on_the_scale_shift(
    tiny_project, grown_project
):
    plain = _accuracies(tiny_project, tiny_project)
    zoomed = _accuracies(tiny_project, grown_project)
    print(f"\nclean, scale {SEVERITIES}: without augmentation {plain}, with zoom_out {zoomed}")
    assert zoomed[0] >= plain[0] - 0.05, (plain, zoomed)  # it did not buy robustness with accuracy
    assert sum(zoomed[1:]) - sum(plain[1:]) >= 0.18, (plain, zoomed)
    assert all(z > p for z, p in zip(zoomed[1:], plain[1:], strict=True)), (plain, zoomed)
