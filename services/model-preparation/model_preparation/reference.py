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

The second question, "is this one of the classes the model knows?", is answered from the
penultimate features and the logits (``ood.py``). The stage fits every method of ``ood.METHODS`` on
the same training images and scores each on held-out images of the known classes against three
kinds of inputs the model cannot know: **near** (shapes of classes it was never taught, drawn in
the demo's own style, where the labels are demo shapes), **photos** (scikit-image's samples and
crops), and **flat** colours and pure **noise**. The table (AUROC, FPR at 95 % TPR, share flagged
at the served threshold) is the DVC metric ``ood.json``; ``reference.unknown.method: auto`` serves
the method with the best near AUROC (photos where there is no near set), and its threshold flags
``false_flag_rate`` of held-out images. ``publish`` appends it to each graph as ``unknown``.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from imgcls.preprocessing import letterbox_array, load_image

from . import ood
from .common import (
    DRIFT_REPORT,
    ONNX_MODEL,
    OOD_REPORT,
    PREPARED,
    REFERENCE,
    UNKNOWN_DATA,
    PipelineError,
    Prepared,
    load_settings,
    run_cli,
    write_json,
)
from .onnx_utils import head_tensors, layer_tensor, session

EPS = 1e-3  # ridge on the covariance: a few training images do not span every direction


@dataclass(frozen=True)
class ReferenceParams:
    """params.yaml ``reference``."""

    layer: str  # whose activations are pooled into the features (a Keras layer name)
    components: int  # principal directions of the features kept
    quantile: float  # of held-out scores: above it, an input is unfamiliar
    max_images: int  # training images embedded (enough to estimate the covariance)
    batch_size: int
    unknown: ood.UnknownParams  # the unknown-class score: its method, threshold and sets


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
    unknown: ood.Scorer | None = None  # the served unknown-class score (``ood.py``)
    unknown_threshold: float | None = None  # above it: not a class the model knows

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        y = embeddings @ self.projection - self.offset
        d = ((y[:, None, :] - self.class_means[None]) ** 2).sum(-1)
        return d.min(1) / self.projection.shape[1]

    def save(self, path: Path) -> None:
        np.savez(path, tensor=np.array(self.tensor), axes=np.array(self.axes),
                 projection=self.projection, offset=self.offset,
                 class_means=self.class_means, threshold=np.float64(self.threshold),
                 **self._unknown_arrays())  # fmt: skip

    def _unknown_arrays(self) -> dict[str, np.ndarray]:
        u = self.unknown
        if u is None or self.unknown_threshold is None:
            return {}
        return {"unknown_method": np.array(u.method), "unknown_weight": u.head.weight,
                "unknown_bias": u.head.bias,
                "unknown_threshold": np.float64(self.unknown_threshold),
                **{f"unknown__{k}": v for k, v in u.consts.items()}}  # fmt: skip

    @property
    def md5(self) -> str:
        """Of its numbers: a changed reference makes a new served version."""
        digest = hashlib.md5(f"{self.tensor}|{self.axes}".encode())
        for part in (self.projection, self.offset, self.class_means, np.float64(self.threshold)):
            digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
        for key, part in sorted(self._unknown_arrays().items()):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()

    @classmethod
    def load(cls, path: Path) -> Reference:
        try:
            with np.load(path) as z:
                unknown, limit = None, None
                if "unknown_method" in z:
                    consts = {k[len("unknown__"):]: z[k] for k in z.files
                              if k.startswith("unknown__")}  # fmt: skip
                    head = ood.Head(z["unknown_weight"], z["unknown_bias"])
                    unknown = ood.Scorer(str(z["unknown_method"]), head, consts)
                    limit = float(z["unknown_threshold"])
                return cls(str(z["tensor"]), (int(z["axes"][0]), int(z["axes"][1])),
                           z["projection"], z["offset"], z["class_means"],
                           float(z["threshold"]), unknown, limit)  # fmt: skip
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


def head_outputs(model: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The penultimate features and the logits ``model``'s own graph computes for ``images``
    (an INT8 graph's own, quantized)."""
    graph = onnx.load(str(model))
    head = head_tensors(graph)
    for name in (head.features, head.logits):
        graph.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    with tempfile.NamedTemporaryFile(suffix=".onnx") as tmp:
        onnx.save(graph, tmp.name)
        sess = session(Path(tmp.name))
    f, z = sess.run([head.features, head.logits], {sess.get_inputs()[0].name: images})
    return f.reshape(len(images), -1), z


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


def build(model: Path, prepared: Path, out: Path, report: Path, params: ReferenceParams,
          ood_report: Path | None = None, unknown_dir: Path | None = None) -> dict:  # fmt: skip
    from .records import load_arrays

    meta = Prepared.read(prepared)
    train_images, train_labels = load_arrays(prepared, "train", meta.image_size)
    if len(train_images) > params.max_images:
        pick = np.random.default_rng(0).choice(len(train_images), params.max_images, replace=False)
        train_images, train_labels = train_images[np.sort(pick)], train_labels[np.sort(pick)]
    val_images, _ = load_arrays(prepared, "val", meta.image_size)
    probe = Probe(model, params.layer, params.batch_size)
    train, val = probe(train_images), probe(val_images)
    ref = fit(train.pooled, train_labels, params.components, probe.early, probe.axes)
    held_out = ref.score(val.pooled)
    ref = replace(ref, threshold=float(np.quantile(held_out, params.quantile)))
    inverted = ref.score(probe(255 - val_images).pooled)
    result = {
        "layer": params.layer,
        "threshold": ref.threshold,
        "components": int(ref.projection.shape[1]),
        "held_out": _summary(held_out, ref.threshold),
        "inverted_held_out": {
            **_summary(inverted, ref.threshold),
            "auc": ood.auroc(held_out, inverted),
        },
    }
    outside = outside_sets(meta, params.unknown.near_images, unknown_dir)
    scored = {name: probe(images) for name, images in outside.items()}
    if "photos" in scored:
        real = ref.score(scored["photos"].pooled)
        result["photos"] = {**_summary(real, ref.threshold), "auc": ood.auroc(held_out, real)}
    else:
        result["photos"] = None  # scikit-image is not installed: no photos to test against
    table = unknown_table(train, train_labels, val, scored, probe.head, params.unknown, ref)
    chosen = choose(table, params.unknown.method, params.unknown.choose_by)
    scorer = ood.fit(chosen, train.features, train_labels, probe.head, params.unknown)
    limit = ood.threshold(scorer.score(val.features, val.logits), params.unknown.false_flag_rate)
    ref = replace(ref, unknown=scorer, unknown_threshold=limit)
    ref.save(out)
    write_json(report, result)
    if ood_report is not None:
        write_json(ood_report, {"served": chosen, "threshold": limit,
                                "false_flag_rate": params.unknown.false_flag_rate,
                                "held_out": len(val_images), "methods": table,
                                "either_flag": either_flag(ref, val, scored)})  # fmt: skip
    if not np.isfinite(held_out).all():
        raise PipelineError("the reference gives non-finite scores on held-out images")
    return {**result, "unknown": {"method": chosen, "threshold": limit, "table": table}}


@dataclass(frozen=True)
class Embedded:
    """What the graph computes for a batch: the early layer's pooled statistics (drift), the
    penultimate features and the logits (the unknown-class scores)."""

    pooled: np.ndarray
    features: np.ndarray
    logits: np.ndarray


class Probe:
    """One ONNX Runtime session of the model that also outputs the tensors the scores read."""

    def __init__(self, model: Path, layer: str, batch_size: int) -> None:
        graph = onnx.load(str(model))
        self.early = layer_tensor(graph, layer)
        head = head_tensors(graph)
        if head.weight is None or head.bias is None:
            raise PipelineError(f"the last layer of {model} has no float weights to fit on")
        self.head = ood.Head(head.weight, head.bias)
        self.names = [self.early, head.features, head.logits]
        for name in self.names:
            graph.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
        with tempfile.NamedTemporaryFile(suffix=".onnx") as tmp:
            onnx.save(graph, tmp.name)
            self.session = session(Path(tmp.name))
        self.batch_size, self.axes = batch_size, (1, 2)

    def __call__(self, images: np.ndarray) -> Embedded:
        pooled, feats, logits = [], [], []
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size]
            early, f, z = self.session.run(self.names, {self.session.get_inputs()[0].name: batch})
            self.axes = spatial_axes(early.shape)
            pooled.append(pool(early, self.axes))
            feats.append(f.reshape(len(batch), -1))
            logits.append(z)
        return Embedded(np.concatenate(pooled), np.concatenate(feats), np.concatenate(logits))


def outside_sets(
    meta: Prepared, near_images: int, unknown_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """Inputs of no class the model knows: ``near`` (the images in ``unknown_dir``, else demo
    shapes it was not taught, where its labels are demo shapes), ``photos``, ``flat`` colours
    and pure ``noise``."""
    size = meta.image_size
    sets: dict[str, np.ndarray] = {}
    near = unknown_images(unknown_dir, meta.labels, size)
    if not len(near):
        near = near_shapes(meta.labels, size, near_images)
    if len(near):
        sets["near"] = near
    with contextlib.suppress(ImportError):  # scikit-image is not installed: no photos
        sets["photos"] = photos(size)
    rng = np.random.default_rng(1)
    sets["flat"] = np.broadcast_to(rng.integers(0, 256, (24, 1, 1, 3)).astype(np.uint8),
                                   (24, size, size, 3)).copy()  # fmt: skip
    sets["noise"] = rng.integers(0, 256, (24, size, size, 3)).astype(np.uint8)
    return sets


def unknown_images(folder: Path | None, labels: tuple[str, ...], size: int) -> np.ndarray:
    """The images under ``folder/<class>/`` (none when it is absent), letterboxed like any input;
    a class the model knows there is a mistake in the data, refused."""
    if folder is None or not folder.is_dir():
        return np.zeros((0, size, size, 3), np.uint8)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    taught = sorted(set(classes) & set(labels))
    if taught:
        raise PipelineError(f"{folder} holds classes the model knows ({', '.join(taught)}): "
                            "it is for classes the model must not know")  # fmt: skip
    files = sorted(f for c in classes for f in (folder / c).iterdir() if f.is_file())
    return (
        np.stack([load_image(f, size) for f in files])
        if files
        else np.zeros((0, size, size, 3), np.uint8)
    )


def near_shapes(labels: tuple[str, ...], size: int, per_shape: int) -> np.ndarray:
    """Demo shapes the model was never taught, drawn as the demo draws its classes; none where
    the model's classes are not all demo shapes (real data: its own unknown classes)."""
    from .tools.demo_data import SHAPES, render

    unknown = [s for s in SHAPES if s not in labels]
    if not per_shape or not unknown or not set(labels) <= set(SHAPES):
        return np.zeros((0, size, size, 3), np.uint8)
    drawn = []
    for index, shape in enumerate(unknown):
        rng = np.random.default_rng([7, index])
        drawn += [letterbox_array(np.asarray(render(shape, rng, 96, 192)), size)
                  for _ in range(per_shape)]  # fmt: skip
    return np.stack(drawn)


def unknown_table(train: Embedded, labels: np.ndarray, val: Embedded,
                  scored: dict[str, Embedded], head: ood.Head, params: ood.UnknownParams,
                  ref: Reference) -> dict[str, dict]:  # fmt: skip
    """Per method, per outside set: AUROC, FPR@95 and the share flagged at the threshold; the
    early-layer drift score beside them (``drift``), for comparison."""
    table = {}
    for method in ood.METHODS:
        scorer = ood.fit(method, train.features, labels, head, params)
        inside = scorer.score(val.features, val.logits)
        limit = ood.threshold(inside, params.false_flag_rate)
        table[method] = {name: ood.evaluate(inside, scorer.score(e.features, e.logits), limit)
                         for name, e in scored.items()}  # fmt: skip
    inside = ref.score(val.pooled)
    limit = ood.threshold(inside, params.false_flag_rate)
    table["drift"] = {name: ood.evaluate(inside, ref.score(e.pooled), limit)
                      for name, e in scored.items()}  # fmt: skip
    return table


def either_flag(ref: Reference, val: Embedded, scored: dict[str, Embedded]) -> dict:
    """What a user sees: the share of each set with at least one flag raised (unfamiliar, or of
    no known class) at the served thresholds, held-out images first (the false flags)."""

    def share(e: Embedded) -> float:
        drift = ref.score(e.pooled) > ref.threshold
        unknown = ref.unknown.score(e.features, e.logits) > ref.unknown_threshold
        return round(float(np.mean(drift | unknown)), 4)

    return {"held_out": share(val), **{name: share(e) for name, e in scored.items()}}


def choose(table: dict[str, dict], method: str, by: str = "auroc") -> str:
    """``method``, or for ``auto`` the method (``ood.METHODS``) best on the near set (else on
    photos, else on all sets on average) by ``by``: ``auroc`` (how well it ranks, at any
    threshold) or ``flagged`` (the share it flags at the served false-flag rate, what a user
    gets; AUROC breaks ties)."""
    if method != "auto":
        return method
    sets = next(iter(table.values())).keys()
    key = "near" if "near" in sets else "photos" if "photos" in sets else None

    def rank(m: str) -> tuple[float, float]:
        rows = [table[m][key]] if key else list(table[m].values())
        mean = float(np.mean([r["auroc"] for r in rows]))
        return (
            (float(np.mean([r["flagged"] for r in rows])), mean)
            if by == "flagged"
            else (mean, float(np.mean([r["auroc"] for r in table[m].values()])))
        )

    return max(ood.METHODS, key=rank)


def _summary(scores: np.ndarray, threshold: float) -> dict:
    return {
        "count": len(scores),
        "median": float(np.median(scores)),
        "unfamiliar": float(np.mean(scores > threshold)),
    }


def main() -> None:
    params = load_settings(ReferenceParams, "reference")
    r = build(ONNX_MODEL, PREPARED, REFERENCE, DRIFT_REPORT, params, OOD_REPORT, UNKNOWN_DATA)
    photos_auc = f", real photos ROC AUC {r['photos']['auc']:.3f}" if r["photos"] else ""
    print(
        f"reference: threshold {r['threshold']:.3f} ({params.quantile:.0%} of held-out images "
        f"familiar); inverted held-out ROC AUC {r['inverted_held_out']['auc']:.3f}{photos_auc}"
    )
    u = r["unknown"]
    rows = "; ".join(f"{name} AUROC {row['auroc']:.3f}, flagged {row['flagged']:.0%}"
                     for name, row in u["table"][u["method"]].items())  # fmt: skip
    print(
        f"reference: unknown-class score {u['method']} (threshold {u['threshold']:.4g}, "
        f"{params.unknown.false_flag_rate:.0%} of held-out images flagged): {rows}"
    )


if __name__ == "__main__":
    run_cli(main)
