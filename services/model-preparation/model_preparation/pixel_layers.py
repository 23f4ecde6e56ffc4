"""The served graph's own Keras layer (``Standardize``, ``train.pixels``), and the loader of saved
models that know it: a module of its own, light enough for the stages that only read a model."""

from __future__ import annotations

from pathlib import Path

from .common import quiet_tensorflow

quiet_tensorflow()
import keras  # noqa: E402


@keras.saving.register_keras_serializable("imgcls")
class Standardize(keras.layers.Layer):
    """Each image to mean 0 and spread 1 over all its pixels and channels (in float32).

    A darker, paler or washed-out copy of an image is, to a rounding, the image under a per-image
    affine map of its pixels (``a·x + b``, the same for every channel: PIL's brightness and
    contrast are exactly that), and this layer undoes any such map: the network sees the same
    input whatever the light, which no amount of brightness augmentation guarantees. ``floor``
    (pixel units) bounds the spread divided by: a one-colour image becomes all zeros, and faint
    sensor noise is not blown up to the size of a shape.
    """

    def __init__(self, floor: float = 4.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.floor = floor

    def call(self, images):
        x = keras.ops.cast(images, "float32")
        mean = keras.ops.mean(x, axis=(1, 2, 3), keepdims=True)
        var = keras.ops.mean(keras.ops.square(x - mean), axis=(1, 2, 3), keepdims=True)
        return (x - mean) / keras.ops.sqrt(var + self.floor**2)

    def get_config(self) -> dict:
        return {**super().get_config(), "floor": self.floor}


def load_model(path: Path | str) -> keras.Model:
    """A model ``build_model`` made and Keras saved, for inference (its layers known here)."""
    return keras.models.load_model(path, compile=False)
