"""Scores for "is this one of the classes the model knows?", computed from the penultimate
features (the pooled embedding the classifier's last layer reads) and the logits, and the
figures that compare them.

Each method is fitted on training images only (their features, labels and the last layer's
weights) and gives a score per image: **higher means less like a known class**. None needs
outlier images at training time. The methods (OpenOOD v1.5 benchmarks them all):

- ``msp``: one minus the top softmax probability (Hendrycks & Gimpel, 2017), the baseline;
- ``maxlogit``: minus the top logit;
- ``energy``: minus the log-sum-exp of the logits (Liu et al., 2020);
- ``react``: ``energy`` after clipping the features at a high percentile of the training
  features' activations (Sun et al., 2021);
- ``mahalanobis``: the squared distance to the nearest class mean under the shared within-class
  covariance, in the features' principal directions (Lee et al., 2018);
- ``rmds``: that distance minus the distance to one Gaussian of all training features (relative
  Mahalanobis, Ren et al., 2021), which removes what every class shares;
- ``knn``: one minus the cosine similarity to the k-th nearest training feature (Sun et al.,
  2022);
- ``vim``: the features' norm outside their principal subspace, scaled to the logits, plus
  ``energy`` (Wang et al., 2022).

All are a few matrix products on an N×D embedding, so ``publish`` can append the chosen one to
every served graph (``add_output``), which keeps FP32, INT8 and BF16 answering
with scores of their own features. The reference stage chooses among them by measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imgcls.contract import UNKNOWN_NAME
from imgcls.params import UserError

METHODS = ("msp", "maxlogit", "energy", "react", "mahalanobis", "rmds", "knn", "vim")
EPS = 1e-3  # ridge on the covariances: a few training images do not span every direction


@dataclass(frozen=True)
class Head:
    """The classifier's last layer: ``logits = features @ weight + bias``."""

    weight: np.ndarray  # D × C
    bias: np.ndarray  # C

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight + self.bias


@dataclass(frozen=True)
class UnknownParams:
    """params.yaml ``reference.unknown``."""

    method: str  # the one served: one of METHODS, or "auto" (the reference stage's choice)
    choose_by: str  # auto's rule: "auroc" on the near set, or "flagged" at the served rate
    false_flag_rate: float  # of held-out known-class images flagged: sets the threshold
    components: int  # principal directions kept by mahalanobis, rmds and vim
    knn_k: int  # the neighbour whose similarity scores knn
    knn_bank: int  # training features kept as knn's neighbours
    react_percentile: float  # of training activations: react clips the features there
    near_images: int  # per shape the model does not know (demo data): the near-OOD set

    def __post_init__(self) -> None:
        if self.method not in (*METHODS, "auto"):
            raise UserError(f"reference.unknown.method: {self.method!r} is none of auto, "
                            f"{', '.join(METHODS)}")  # fmt: skip
        if self.choose_by not in ("auroc", "flagged"):
            raise UserError(f"reference.unknown.choose_by: {self.choose_by!r} is neither auroc "
                            "nor flagged")  # fmt: skip
        if not 0.0 < self.false_flag_rate < 0.5:
            raise UserError("reference.unknown.false_flag_rate must be in (0, 0.5)")
        if not 0.0 < self.react_percentile <= 100.0:
            raise UserError("reference.unknown.react_percentile must be in (0, 100]")
        for key in ("components", "knn_k", "knn_bank"):
            if getattr(self, key) < 1:
                raise UserError(f"reference.unknown.{key} must be at least 1")
        if self.near_images < 0:
            raise UserError("reference.unknown.near_images must be at least 0")


@dataclass(frozen=True)
class Scorer:
    """One fitted method: its name and the arrays it scores with (``consts``; what the served
    graph embeds as initializers)."""

    method: str
    head: Head
    consts: dict[str, np.ndarray] = field(default_factory=dict)

    def score(self, features: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
        """Per image; ``logits`` are the graph's own (an INT8 graph's are quantized), else the
        head's of ``features``."""
        f = features.astype(np.float64)
        z = self.head.logits(f) if logits is None else logits.astype(np.float64)
        return _SCORE[self.method](self, f, z)


def fit(method: str, features: np.ndarray, labels: np.ndarray, head: Head,
        params: UnknownParams, seed: int = 0) -> Scorer:  # fmt: skip
    """``method`` fitted on training ``features`` (N × D) and their ``labels``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    f = features.astype(np.float64)
    head = Head(head.weight.astype(np.float64), head.bias.astype(np.float64))
    return Scorer(method, head, _FIT[method](f, labels, head, params, seed))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(1, keepdims=True)))[:, 0]


def _whitener(centred: np.ndarray) -> np.ndarray:
    """``L`` with ``||x @ L||² = x Σ⁻¹ xᵀ`` for the (ridged) covariance of ``centred``."""
    cov = centred.T @ centred / max(len(centred) - 1, 1) + EPS * np.eye(centred.shape[1])
    return np.linalg.cholesky(np.linalg.inv(cov))


def _principal(f: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mean = f.mean(0)
    _, _, vt = np.linalg.svd(f - mean, full_matrices=False)
    return mean, vt[: min(k, vt.shape[0])].T  # D, D × k


def _fit_none(f, labels, head, params, seed) -> dict:
    return {}


def _fit_react(f, labels, head, params, seed) -> dict:
    return {"clip": np.array(np.percentile(f, params.react_percentile), np.float64)}


def _fit_gaussians(f, labels, head, params, seed) -> dict:
    """Class means and the shared within-class whitening, in the principal directions; with
    the one Gaussian of all features that ``rmds`` subtracts."""
    mean, basis = _principal(f, params.components)
    z = (f - mean) @ basis
    classes = np.unique(labels)
    means = np.stack([z[labels == c].mean(0) for c in classes])
    within = z - means[np.searchsorted(classes, labels)]
    whiten = _whitener(within)
    background = _whitener(z - z.mean(0))
    k = basis.shape[1]
    return {"project": basis @ whiten, "offset": mean @ basis @ whiten,
            "means": means @ whiten, "scale": np.array(1.0 / k),
            "bg_project": basis @ background,
            "bg_offset": (mean @ basis + z.mean(0)) @ background}  # fmt: skip


def _fit_knn(f, labels, head, params, seed) -> dict:
    if len(f) > params.knn_bank:
        f = f[np.sort(np.random.default_rng(seed).choice(len(f), params.knn_bank, replace=False))]
    bank = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return {"bank": bank.T, "k": np.array(min(params.knn_k, len(bank)))}  # D × B


def _fit_vim(f, labels, head, params, seed) -> dict:
    """The origin is where the logits are zero (``-pinv(W)ᵀ b``); the principal subspace of the
    features about it; ``alpha`` scales the residual norm to the logits' scale on training."""
    origin = -np.linalg.pinv(head.weight.T) @ head.bias
    x = f - origin
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    basis = vt[: min(params.components, vt.shape[0])].T  # D × k, orthonormal columns
    norms = _residual_norm(x, basis)
    alpha = head.logits(f).max(1).mean() / max(norms.mean(), 1e-12)
    return {"origin": origin, "basis": basis, "alpha": np.array(alpha)}


def _residual_norm(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``||x - x B Bᵀ||``: two thin products, no D × D projector to store (and not
    ``||x||² - ||x B||²``, which loses the residual to rounding in float32)."""
    return np.linalg.norm(x - (x @ basis) @ basis.T, axis=1)


def _msp(s: Scorer, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    return 1.0 - np.exp(z.max(1) - _logsumexp(z))


def _maxlogit(s: Scorer, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    return -z.max(1)


def _energy(s: Scorer, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    return -_logsumexp(z)


def _react(s: Scorer, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    return -_logsumexp(s.head.logits(np.minimum(f, s.consts["clip"])))


def _class_distances(s: Scorer, f: np.ndarray) -> np.ndarray:  # N × classes
    y = f @ s.consts["project"] - s.consts["offset"]
    return ((y[:, None, :] - s.consts["means"][None]) ** 2).sum(-1) * s.consts["scale"]


def _mahalanobis(s: Scorer, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    return _class_distances(s, f).min(1)


def _rmds(s: Scorer, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    bg = ((f @ s.consts["bg_project"] - s.consts["bg_offset"]) ** 2).sum(1) * s.consts["scale"]
    return _class_distances(s, f).min(1) - bg


def _knn(s: Scorer, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sims = unit @ s.consts["bank"]
    k = int(s.consts["k"])
    return 1.0 - np.sort(sims, axis=1)[:, -k]


def _vim(s: Scorer, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    norm = _residual_norm(f - s.consts["origin"], s.consts["basis"])
    return s.consts["alpha"] * norm - _logsumexp(z)


_FIT = {"msp": _fit_none, "maxlogit": _fit_none, "energy": _fit_none, "react": _fit_react,
        "mahalanobis": _fit_gaussians, "rmds": _fit_gaussians, "knn": _fit_knn,
        "vim": _fit_vim}  # fmt: skip
_SCORE = {"msp": _msp, "maxlogit": _maxlogit, "energy": _energy, "react": _react,
          "mahalanobis": _mahalanobis, "rmds": _rmds, "knn": _knn, "vim": _vim}  # fmt: skip


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside score > an inside score), ties counting half."""
    if not len(inside) or not len(outside):
        return float("nan")
    both = np.concatenate([inside, outside])
    ranks = _average_ranks(both)
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def fpr_at_95_tpr(inside: np.ndarray, outside: np.ndarray) -> float:
    """OpenOOD's FPR@95: with the threshold that keeps 95 % of known-class images un-flagged,
    the share of outside images left un-flagged (lower is better)."""
    return float(np.mean(outside <= np.quantile(inside, 0.95)))


def threshold(inside: np.ndarray, false_flag_rate: float) -> float:
    """The score above which at most ``false_flag_rate`` of known-class images are flagged."""
    return float(np.quantile(inside, 1.0 - false_flag_rate))


def evaluate(inside: np.ndarray, outside: np.ndarray, limit: float) -> dict:
    """One method on one set: AUROC, FPR@95 and the share flagged at the served ``limit``."""
    return {"images": len(outside), "auroc": round(auroc(inside, outside), 4),
            "fpr95": round(fpr_at_95_tpr(inside, outside), 4),
            "flagged": round(float(np.mean(outside > limit)), 4)}  # fmt: skip


def add_output(model, features: str, logits: str, scorer: Scorer) -> None:
    """Append ``unknown`` (N×1) to the ONNX ``model``: ``scorer``'s score of the graph's own
    penultimate ``features`` and ``logits`` (tensor names), the same arithmetic in float32
    nodes (``publish`` adds it to every served graph)."""
    import onnx
    from onnx import numpy_helper

    prefix = "unknown_"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    consts: dict[str, np.ndarray] = {"one": np.array(1.0, np.float32),
                                     "tiny": np.array(1e-12, np.float32),
                                     "axes": np.array([1], np.int64)}  # fmt: skip
    nodes: list = []

    def c(name: str, value) -> str:
        consts[name] = np.asarray(value, np.int64 if name == "topk" else np.float32)
        return prefix + name

    def op(kind: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(onnx.helper.make_node(kind, [_p(i) for i in inputs], [prefix + out], **attrs))
        return prefix + out

    def _p(name: str) -> str:
        return prefix + name if name in consts else name

    def reduce(kind: str, x: str, out: str) -> str:
        if opset >= 18 or (kind == "ReduceSum" and opset >= 13):
            return op(kind, [x, "axes"], out, keepdims=1)
        return op(kind, [x], out, axes=[1], keepdims=1)

    x, z, k = features, logits, scorer.consts
    method = scorer.method

    def lse(logits: str, tag: str) -> str:
        return reduce("ReduceLogSumExp", logits, f"lse{tag}")

    def sq_norm(v: str, tag: str) -> str:
        return reduce("ReduceSum", op("Mul", [v, v], f"sq{tag}"), f"n2{tag}")

    def class_min() -> str:
        y = op("Sub", [op("MatMul", [x, c("P", k["project"])], "xP"), c("o", k["offset"])], "y")
        means = k["means"]
        cross = op("MatMul", [y, c("Mt", -2.0 * means.T)], "cross")
        d = op("Add", [op("Add", [sq_norm(y, "y"), cross], "part"),
                       c("mn", (means**2).sum(1)[None])], "dist")  # fmt: skip
        return op("Mul", [reduce("ReduceMin", d, "dmin"), c("scale", k["scale"])], "maha")

    if method == "energy":
        score = op("Neg", [lse(z, "")], "score")
    elif method == "maxlogit":
        score = op("Neg", [reduce("ReduceMax", z, "zmax")], "score")
    elif method == "msp":
        top = op("Exp", [op("Sub", [reduce("ReduceMax", z, "zmax"), lse(z, "")], "lp")], "p")
        score = op("Sub", ["one", top], "score")
    elif method == "react":
        clipped = op("Min", [x, c("clip", k["clip"])], "clipped")
        logits = op("Add", [op("MatMul", [clipped, c("W", scorer.head.weight)], "xW"),
                            c("b", scorer.head.bias)], "logits")  # fmt: skip
        score = op("Neg", [lse(logits, "")], "score")
    elif method == "mahalanobis":
        score = class_min()
    elif method == "rmds":
        bg = op("Sub", [op("MatMul", [x, c("Pb", k["bg_project"])], "xPb"),
                        c("ob", k["bg_offset"])], "yb")  # fmt: skip
        bg_d = op("Mul", [sq_norm(bg, "b"), c("scale", k["scale"])], "bgd")
        score = op("Sub", [class_min(), bg_d], "score")
    elif method == "knn":
        norm = op("Max", [reduce("ReduceL2", x, "l2"), "tiny"], "norm")
        sims = op("MatMul", [op("Div", [x, norm], "unit"), c("bank", k["bank"])], "sims")
        kk = int(k["k"])
        nodes.append(onnx.helper.make_node("TopK", [sims, _p(c("topk", [kk]))],
                                           [prefix + "top", prefix + "top_i"], axis=1))  # fmt: skip
        kth = reduce("ReduceMin", prefix + "top", "kth")
        score = op("Sub", ["one", kth], "score")
    elif method == "vim":
        x0 = op("Sub", [x, c("origin", k["origin"])], "x0")
        x0b = op("MatMul", [x0, c("B", k["basis"])], "x0B")
        back = op("MatMul", [x0b, c("Bt", k["basis"].T)], "x0BBt")
        res = sq_norm(op("Sub", [x0, back], "res"), "res")
        vlogit = op("Mul", [op("Sqrt", [res], "resn"), c("alpha", k["alpha"])], "vlogit")
        score = op("Sub", [vlogit, lse(z, "")], "score")
    else:
        raise UserError(f"no served graph for the method {method!r}")
    nodes.append(onnx.helper.make_node("Identity", [score], [UNKNOWN_NAME]))
    model.graph.initializer.extend(
        numpy_helper.from_array(v, prefix + n) for n, v in consts.items()
    )
    model.graph.node.extend(nodes)
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(UNKNOWN_NAME, onnx.TensorProto.FLOAT, ["N", 1])
    )
