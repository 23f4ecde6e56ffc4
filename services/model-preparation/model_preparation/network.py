"""The network the train stage fits: ResNet50V2 from scratch with its input scaling and head, its
optimizers, and the augmentation of its training batches (Keras)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import INPUT_NAME, OUTPUT_NAME, quiet_tensorflow

quiet_tensorflow()
import keras  # noqa: E402

from .adasmooth import AdaSmooth  # noqa: E402
from .pixel_layers import Standardize  # noqa: E402

if TYPE_CHECKING:
    from .train_params import AugmentParams, TrainParams


def build_model(
    image_size: int, num_classes: int, bn_momentum: float = 0.9, pixels: str = "rescale"
) -> keras.Model:
    """uint8 pixels → ``pixels``: Rescaling to [-1, 1], or Standardize (per image) → ResNet50V2
    (random init) → softmax.

    BatchNorm momentum is lowered from Keras' 0.99: on short from-scratch runs the moving
    averages otherwise lag the weights and inference-mode accuracy collapses. The head computes
    in float32 even under mixed precision, so the softmax stays exact.
    """
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name=INPUT_NAME)
    if pixels == "standardize":
        x = Standardize(dtype="float32", name="standardize")(inputs)
    else:
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    backbone = keras.applications.ResNet50V2(
        weights=None, include_top=False, input_shape=(image_size, image_size, 3), pooling="avg"
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    x = backbone(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME
    )(x)
    return keras.Model(inputs, outputs, name="resnet50v2_classifier")


def make_optimizer(params: TrainParams, policy: str, variables: list) -> keras.optimizers.Optimizer:
    """The optimizer ``train.optimizer`` names, its slots built for ``variables`` (call it in the
    strategy's scope); float16 compute (``policy``) gets loss scaling.

    Built here, not by the first ``apply_gradients``: a variable created inside the first traced
    step makes ``tf.function`` trace the whole step twice, and tracing ResNet50V2's step is most of
    a short training's cost (docs/testing.md)."""
    optimizer = _optimizer(params, policy)
    optimizer.build(variables)
    return optimizer


def _optimizer(params: TrainParams, policy: str) -> keras.optimizers.Optimizer:
    lr = params.learning_rate
    if params.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr)
    elif params.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(lr, momentum=params.momentum, nesterov=True)
    elif params.optimizer == "adagrad":
        optimizer = keras.optimizers.Adagrad(lr)
    else:
        optimizer = AdaSmooth(lr)
    if policy == "mixed_float16":  # bfloat16 has float32's range: no scaling
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class RandomNoise(keras.layers.Layer):
    """Gaussian noise of a random σ per image, between 0 and ``max_sigma`` (pixel units): a
    model that sees clean and noisy images alike (Keras' GaussianNoise adds one σ to all)."""

    def __init__(self, max_sigma: float, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_sigma = max_sigma
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training: bool = True):
        if not training:
            return images
        shape = keras.ops.shape(images)
        sigma = keras.random.uniform((shape[0], 1, 1, 1), 0.0, self.max_sigma,
                                     seed=self.seed_generator)  # fmt: skip
        noise = keras.random.normal(shape, seed=self.seed_generator)
        return keras.ops.clip(images + sigma * noise, 0.0, 255.0)


def augmenter(params: AugmentParams, seed: int) -> keras.Sequential:
    """``train.augment``'s random changes, used on the training batches only, each seeded: the
    geometry first (flip; rotation, its corners black; zoom, stretch and translation, the uncovered
    canvas mirroring the picture),
    then the pixels (contrast, brightness, blur, noise). Pixels stay float32 whatever
    ``train.mixed_precision`` says: the model's policy is for the model."""
    f32 = {"dtype": "float32"}
    layers = []
    if params.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, **f32))
    if params.rotation:
        layers.append(keras.layers.RandomRotation(params.rotation, fill_mode="constant",
                                                  seed=seed + 1, **f32))  # fmt: skip
    if params.zoom_out or params.zoom_in:
        layers.append(keras.layers.RandomZoom((-params.zoom_in, params.zoom_out), seed=seed + 3,
                                              **f32))  # fmt: skip
    if params.stretch:  # height and width drawn apart: a wider or a taller picture
        layers.append(keras.layers.RandomZoom((0.0, params.stretch), (0.0, params.stretch),
                                              seed=seed + 8, **f32))  # fmt: skip
    if params.translate:
        layers.append(keras.layers.RandomTranslation(params.translate, params.translate,
                                                     seed=seed + 4, **f32))  # fmt: skip
    if params.contrast:
        layers.append(keras.layers.RandomContrast(params.contrast, seed=seed + 2, **f32))
    if params.brightness:
        layers.append(keras.layers.RandomBrightness(params.brightness, seed=seed + 5, **f32))
    if params.blur:
        layers.append(keras.layers.RandomGaussianBlur((0.5, 0.5), kernel_size=5,
                                                      sigma=(0.0, params.blur), seed=seed + 6,
                                                      **f32))  # fmt: skip
    if params.noise:
        layers.append(RandomNoise(params.noise, seed=seed + 7, **f32))
    return keras.Sequential(layers or [keras.layers.Identity(**f32)], name="augmentation")
