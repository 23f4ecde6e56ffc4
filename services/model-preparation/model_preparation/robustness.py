"""Stage ``robustness``: held-out accuracy of the served ONNX models under FGSM and PGD (L∞).

White-box attacks: the gradients come from the trained Keras model (``tf.GradientTape``, inference
mode); the adversarial images are then scored by ONNX Runtime on the FP32 and the INT8 files that
Triton serves, so the numbers are the served models' numbers. ε is in pixel units (0–255), and an
adversarial image is a valid image: integer pixels in 0–255, none further than ε from the
original (a sub-pixel perturbation does not exist in a uint8 image, so it is rounded toward the
original). ε = 0 scores the untouched split with the evaluate stage's code, so that point equals
the evaluate stage's accuracy exactly.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import (
    INT8_MODEL,
    KERAS_MODEL,
    ONNX_MODEL,
    PREPARED,
    ROBUSTNESS_ATTENTION,
    ROBUSTNESS_CURVE,
    ROBUSTNESS_PLOT,
    ROBUSTNESS_REPORT,
    PipelineError,
    Prepared,
    load_settings,
    quiet_tensorflow,
    run_cli,
    write_json,
)
from .onnx_utils import predict, session
from .records import load_arrays


@dataclass(frozen=True)
class RobustnessParams:
    """params.yaml ``robustness``."""

    epsilons: tuple[float, ...]  # L∞ budgets in pixel units (0–255); 0 = clean
    pgd_steps: int
    pgd_step: float  # PGD step size as a fraction of ε
    pgd_random_start: bool
    gradient_batch_size: int
    batch_size: int  # ONNX Runtime scoring, as the evaluate stage's
    seed: int  # PGD's random start

    def __post_init__(self) -> None:
        if not self.epsilons or any(e < 0 or e > 255 for e in self.epsilons):
            raise PipelineError("robustness.epsilons: a list of budgets between 0 and 255")
        if min(self.pgd_steps, self.gradient_batch_size, self.batch_size) < 1 or self.pgd_step <= 0:
            raise PipelineError(
                "robustness: pgd_steps, pgd_step and the batch sizes must be positive"
            )


def float_input_model(model):
    """The same layers (shared weights) behind a float32 input: a uint8 input has no gradient."""
    quiet_tensorflow()
    import keras

    inputs = keras.Input(model.input_shape[1:], dtype="float32")
    x = inputs
    for layer in model.layers[1:]:
        x = layer(x)
    return keras.Model(inputs, x)


def input_gradient(model, batch_size: int = 200):
    """``direction(images, labels)``: sign of d(cross-entropy)/d(pixels) per image, computed in
    inference mode, ``batch_size`` images at a time."""
    import tensorflow as tf

    @tf.function
    def grad(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            probs = model(images, training=False)
            loss = tf.keras.losses.sparse_categorical_crossentropy(labels, probs)
        return tf.sign(tape.gradient(loss, images))

    def direction(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        parts = [
            grad(
                tf.constant(images[i : i + batch_size], tf.float32),
                tf.constant(labels[i : i + batch_size], tf.int32),
            ).numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros_like(images, np.float32)

    return direction


def quantise(original: np.ndarray, adversarial: np.ndarray, eps: float) -> np.ndarray:
    """Back to a valid uint8 image: within ε of the original (rounded toward it), in 0–255."""
    delta = np.clip(adversarial - original, -eps, eps)
    return np.clip(original + np.trunc(delta), 0, 255).astype(np.uint8)


def fgsm(images: np.ndarray, direction: np.ndarray, eps: float) -> np.ndarray:
    """One step of ε along the gradient's sign at the clean images (Goodfellow et al.)."""
    x0 = images.astype(np.float32)
    return quantise(x0, x0 + eps * direction, eps)


def pgd(
    grad,
    images: np.ndarray,
    labels: np.ndarray,
    eps: float,
    steps: int,
    step: float,
    first: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Signed-gradient steps of ``step``·ε, each projected back into the ε-ball and 0–255.

    With ``rng``, Madry et al.'s random start; without, the first step starts at the clean
    images, where ``first`` (the clean images' gradient sign, shared with FGSM) saves a pass.
    """
    x0 = images.astype(np.float32)

    def project(x: np.ndarray) -> np.ndarray:
        return np.clip(x0 + np.clip(x - x0, -eps, eps), 0, 255)

    if rng is not None:
        x = project(x0 + rng.uniform(-eps, eps, x0.shape).astype(np.float32))
    else:
        x = project(x0 + step * eps * (grad(x0, labels) if first is None else first))
        steps -= 1
    for _ in range(steps):
        x = project(x + step * eps * grad(x, labels))
    return quantise(x0, x, eps)


EXAMPLES = 4  # adversarial examples shown with their occlusion maps


def robustness(
    keras_path: Path,
    onnx_models: dict[str, Path],
    prepared: Path,
    params: RobustnessParams,
    attention: Path | None = None,
) -> list[dict]:
    """One row per ε: accuracy of each served model under each attack; with ``attention``, a
    picture of the strongest attack's first successes on the FP32 model, clean and attacked,
    each with its occlusion map (what the answer depends on, ``imgcls.explain``)."""
    from .pixel_layers import load_model

    meta = Prepared.read(prepared)
    images, labels = load_arrays(prepared, "val", meta.image_size)
    model = float_input_model(load_model(keras_path))
    grad = input_gradient(model, params.gradient_batch_size)
    sessions = {name: session(path) for name, path in onnx_models.items()}
    rng = np.random.default_rng(params.seed) if params.pgd_random_start else None
    first = grad(images.astype(np.float32), labels)  # one pass serves every FGSM ε

    def accuracy(name: str, x: np.ndarray) -> float:
        predicted = predict(sessions[name], x, params.batch_size).argmax(axis=1)
        return float((predicted == labels).mean())

    rows = []
    for eps in sorted(set(params.epsilons)):
        row: dict = {"epsilon": eps}
        if eps == 0:  # both curves start at the clean accuracy, scored once
            clean = {name: accuracy(name, images) for name in sessions}
            row.update({f"{k}_{n}": clean[n] for k in ("fgsm", "pgd") for n in sessions})
        else:
            steps, size = params.pgd_steps, params.pgd_step
            for kind, x in (
                ("fgsm", fgsm(images, first, eps)),
                ("pgd", pgd(grad, images, labels, eps, steps, size, first, rng)),
            ):
                row.update({f"{kind}_{name}": accuracy(name, x) for name in sessions})
            strongest = (eps, x)  # PGD at the largest ε, once the loop ends
        rows.append(row)
        scores = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epsilon")
        print(f"robustness: ε={eps:g} {scores}", flush=True)
    if attention is not None and max(params.epsilons) > 0:
        meta_labels = Prepared.read(prepared).labels
        attention_picture(sessions["fp32"], images, labels, *strongest, meta_labels, attention)
    return rows


def attention_picture(
    sess, images: np.ndarray, labels: np.ndarray, eps: float, attacked: np.ndarray,
    names: tuple[str, ...], path: Path,
) -> None:  # fmt: skip
    """Up to ``EXAMPLES`` images the attack turned from right to wrong: each clean and attacked,
    with the occlusion map of the class the model gave it."""
    from imgcls.explain import Occlusion, overlay_png

    clean = predict(sess, images).argmax(axis=1)
    fooled = predict(sess, attacked).argmax(axis=1)
    picked = np.flatnonzero((clean == labels) & (fooled != labels))[:EXAMPLES]
    occlusion = Occlusion(*images.shape[1:3])
    panels = []
    for i in picked:
        for x, cls in ((images[i], clean[i]), (attacked[i], fooled[i])):
            grid = occlusion.heatmap(predict(sess, occlusion.batch(x))[:, cls])
            panels.append((overlay_png(x, grid), names[cls]))
    _save_grid(panels, eps, path)


def _save_grid(panels: list[tuple[bytes, str]], eps: float, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = max(1, len(panels) // 2)
    fig, axes = plt.subplots(rows, 2, figsize=(4.4, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (png, label) in enumerate(panels):
        ax = axes[k // 2][k % 2]
        ax.imshow(Image.open(io.BytesIO(png)))
        ax.set_title(f"{'clean' if k % 2 == 0 else f'PGD ε={eps:g}'}: {label}", fontsize=8)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no image was turned from right to wrong", ha="center")
    fig.suptitle("What the FP32 model looked at (red), before and after the attack", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(rows: list[dict], num_images: int, params: RobustnessParams) -> None:
    with open(ROBUSTNESS_CURVE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(
        ROBUSTNESS_REPORT,
        {
            "num_images": num_images,
            "pgd_steps": params.pgd_steps,
            "accuracy": {
                f"eps_{r['epsilon']:g}": {k: v for k, v in r.items() if k != "epsilon"}
                for r in rows
            },
        },
    )
    plot(rows, ROBUSTNESS_PLOT)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    eps = [r["epsilon"] for r in rows]
    for key in (k for k in rows[0] if k != "epsilon"):
        attack, model = key.split("_", 1)
        ax.plot(
            eps,
            [r[key] for r in rows],
            marker="o",
            linestyle="-" if attack == "pgd" else "--",
            label=f"{attack.upper()} → {model.upper()} ONNX",
        )
    ax.set_xlabel("ε (L∞, pixel units of 255)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Adversarial robustness of the served models")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    params = load_settings(RobustnessParams, "robustness")
    models = {"fp32": ONNX_MODEL, "int8": INT8_MODEL}
    rows = robustness(KERAS_MODEL, models, PREPARED, params, ROBUSTNESS_ATTENTION)
    num = Prepared.read().num_val
    write_outputs(rows, int(num), params)
    print(f"robustness: curve in {ROBUSTNESS_CURVE}, plot in {ROBUSTNESS_PLOT}, maps of "
          f"adversarial examples in {ROBUSTNESS_ATTENTION}")  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
