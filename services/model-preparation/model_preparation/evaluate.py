"""Stage ``evaluate``: the held-out split through ONNX Runtime — the artifact that is served."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import (
    METRICS_REPORT,
    ONNX_MODEL,
    PREPARED,
    REPORTS,
    Prepared,
    load_settings,
    run_cli,
    write_json,
)
from .onnx_utils import predict, session
from .records import load_arrays


@dataclass(frozen=True)
class EvaluateParams:
    """params.yaml ``evaluate``."""

    batch_size: int


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (actual, predicted), 1)
    return matrix


def metrics_from(matrix: np.ndarray, labels: list[str]) -> dict:
    """Accuracy and per-class precision / recall / support from a confusion matrix."""
    total = int(matrix.sum())
    per_class = {}
    for i, name in enumerate(labels):
        tp, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
        per_class[name] = {
            "precision": float(tp / predicted) if predicted else 0.0,
            "recall": float(tp / support) if support else 0.0,
            "support": int(support),
        }
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "num_images": total,
        "per_class": per_class,
    }


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set_title("Confusion matrix (held-out split, ONNX Runtime)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(model: Path, prepared: Path, out_dir: Path, params: EvaluateParams) -> dict:
    meta = Prepared.read(prepared)
    labels = list(meta.labels)
    images, actual = load_arrays(prepared, "val", meta.image_size)
    probs = predict(session(model), images, params.batch_size)
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros((0,), np.int64)
    matrix = confusion_matrix(actual, predicted, len(labels))
    result = metrics_from(matrix, labels)
    write_json(out_dir / METRICS_REPORT.name, result)
    write_json(
        out_dir / "confusion.json",
        [
            {"actual": labels[a], "predicted": labels[p]}
            for a, p in zip(actual, predicted, strict=True)
        ],
    )
    plot_confusion(matrix, labels, out_dir / "confusion.png")
    return result


def main() -> None:
    params = load_settings(EvaluateParams, "evaluate")
    result = evaluate(ONNX_MODEL, PREPARED, REPORTS, params)
    print(f"evaluate: accuracy {result['accuracy']:.4f} on {result['num_images']} held-out images")
    for name, m in result["per_class"].items():
        print(
            f"  {name:>12}: precision {m['precision']:.3f} recall {m['recall']:.3f} (n={m['support']})"
        )


if __name__ == "__main__":
    run_cli(main)
