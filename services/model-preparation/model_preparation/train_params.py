"""The ``train`` stage's settings (params.yaml ``train``), typed and strict.

Their own module so that the training loop (``loop.py``) and the network (``network.py``) can
name them without importing the stage that imports them (``train.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from .common import OPTIMIZERS, PipelineError
from .warmstart import parse_init

CACHES = ("none", "file", "memory")
POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")  # train.mixed_precision
PIXELS = ("rescale", "standardize")  # train.pixels: the served graph's first layer


@dataclass(frozen=True)
class AugmentParams:
    """params.yaml ``train.augment``: each a random change per training image, 0 = off."""

    flip: bool
    rotation: float  # fraction of a full turn
    contrast: float  # up to this factor away from 1
    zoom_out: float  # the picture shrunk to 1 / (1 + up to this): the object smaller
    zoom_in: float  # up to this share cropped away: the object larger
    translate: float  # moved by up to this share of each side
    stretch: float  # each side shrunk on its own to 1 / (1 + up to this): the aspect changed
    noise: float  # Gaussian noise, σ up to this (pixel units)
    blur: float  # Gaussian blur of half the images, σ up to this (pixels)
    brightness: float  # up to this share of the range lighter or darker

    def __post_init__(self) -> None:
        bounds = {"rotation": 1.0, "contrast": 1.0, "zoom_out": 1.0, "zoom_in": 0.9,
                  "translate": 0.5, "stretch": 2.0, "noise": 128.0, "blur": 8.0, "brightness": 1.0}  # fmt: skip
        for name, high in bounds.items():
            value = getattr(self, name)
            if not 0 <= value <= high:
                raise PipelineError(f"train.augment.{name}: {value!r} is out of range 0–{high:g}")


@dataclass(frozen=True)
class OutlierParams:
    """params.yaml ``train.outliers``: outlier exposure (Hendrycks et al., 2019), used when the
    prepare stage found images of no class (``data/outliers``); the model is taught to answer them
    with every class equally likely, so that a figure of no known class gets a flat answer."""

    share: float  # of each training batch drawn from the outliers (0: off)
    weight: float  # of their loss (cross-entropy to the uniform answer) beside the classes'
    from_epoch: int  # epochs on the classes alone before the outliers join (0: from the start)

    def __post_init__(self) -> None:
        if not 0 <= self.share < 1:
            raise PipelineError(f"train.outliers.share: {self.share!r} is out of range 0–1 "
                                "(1 excluded: a batch needs images of the classes)")  # fmt: skip
        if self.weight < 0:
            raise PipelineError(f"train.outliers.weight: {self.weight!r} must be at least 0")
        if self.from_epoch < 0:
            raise PipelineError(f"train.outliers.from_epoch: {self.from_epoch!r} must be ≥ 0")

    def per_batch(self, batch: int) -> int:
        """Outliers in a batch of ``batch`` images (at least one image of the classes)."""
        return min(batch - 1, round(batch * self.share)) if self.share and self.weight else 0


@dataclass(frozen=True)
class TrainParams:
    """params.yaml ``train``."""

    epochs: int
    steps_per_epoch: int
    batch_size: int  # global: split across every replica of every worker
    optimizer: str
    learning_rate: float
    momentum: float  # sgd only
    bn_momentum: float
    patience: int
    seed: int
    cache: str
    mixed_precision: str  # auto, or a Keras policy: float32 | mixed_bfloat16 | mixed_float16
    augment: AugmentParams
    init: str  # scratch | serving | serving:<model>: the weights training starts from
    pixels: str  # rescale: x/127.5 − 1 | standardize: each image to mean 0, spread 1
    outliers: OutlierParams  # outlier exposure, where the prepared data has outliers

    def __post_init__(self) -> None:
        if self.pixels not in PIXELS:
            raise PipelineError(f"train.pixels {self.pixels!r}: choose one of {', '.join(PIXELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise PipelineError(
                f"train.optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.cache not in CACHES:
            raise PipelineError(f"train.cache {self.cache!r}: choose one of {', '.join(CACHES)}")
        if self.mixed_precision not in POLICIES:
            raise PipelineError(
                f"train.mixed_precision {self.mixed_precision!r}: choose one of "
                f"{', '.join(POLICIES)}"
            )
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise PipelineError(f"train.{name} must be at least 1")
        parse_init(self.init)
