"""Stage ``reference``: what the training data looks like to the model, so that the served model
can say when an input does not.

The score is a Mahalanobis distance (Lee et al., 2018, "A simple unified framework for detecting
out-of-distribution samples") in a space of the model's own features: the per-channel mean and
standard deviation over the image of one early layer's activations (``layer``; the end of
ResNet50V2's first stage by default). Early features describe what an image is made of (edges,
textures, colours); the penultimate embedding, trained only to tell the classes apart, hardly
separates unfamiliar inputs (docs/monitoring.md has the measured comparison). Features of
training images are projected on their ``components`` principal directions, and an input's score
is its squared distance to the nearest class mean under the pooled within-class covariance, per
dimension. An input is *familiar* when its score is at most ``threshold``, the ``quantile`` of
held-out in-distribution scores.

``publish`` appends this computation to each served graph as a second output, ``drift``, so Triton
computes it with the answer, for the very version that answers, FP32, INT8 and BF16 alike. The
stage reports, as DVC metrics, the held-out scores and how well the score separates them (ROC AUC)
from inputs unlike the training data: real photos (scikit-image's samples) and the held-out images
inverted.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from imgcls.preprocessing import letterbox_array

from .common import (
    DRIFT_REPORT,
    ONNX_MODEL,
    PREPARED,
    REFERENCE,
    PipelineError,
    Prepared,
    load_settings,
    run_cli,
    write_json,
)
from .onnx_utils import layer_tensor, session

EPS = 1e-3  # ridge on the covariance: a few training images do not span every direction


@dataclass(frozen=True)
class ReferenceParams:
    """params.yaml ``reference``."""

    layer: str  # whose activations are pooled into the features (a Keras layer name)
    components: int  # principal directions of the features kept
    quantile: float  # of held-out scores: above it, an input is unfamiliar
    max_images: int  # training images embedded (enough to estimate the covariance)
    batch_size: int


@dataclass(frozen=True)
class Reference:
    """``score(e) = min_c ||e @ A - b - a_c||² / k`` of the features ``e`` (``pool``): A projects
    and whitens, b centres, a_c are the class means in that space (``artifacts/reference.npz``)."""

    tensor: str  # the graph's tensor whose activations are pooled
    axes: tuple[int, int]  # its spatial axes: (1, 2) channels last, (2, 3) channels first
    projection: np.ndarray  # D × k
    offset: np.ndarray  # k
    class_means: np.ndarray  # C × k
    threshold: float

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        y = embeddings @ self.projection - self.offset
        d = ((y[:, None, :] - self.class_means[None]) ** 2).sum(-1)
        return d.min(1) / self.projection.shape[1]

    def save(self, path: Path) -> None:
        np.savez(path, tensor=np.array(self.tensor), axes=np.array(self.axes),
                 projection=self.projection, offset=self.offset,
                 class_means=self.class_means, threshold=np.float64(self.threshold))  # fmt: skip

    @property
    def md5(self) -> str:
        """Of its numbers: a changed reference makes a new served version."""
        digest = hashlib.md5(f"{self.tensor}|{self.axes}".encode())
        for part in (self.projection, self.offset, self.class_means, np.float64(self.threshold)):
            digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
        return digest.hexdigest()

    @classmethod
    def load(cls, path: Path) -> Reference:
        try:
            with np.load(path) as z:
                return cls(str(z["tensor"]), (int(z["axes"][0]), int(z["axes"][1])),
                           z["projection"], z["offset"], z["class_means"],
                           float(z["threshold"]))  # fmt: skip
        except (OSError, KeyError, ValueError) as exc:
            raise PipelineError(f"cannot read the drift reference {path} ({exc}): run the "
                                "reference stage (dvc repro reference)") from None  # fmt: skip


def embedder(model: Path, layer: str):
    """An ONNX Runtime session of ``model`` that also outputs ``layer``'s activations (the
    tensor's name, to give it)."""
    graph = onnx.load(str(model))
    name = layer_tensor(graph, layer)
    graph.graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    with tempfile.NamedTemporaryFile(suffix=".onnx") as tmp:
        onnx.save(graph, tmp.name)
        sess = session(Path(tmp.name))
    return sess, name


def spatial_axes(shape: tuple[int, ...]) -> tuple[int, int]:
    """The two equal (square input) spatial axes of an N×?×?×? activation."""
    if len(shape) == 4 and shape[1] == shape[2] != shape[3]:
        return (1, 2)
    if len(shape) == 4 and shape[2] == shape[3] != shape[1]:
        return (2, 3)
    raise PipelineError(f"cannot tell the spatial axes of an activation of shape {shape}: "
                        "choose another reference.layer")  # fmt: skip


def pool(activations: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    """Per channel: the mean and the standard deviation over the image (N × 2C), in float64."""
    a = activations.astype(np.float64)
    mean = a.mean(axes, keepdims=True)
    std = np.sqrt(((a - mean) ** 2).mean(axes))
    return np.concatenate([mean.reshape(len(a), -1), std], axis=1)


def features(sess, name: str, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, tuple]:
    """The pooled features of ``images``, and the spatial axes they were pooled over."""
    parts, axes = [], (1, 2)
    for i in range(0, len(images), batch_size):
        activations = sess.run([name], {sess.get_inputs()[0].name: images[i : i + batch_size]})[0]
        axes = spatial_axes(activations.shape)
        parts.append(pool(activations, axes))
    return np.concatenate(parts), axes


def fit(
    train: np.ndarray, labels: np.ndarray, components: int, tensor: str = "", axes=(1, 2)
) -> Reference:
    """Principal directions, then the pooled within-class covariance, whitened (no threshold)."""
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    k = min(components, vt.shape[0])
    z = (train - mean) @ vt[:k].T
    classes = np.unique(labels)
    means = np.stack([z[labels == c].mean(0) for c in classes])
    within = z - means[np.searchsorted(classes, labels)]
    cov = within.T @ within / max(len(z) - len(classes), 1) + EPS * np.eye(k)
    whiten = np.linalg.cholesky(np.linalg.inv(cov))  # P = L Lᵀ: ||x @ L||² = x P xᵀ
    projection = vt[:k].T @ whiten
    return Reference(tensor, tuple(axes), projection, mean @ projection, means @ whiten, 0.0)


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page",
          "immunohistochemistry", "hubble_deep_field", "horse", "clock", "text", "retina",
          "colorwheel", "grass", "gravel", "brick", "cell")  # fmt: skip
CROPS = 4  # per photo, besides the whole: 50–90 % of each side, at seeded places


def photos(size: int) -> np.ndarray:
    """scikit-image's sample photos (shipped with the package) and crops of them, letterboxed
    like any input: inputs unlike the training data, unless the training data is photos."""
    from skimage import data

    rng = np.random.default_rng(0)
    found = []
    for name in PHOTOS:
        try:
            image = _rgb(np.asarray(getattr(data, name)()))
        except Exception:  # a sample that must be downloaded: not here
            continue
        found.append(letterbox_array(image, size))
        h, w = image.shape[:2]
        for _ in range(CROPS):
            ch, cw = (int(s * rng.uniform(0.5, 0.9)) for s in (h, w))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            found.append(letterbox_array(np.ascontiguousarray(image[y : y + ch, x : x + cw]), size))
    return np.stack(found)


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        image = (255 * image).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def auc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside score > an inside score), ties counting half: the ROC AUC."""
    greater = (outside[:, None] > inside[None]).mean()
    ties = (outside[:, None] == inside[None]).mean()
    return float(greater + ties / 2)


def build(model: Path, prepared: Path, out: Path, report: Path, params: ReferenceParams) -> dict:
    from .tfdata import load_arrays  # TensorFlow: only this stage needs it, not publish

    meta = Prepared.read(prepared)
    train_images, train_labels = load_arrays(prepared, "train", meta.image_size)
    if len(train_images) > params.max_images:
        pick = np.random.default_rng(0).choice(len(train_images), params.max_images, replace=False)
        train_images, train_labels = train_images[np.sort(pick)], train_labels[np.sort(pick)]
    val_images, _ = load_arrays(prepared, "val", meta.image_size)
    sess, name = embedder(model, params.layer)
    bs = params.batch_size
    train, axes = features(sess, name, train_images, bs)
    ref = fit(train, train_labels, params.components, name, axes)
    held_out = ref.score(features(sess, name, val_images, bs)[0])
    ref = replace(ref, threshold=float(np.quantile(held_out, params.quantile)))
    ref.save(out)
    inverted = ref.score(features(sess, name, 255 - val_images, bs)[0])
    result = {
        "layer": params.layer,
        "threshold": ref.threshold,
        "components": int(ref.projection.shape[1]),
        "held_out": _summary(held_out, ref.threshold),
        "inverted_held_out": {**_summary(inverted, ref.threshold), "auc": auc(held_out, inverted)},
    }
    try:
        real = ref.score(features(sess, name, photos(meta.image_size), bs)[0])
        result["photos"] = {**_summary(real, ref.threshold), "auc": auc(held_out, real)}
    except ImportError:
        result["photos"] = None  # scikit-image is not installed: no photos to test against
    write_json(report, result)
    if not np.isfinite(held_out).all():
        raise PipelineError("the reference gives non-finite scores on held-out images")
    return result


def _summary(scores: np.ndarray, threshold: float) -> dict:
    return {
        "count": len(scores),
        "median": float(np.median(scores)),
        "unfamiliar": float(np.mean(scores > threshold)),
    }


def main() -> None:
    params = load_settings(ReferenceParams, "reference")
    r = build(ONNX_MODEL, PREPARED, REFERENCE, DRIFT_REPORT, params)
    photos_auc = f", real photos ROC AUC {r['photos']['auc']:.3f}" if r["photos"] else ""
    print(
        f"reference: threshold {r['threshold']:.3f} ({params.quantile:.0%} of held-out images "
        f"familiar); inverted held-out ROC AUC {r['inverted_held_out']['auc']:.3f}{photos_auc}"
    )


if __name__ == "__main__":
    run_cli(main)
